"""InvokeAI 3+ roots: invokeai.yaml, the models table of databases/invokeai.db (read-only, beside a
running InvokeAI), the outputs and the one line on how to add the embedding, the GUI's model list,
and dependency ranges that leave InvokeAI 6.14's own pins alone."""

from __future__ import annotations

import configparser
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_FLAGS, run_subprocess
from safetensors.torch import save_file

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import ModelError
from invokeai_ti.invokeai.model_source import list_model_names, resolve_model
from invokeai_ti.invokeai.root import find_root

# The models table as InvokeAI 4+ creates it: every column but id, hash and config is generated
# from the config JSON, and (name, base, type) is unique.
MODELS_TABLE = """
CREATE TABLE models (
    id TEXT NOT NULL PRIMARY KEY,
    base TEXT GENERATED ALWAYS as (json_extract(config, '$.base')) VIRTUAL NOT NULL,
    type TEXT GENERATED ALWAYS as (json_extract(config, '$.type')) VIRTUAL NOT NULL,
    path TEXT GENERATED ALWAYS as (json_extract(config, '$.path')) VIRTUAL NOT NULL,
    format TEXT GENERATED ALWAYS as (json_extract(config, '$.format')) VIRTUAL NOT NULL,
    name TEXT GENERATED ALWAYS as (json_extract(config, '$.name')) VIRTUAL NOT NULL,
    description TEXT GENERATED ALWAYS as (json_extract(config, '$.description')) VIRTUAL,
    source TEXT GENERATED ALWAYS as (json_extract(config, '$.source')) VIRTUAL NOT NULL,
    source_type TEXT GENERATED ALWAYS as (json_extract(config, '$.source_type')) VIRTUAL NOT NULL,
    hash TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at DATETIME NOT NULL DEFAULT(STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    updated_at DATETIME NOT NULL DEFAULT(STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')),
    UNIQUE(name, base, type)
)
"""
# End-to-end runs here check where files go and what is printed, not what is learned: 1-2 steps.
FAST = [*TINY_FLAGS, "--max_train_steps", "2", "--validation_steps", "0"]
SETTINGS = (
    "# Internal metadata - do not edit:\nschema_version: 4.0.2\n\n# Put user settings here:\n"
)
# What InvokeAI 6.14 pins in its own environment (its pyproject), which installing us must keep.
INVOKEAI_6_PINS = {
    "diffusers": "0.40.0",
    "transformers": "5.5.4",
    "numpy": "1.26.4",
    "torch": "2.7.0",
}


def model_row(name: str, base: str, path: str, fmt: str = "diffusers", **extra) -> dict:
    return {"key": f"{name}-{base}", "hash": "blake3:0", "name": name, "base": base, "type": "main",
            "format": fmt, "path": path, "description": None, "source": path, "source_type": "path",
            **extra}  # fmt: skip


def write_db(root: Path, rows: list[dict], wal: bool = False) -> Path:
    db = root / "databases" / "invokeai.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as connection:
        if wal:
            connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(MODELS_TABLE)
        connection.executemany(
            "INSERT INTO models (id, hash, config) VALUES (?, ?, ?)",
            [(row["key"], row["hash"], json.dumps(row)) for row in rows],
        )
    connection.close()
    return db


