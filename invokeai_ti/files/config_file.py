"""Config files: read a --config .toml/.yaml file into checked flag values, and write the config a
run trained with into its output folder, so `--config OUTPUT/config.toml` repeats it.

Keys are the flag names without dashes (the TrainingConfig field names). TOML is written by hand
(flat `key = value` lines): the format needs nothing more, and no dependency is added for it.
No torch here: the CLI reads config files before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

from invokeai_ti import __version__
from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError

YAML_SUFFIXES = (".yaml", ".yml")
SUFFIXES = (".toml", *YAML_SUFFIXES)
# Not part of what a run trains with: actions, the file itself, a secret, and where to resume
# (a repeat is a new run; --resume_from_checkpoint can still be given beside --config).
NOT_WRITTEN = ("config", "front_end", "dry_run", "eval_only", "debug", "resume_from_checkpoint",
               "hub_token", "local_rank")  # fmt: skip
KINDS = {
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "Path": ("a path (a string)", lambda v: isinstance(v, str)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}  # fmt: skip


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's table of values, unchecked; an unreadable file is one line naming it."""
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--config {path}: use a .toml or .yaml file (got '{path.suffix}').")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path} cannot be read ({exc}).") from exc
    data = (
        _parse_yaml(path, text) if path.suffix.lower() in YAML_SUFFIXES else _parse_toml(path, text)
    )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected 'flag = value' lines (a table), got a "
                        f"{type(data).__name__}.")  # fmt: skip
    return data


def _parse_toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError(f"--config {path}: reading TOML needs Python 3.11+ or the tomli "
                            "package (pip install tomli), or give a .yaml file.") from None  # fmt: skip
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path} is not valid TOML ({exc}).") from exc


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise UserError(f"--config {path} is not valid YAML ({problem}).") from exc


def check_values(path: Path, data: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    """{field: value} from the file's keys (flag names, or the aliases such as `root`); an
    unknown key or a value of the wrong type is one line naming the file and the key."""
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig) if f.name not in ("config",)}
    values = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in fields:
            close = difflib.get_close_matches(str(key), [*fields, *aliases], n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--config {path}: unknown key '{key}'{hint}: keys are the flag names "
                            "without dashes, see invokeai-ti --help.")  # fmt: skip
        kind = str(fields[name].type).replace(" | None", "")
        if name == "export_format" and isinstance(value, str):
            value = [value]  # one format needs no list
        optional = "None" in str(fields[name].type)
        described, fits = KINDS[kind]
        if not (fits(value) or (optional and value is None)):
            raise UserError(f"--config {path}: {key} must be {described}, got {value!r}.")
        values[name] = value
    return values


def config_file_name(config: TrainingConfig) -> str:
    """config.yaml when the run was given a YAML file, else config.toml."""
    given = config.config
    return (
        "config.yaml"
        if given is not None and given.suffix.lower() in YAML_SUFFIXES
        else "config.toml"
    )


def written_values(config: TrainingConfig, seed: int) -> dict[str, Any]:
    """What a run's config file holds: every setting (defaults too, so a later version's new
    defaults do not change a repeat), the seed actually used, and no None (TOML has no null)."""
    values = dict(config.to_dict(), seed=seed)
    return {k: v for k, v in values.items() if k not in NOT_WRITTEN and v is not None}


def config_file_text(values: dict[str, Any], yaml_format: bool) -> str:
    header = (f"# invokeai-ti {__version__}: the settings this run trained with. Repeat it with\n"
              "#   invokeai-ti --config <this file>   (flags given beside it win)\n")  # fmt: skip
    if yaml_format:
        import yaml

        return header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
    return header + "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips a float exactly, and 1e-08 is valid TOML
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # A JSON string is a valid TOML basic string: the same quotes and escapes.
    return json.dumps(str(value), ensure_ascii=False)
