"""InvokeAI 3+ roots: their settings file (invokeai.yaml) and the model records of InvokeAI 4+'s
database (ROOT/databases/invokeai.db), read with the stdlib only.

No torch here. The database is opened read-only (a `mode=ro` URI), so a running InvokeAI is never
blocked by us and we never write to its records.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from invokeai_ti.errors import ModelError

log = logging.getLogger(__name__)

SETTINGS_FILE = "invokeai.yaml"
DB_FILE = "invokeai.db"
DB_FORMATS = {"diffusers": "diffusers", "checkpoint": "single_file"}  # InvokeAI format -> our kind
# A writer's commit holds the database for milliseconds; wait that long rather than fail.
BUSY_TIMEOUT_S = 5.0
# SQLite's result codes (Python 3.11+ puts them on the exception; 3.10 names none of them).
SQLITE_BUSY_OR_LOCKED = (5, 6)
SQLITE_NOTADB = 26  # "file is not a database"


@dataclass(frozen=True)
class RootSettings:
    """What an InvokeAI 3+ root's invokeai.yaml says about where its models and database are."""

    models_dir: Path
    db_path: Path


@dataclass(frozen=True)
class RegisteredModel:
    """One `type = 'main'` row of the models table, its path made absolute."""

    name: str
    base: str
    format: str  # InvokeAI's: diffusers | checkpoint | ...
    path: Path
    config: dict = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """NAME:BASE, what --model accepts when one name is registered for several bases."""
        return f"{self.name}:{self.base}"


def read_settings(root: Path) -> RootSettings | None:
    """models_dir and db_dir from ROOT/invokeai.yaml (relative to the root; defaults `models`,
    `databases`); None for a root without one (InvokeAI 2.3)."""
    path = root / SETTINGS_FILE
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f", line {line + 1}" if line is not None else ""
        raise ModelError(
            f"{path} cannot be read as YAML ({type(exc).__name__}{where}): fix that file."
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a mapping of settings: fix that file.")
    # 4+ keeps settings at the top level; 3.x nested them under InvokeAI: Paths:.
    nested = data.get("InvokeAI")
    paths = nested.get("Paths") if isinstance(nested, dict) else None
    settings = {**(paths if isinstance(paths, dict) else {}), **data}
    for key in ("models_dir", "db_dir"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise ModelError(
                f"{path}: {key} is {settings[key]!r}, not a folder path: fix that file."
            )
    models_dir = path_under(root, settings.get("models_dir") or "models")
    db_dir = path_under(root, settings.get("db_dir") or "databases")
    return RootSettings(models_dir=models_dir, db_path=db_dir / DB_FILE)


def read_main_models(root: Path) -> list[RegisteredModel]:
    """Every main model of ROOT's database, in its order; [] without invokeai.yaml or database."""
    settings = read_settings(root)
    if settings is None or not settings.db_path.is_file():
        return []
    rows = _query(settings.db_path)
    return [_record(settings, *row) for row in rows]


def _query(db_path: Path) -> list[tuple]:
    uri = f"{db_path.resolve().as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise ModelError(
            f"{db_path} cannot be opened read-only ({exc}): check its permissions."
        ) from exc
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "models" not in tables:
            log.debug("%s has no models table (InvokeAI before 4.0); not used.", db_path)
            return []
        return connection.execute(
            "SELECT name, base, format, path, config FROM models WHERE type = 'main' ORDER BY rowid"
        ).fetchall()
    except sqlite3.Error as exc:
        raise ModelError(_db_problem(db_path, exc)) from exc
    finally:
        connection.close()


def _db_problem(db_path: Path, exc: sqlite3.Error) -> str:
    """One line for a database that cannot be read: locked, not a database, or another fault
    (told apart by SQLite's error code, which Python 3.11+ exposes; 3.10 gets the general line)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code in SQLITE_BUSY_OR_LOCKED:
        return (
            f"{db_path} is locked by another program (InvokeAI writing or migrating it) for "
            f"over {BUSY_TIMEOUT_S:g} s: wait and try again, or pass --model a folder or file."
        )
    if code == SQLITE_NOTADB:
        return (
            f"{db_path} is not an SQLite database (damaged or replaced): restore it from "
            "InvokeAI's backup, or pass --model a folder or file."
        )
    return (
        f"{db_path}: the model records cannot be read ({exc}): pass --model a folder or "
        "file, or repair the database in InvokeAI."
    )


def _record(settings: RootSettings, name, base, fmt, path, config) -> RegisteredModel:
    try:
        extra = json.loads(config) if config else {}
    except ValueError:
        extra = {}
    return RegisteredModel(
        name=str(name),
        base=str(base),
        format=str(fmt),
        path=path_under(settings.models_dir, str(path)),
        config=extra if isinstance(extra, dict) else {},
    )


def find_registered(root: Path, value: str) -> list[RegisteredModel]:
    """The main models `value` names: NAME, or NAME:BASE when one name has several bases."""
    models = read_main_models(root)
    named = [m for m in models if m.name == value]
    if named:
        return named
    return [m for m in models if m.label == value]


def path_under(folder: Path, value: str) -> Path:
    """`value` as a path: absolute (after ~) as given, otherwise relative to `folder`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path