def make_root(root: Path, rows: list[dict], models_dir: str | None = None, wal=False) -> Path:
    """An InvokeAI 6.x root: invokeai.yaml (optionally moving models_dir) and the model database."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "invokeai.yaml").write_text(
        SETTINGS + (f"models_dir: {models_dir}\n" if models_dir else "")
    )
    write_db(root, rows, wal)
    return root


@pytest.fixture
def root6(tmp_path, tiny_sd1, tiny_sdxl, concept_images) -> Path:
    """A 6.x root: the tiny SD1 folder installed under models/ (relative path), the tiny SDXL one
    by absolute path, and the concept images where 2.3 kept training data."""
    root = tmp_path / "invokeai6"
    shutil.copytree(tiny_sd1, root / "models" / "sd-1" / "main" / "tiny-sd1")
    make_root(root, [model_row("tiny sd1", "sd-1", "sd-1/main/tiny-sd1"),
                     model_row("tiny xl", "sdxl", str(tiny_sdxl)),
                     model_row("flux dev", "flux", "flux/main/flux1-dev.safetensors", "checkpoint"),
                     model_row("clip vision", "any", "any/clip", "diffusers", type="clip_vision")])  # fmt: skip
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    return root


def _resolve(root: Path, model: str):
    return resolve_model(TrainingConfig(root_dir=root, model=model))


# --- root and database, no model loaded ---------------------------------------------------------


def test_a_yaml_root_is_found_through_virtual_env(tmp_path, monkeypatch):
    root = make_root(tmp_path / "root", [])
    monkeypatch.delenv("INVOKEAI_ROOT", raising=False)
    monkeypatch.setenv("VIRTUAL_ENV", str(root / ".venv"))
    assert find_root(None) == root.resolve()
    monkeypatch.setenv("INVOKEAI_ROOT", str(tmp_path / "elsewhere"))
    assert find_root(None) == tmp_path / "elsewhere"  # the order stays 2.3's


def test_names_resolve_from_the_database_relative_to_models_dir(tmp_path, tiny_sd1):
    root = tmp_path / "root"
    shutil.copytree(tiny_sd1, tmp_path / "store" / "sd1")
    make_root(root, [model_row("m", "sd-1", "sd1")], models_dir=str(tmp_path / "store"))
    source = _resolve(root, "m")
    assert (source.path, source.kind, source.base) == (
        tmp_path / "store" / "sd1",
        "diffusers",
        "sd-1",
    )
    assert _resolve(root, "m:sd-1").path == source.path


def test_a_3x_root_reads_nested_settings_and_models_yaml_under_models_dir(tmp_path, tiny_sd1):
    """InvokeAI 3.x: settings nested under InvokeAI: Paths:, models.yaml opening with
    __metadata__ and paths relative to models_dir, no database yet."""
    root = tmp_path / "root"
    shutil.copytree(tiny_sd1, root / "store" / "sd-1" / "main" / "tiny")
    (root / "invokeai.yaml").write_text("InvokeAI:\n  Paths:\n    models_dir: store\n")
    (root / "configs").mkdir()
    (root / "configs" / "models.yaml").write_text(
        "__metadata__:\n  version: 3.0.0\n"
        "sd-1/main/tiny:\n  path: sd-1/main/tiny\n  format: diffusers\n"
    )
    assert list_model_names(root) == ["sd-1/main/tiny"]
    assert _resolve(root, "sd-1/main/tiny").path == root / "store" / "sd-1" / "main" / "tiny"


def test_one_name_with_two_bases_is_listed_and_name_base_picks_one(tmp_path, tiny_sd1, tiny_sd2):
    root = make_root(tmp_path / "root", [model_row("dream", "sd-1", str(tiny_sd1)),
                                         model_row("dream", "sd-2", str(tiny_sd2))])  # fmt: skip
    with pytest.raises(ModelError) as info:
        _resolve(root, "dream")
    message = str(info.value)
    assert "\n" not in message and "dream:sd-1" in message and "dream:sd-2" in message
    assert "--model NAME:BASE or the model's path" in message
    assert _resolve(root, "dream:sd-2").path == tiny_sd2
    assert list_model_names(root) == ["dream:sd-1", "dream:sd-2"]


def test_other_families_and_types_are_refused_or_left_out(root6):
    with pytest.raises(ModelError, match="is a flux model; this trainer trains sd-1, sd-2, sdxl"):
        _resolve(root6, "flux dev")
    with pytest.raises(ModelError, match="not a model name in models.yaml or InvokeAI's database"):
        _resolve(root6, "clip vision")  # not a main model
    assert list_model_names(root6) == ["tiny sd1", "tiny xl"]


def test_the_gui_offers_the_database_models(root6):
    from invokeai_ti.front.gui.choices import inspect_model, model_choices

    names, selected = model_choices(root6, TrainingConfig.model)
    assert names == ["tiny sd1", "tiny xl"] and selected == "tiny sd1"
    info = inspect_model(root6, "tiny xl")
    assert info.problem is None and (info.folder / "text_encoder_2").is_dir()


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_a_writer_holding_a_transaction_neither_blocks_us_nor_is_blocked(tmp_path, tiny_sd1, wal):
    """InvokeAI writing its database while we read it: we read the committed rows, open the file
    read-only, and its commit goes through while and after we read."""
    root = make_root(tmp_path / "root", [model_row("m", "sd-1", str(tiny_sd1))], wal=wal)
    db = root / "databases" / "invokeai.db"
    writer = sqlite3.connect(db, timeout=0, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as InvokeAI mid-install
    writer.execute("INSERT INTO models (id, hash, config) VALUES (?, ?, ?)",
                   ("new", "h", json.dumps(model_row("new", "sd-1", str(tiny_sd1)))))  # fmt: skip
    started = time.monotonic()
    assert _resolve(root, "m").path == tiny_sd1
    assert list_model_names(root) == ["m"]  # the uncommitted row is not seen
    assert time.monotonic() - started < 2
    writer.execute("COMMIT")  # timeout=0: would raise "database is locked" if we still held it
    writer.close()
    assert list_model_names(root) == ["m", "new"]


def test_the_database_is_opened_read_only(tmp_path, tiny_sd1):
    root = make_root(tmp_path / "root", [model_row("m", "sd-1", str(tiny_sd1))])
    db = root / "databases" / "invokeai.db"
    db.chmod(0o444)
    before = db.stat().st_mtime_ns, db.read_bytes()
    try:
        assert _resolve(root, "m").path == tiny_sd1
    finally:
        db.chmod(0o644)
    assert (db.stat().st_mtime_ns, db.read_bytes()) == before
    assert not (root / "databases" / "invokeai.db-journal").exists()


def test_reading_the_root_and_database_imports_no_torch(tmp_path):
    """root.py and registry.py stay torch-free: --help and --gui's model list stay instant."""
    root = make_root(tmp_path / "root", [model_row("m", "sd-1", str(tmp_path))])
    code = (
        "import sys\nfrom pathlib import Path\nfrom invokeai_ti.invokeai.model_source import list_model_names\n"
        f"print(list_model_names(Path({str(root)!r})))\n"
        "print([m for m in ('torch', 'diffusers', 'transformers', 'PIL') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["['m']", "[]"]


def test_dependency_ranges_admit_invokeai_6_pins_without_upper_caps():
    """setup.cfg's ranges hold InvokeAI 6.14's versions, so pip has nothing to change there; the
    old-pins venv of .ci/run proves it with a real install (tests/run.sh compares pip freeze)."""
    from packaging.requirements import Requirement

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    requirements = [
        Requirement(line) for line in parser["options"]["install_requires"].split("\n") if line
    ]
    by_name = {req.name.lower(): req for req in requirements}
    for name, version in INVOKEAI_6_PINS.items():
        assert by_name[name].specifier.contains(version), (name, str(by_name[name].specifier))
    for req in requirements:
        assert all(spec.operator == ">=" for spec in req.specifier), req


# --- the real CLI end to end --------------------------------------------------------------------


@pytest.mark.smoke
def test_sd1_from_the_database_trains_and_says_how_to_add_it(root6):
    """The real console entry point in a fresh process (the other runs use main() in-process)."""
    result = run_subprocess("--root_dir", root6, "--model", "tiny sd1",
                            "--placeholder_token", "<psychedelic>", *FAST)  # fmt: skip
    assert result.code == 0, result.err
    copy = root6 / "embeddings" / "psychedelic" / "learned_embeds.bin"
    learned = torch.load(copy, weights_only=True)
    assert list(learned) == ["<psychedelic>"] and learned["<psychedelic>"].shape == (32,)
    lines = result.out.strip().splitlines()
    assert lines[-1] == (
        f"To use it in InvokeAI 3+: Model Manager -> Add Models -> URL or Local Path -> {copy} "
        "(a textual inversion for sd-1 models)."
    )
    assert not any(line.startswith("Copied for InvokeAI") for line in lines)
    output = root6 / "text-inversion-output" / "psychedelic"
    assert torch.equal(torch.load(output / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
                       .reshape(-1), learned["<psychedelic>"])  # fmt: skip


@pytest.mark.smoke
def test_sdxl_from_the_database_names_its_base(root6, cli):
    result = cli("--root_dir", root6, "--model", "tiny xl", "--placeholder_token", "<psychedelic>",
                 *FAST, "--max_train_steps", "1")  # fmt: skip
    assert result.code == 0, result.err
    copy = root6 / "embeddings" / "psychedelic" / "psychedelic.safetensors"
    assert copy.is_file()
    assert (
        result.out.strip()
        .splitlines()[-1]
        .endswith(f"-> {copy} (a textual inversion for sdxl models).")
    )


@pytest.mark.smoke
def test_checkpoint_record_trains_and_a_wrong_base_is_one_line(root6, tiny_sd1, cli):
    from test_single_file import to_single_file

    weights = root6 / "models" / "sd-1" / "main" / "tiny.safetensors"
    save_file(to_single_file(tiny_sd1), weights)
    with sqlite3.connect(root6 / "databases" / "invokeai.db") as connection:
        rows = [model_row("tiny file", "sd-1", "sd-1/main/tiny.safetensors", "checkpoint"),
                model_row("wrong base", "sdxl", "sd-1/main/tiny-sd1")]  # fmt: skip
        connection.executemany("INSERT INTO models (id, hash, config) VALUES (?, ?, ?)",
                               [(r["key"], r["hash"], json.dumps(r)) for r in rows])  # fmt: skip
    connection.close()
    result = cli("--root_dir", root6, "--model", "tiny file", "--placeholder_token", "<psychedelic>",
                 *FAST, "--max_train_steps", "1")  # fmt: skip
    assert result.code == 0, result.err
    assert "(a textual inversion for sd-1 models)." in result.out.strip().splitlines()[-1]
    result = cli("--root_dir", root6, "--model", "wrong base", "--placeholder_token", "<p>",
                 *FAST, "--dry_run")  # fmt: skip
    assert result.code != 0
    assert result.err.strip().splitlines()[-1] == (
        "invokeai-ti: error: --model wrong base is registered as sdxl but the loaded model is "
        "sd-1: fix the model's base in InvokeAI or pick another model."
    )


@pytest.mark.smoke
def test_a_23_root_keeps_its_outputs_and_lines(root, cli):
    """Same command on a 2.3 root (invokeai.init, models.yaml): no InvokeAI 3+ line."""
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *FAST,
                 "--max_train_steps", "1")  # fmt: skip
    assert result.code == 0, result.err
    copy = root / "embeddings" / "psychedelic" / "learned_embeds.bin"
    assert result.out.strip().splitlines()[-1] == f"Copied for InvokeAI to {copy}"
