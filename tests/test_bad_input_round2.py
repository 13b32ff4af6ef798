"""Issue 18: the second round of bad input, one test per class through the real CLI (a subprocess
of `python -m invokeai_ti`) and, where the GUI takes the same input, through the form's rules.

Classes: numeric ranges (item 1), non-finite vectors (3), the trigger as a folder name (4), one run
per output folder (5), damaged InvokeAI files (6). The property-based sweep over every flag is
tests/test_bad_input_props.py.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, run_subprocess

from invokeai_ti import ranges
from invokeai_ti.config import TrainingConfig
from invokeai_ti.front.cli import build_parser

TRIGGER = "<psychedelic>"
FAST = [*TINY_FLAGS, "--max_train_steps", "1", "--validation_steps", "0", "--no-copy"]


def one_error_line(result, code: int = 2) -> str:
    """The error line: one, the last; before it only log lines (INFO: Loading ... once a model
    loads)."""
    assert "Traceback" not in result.err + result.out
    lines = result.err.strip().splitlines()
    assert result.code == code, result.err
    assert lines and lines[-1].startswith("invokeai-ti: error: "), result.err
    assert all(line.startswith(("INFO: ", "WARNING: ")) for line in lines[:-1]), result.err
    return lines[-1]


# --- item 1: every numeric flag's range, from one table -----------------------------------------


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--adam_beta1", "1.5", "--adam_beta1 must be in [0, 1), got 1.5: torch's AdamW"),
        ("--adam_beta2", "-0.1", "--adam_beta2 must be in [0, 1), got -0.1"),
        ("--adam_epsilon", "-1e-8", "--adam_epsilon must be in [0, 1e+38], got -1e-08"),
        ("--adam_weight_decay", "inf", "--adam_weight_decay must be a finite number in [0, 1e+38]"),
        ("--learning_rate", "nan", "--learning_rate must be a finite number in (0, 1e+38], got nan"),
        ("--learning_rate", "1e39", "--learning_rate must be positive (at most 1e+38), got 1e+39"),
        ("--seed", str(2**32), "--seed must be a whole number from 0 to 4294967295, got 4294967296"),
        ("--seed", "-1", "--seed must be a whole number from 0 to 4294967295, got -1"),
        ("--num_vectors", "67", "--num_vectors must be a positive number (at most 66), got 67: a "
                                "prompt holds 77 tokens"),
        ("--resolution", "8192", "--resolution must be a whole number from 8 to 4096, got 8192"),
        ("--repeats", "10" + "0" * 30, "--repeats must be a positive number (at most 10000), got "
                                       "100000000000... (32 digits)"),
        ("--max_train_steps", "1e3", "--max_train_steps '1e3' is not a whole number: give one "
                                     "from 1 to 2147483647"),
        ("--learning_rate", "--", "--learning_rate '--' is not a number"),
    ],
)  # fmt: skip
def test_a_value_out_of_its_range_is_one_line_before_anything_loads(root, flag, value, expected):
    """Named: the flag, the value, the accepted range and why. The parser refuses it, so no
    model, image or torch import is touched (the subprocess answers in about a second)."""
    result = run_subprocess("--root_dir", root, "--placeholder_token", TRIGGER, *FAST,
                            f"{flag}={value}", "--dry_run", timeout=60)  # fmt: skip
    assert expected in one_error_line(result) and len(result.err.splitlines()) == 1


def test_a_learning_rate_scaled_past_float32_is_refused(root):
    """1e38 is in range, but --scale_lr multiplies it by the batch (2 here): 2e38 would turn the
    vectors infinite on the first update."""
    result = run_subprocess("--root_dir", root, "--placeholder_token", TRIGGER, *FAST,
                            "--learning_rate=1e38", "--dry_run")  # fmt: skip
    assert (
        "--learning_rate 1e+38 scaled by --scale_lr (x2) is 2e+38, more than float32 holds "
        "(1e+38): lower --learning_rate or pass --no-scale_lr."
    ) in one_error_line(result)


def test_every_numeric_flag_takes_its_type_and_range_from_the_table():
    """The parser's numeric flags are exactly the table's, each a field of TrainingConfig, and
    every default is inside its own range."""
    numeric = {a.dest for a in build_parser()._actions
               if getattr(a.type, "__name__", "") in ("integer", "number")}  # fmt: skip
    assert numeric == set(ranges.RANGES)
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    assert set(ranges.RANGES) <= fields
    ranges.check_settings(TrainingConfig())  # the defaults pass


def test_validate_applies_the_ranges_to_any_config():
    """A config from a JSON file or a checkpoint is checked like the flags."""
    from invokeai_ti.errors import UserError

    base = TrainingConfig(placeholder_token=TRIGGER)
    for name, bad in [("adam_beta1", 1.0), ("learning_rate", float("nan")), ("num_vectors", 2.0),
                      ("seed", True), ("resolution", 100)]:  # fmt: skip
        with pytest.raises(UserError, match=f"--{name} "):
            dataclasses.replace(base, **{name: bad}).validate()


def test_template_tokens_match_the_tokenizer():
    """num_vectors' ceiling: 77 tokens less start/end less the longest template's words."""
    from invokeai_ti.data.dataset import OBJECT_TEMPLATES, STYLE_TEMPLATES
    from invokeai_ti.models.tiny import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    longest = max(len(tokenizer.encode(t.format(""), add_special_tokens=False))
                  for t in OBJECT_TEMPLATES + STYLE_TEMPLATES)  # fmt: skip
    assert longest == ranges.TEMPLATE_TOKENS
    assert tokenizer.model_max_length == ranges.TOKENIZER_LENGTH


def _form_values(root: Path, **changes):
    from invokeai_ti.front.gui import form

    values = form.initial_values(TrainingConfig(), root, "stable-diffusion-1.5", None, ["no"])
    values = dataclasses.replace(values, **{"trigger": "psychedelic", **changes})
    return form.build_config(TrainingConfig(root_dir=root), root, values)


@pytest.mark.parametrize(
    "field, value, expected",
    [("learning_rate", "nan", "Must be a finite number in (0, 1e+38], got nan."),
     ("learning_rate", "1e39", "Must be positive (at most 1e+38), got 1e+39: float32"),
     ("num_vectors", "67", "Must be a positive number (at most 66), got 67: a prompt holds 77"),
     ("train_batch_size", "5000", "Must be a positive number (at most 4096), got 5000"),
     ("max_train_steps", "0", "Must be a positive number (at most 2147483647), got 0.")],
)  # fmt: skip
def test_the_gui_form_uses_the_same_ranges(root, field, value, expected):
    config, errors = _form_values(root, **{field: value})
    assert config is None and errors[field].startswith(expected), errors


# --- item 4: the trigger is a safe folder name --------------------------------------------------


@pytest.mark.parametrize(
    "token, named",
    [("<a/b>", "holds '/'"), ("<..>", "holds '..'"), ("<../../etc>", "holds '/'"),
     ("<a\\b>", "holds '\\\\'"), ("<a\x07b>", "holds '\\x07'"), ("<>", "is empty once the < >"),
     ("<.>", "or is '.'"), ("<" + "x" * 201 + ">", "longer than 200 bytes")],
)  # fmt: skip
def test_a_trigger_that_would_leave_its_folder_is_refused(root, token, named):
    """ROOT/embeddings/<trigger> and the output folder must stay inside their parents: refused in
    one line that names the trigger, before anything is written."""
    result = run_subprocess("--root_dir", root, "--placeholder_token", token, *FAST, timeout=60)
    line = one_error_line(result)
    assert line.startswith("invokeai-ti: error: --placeholder_token: the trigger") and named in line
    assert not (root / "embeddings").exists() and not (root / "text-inversion-output").exists()


@pytest.mark.parametrize("trigger", ["a/b", "..", "a\\b", "a\x07b"])
def test_the_gui_shows_the_same_trigger_message(root, trigger):
    from invokeai_ti.front.gui import form

    problem = ranges.folder_name_problem(trigger)
    assert form.trigger_problem(trigger) == f"{problem[0].upper()}{problem[1:]}."
    config, errors = _form_values(root, trigger=trigger)
    assert config is None and errors["trigger"] == form.trigger_problem(trigger)


# --- item 3: no non-finite vector ever reaches a file -------------------------------------------


def _run_flags(root: Path, out: Path, *extra: str) -> list:
    return [*TINY_FLAGS, "--root_dir", root, "--placeholder_token", TRIGGER, "--output_dir", out,
            "--validation_steps", "0", *extra]  # fmt: skip


def _tensor_files(*folders: Path) -> list[Path]:
    suffixes = (".bin", ".pt", ".safetensors")
    return [p for f in folders if f.exists() for p in f.rglob("*") if p.suffix in suffixes]


def _all_finite(path: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    data = (
        load_file(str(path))
        if path.suffix == ".safetensors"
        else torch.load(path, weights_only=True)
    )
    tensors = [v for v in data.values() if torch.is_tensor(v)] if isinstance(data, dict) else [data]
    for value in data.values() if isinstance(data, dict) else []:
        if isinstance(value, dict):
            tensors += [v for v in value.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, tiny_sd1, concept_images):
    """A real overflow, nothing injected, through the real CLI: lr 1e30 sends the vector to ~1e30
    after the first update, and every later loss is NaN. The run is shorter than the 10-in-a-row
    stop, so it used to end with exit 0 and that vector in every output and in ROOT/embeddings."""
    import shutil

    from invokeai_ti.models.tiny import write_models_yaml

    root = tmp_path_factory.mktemp("diverged") / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    out = root / "out"
    # --embedding_norm free: the default held norm would scale the 1e30 vector back down.
    result = run_subprocess(*_run_flags(root, out, "--max_train_steps", "4", "--learning_rate",
                                        "1e30", "--no-scale_lr", "--save_steps", "1",
                                        "--checkpointing_steps", "1",
                                        "--embedding_norm", "free"))  # fmt: skip
    return root, out, result


@pytest.mark.slow  # a real run of 4 steps in a fresh process
def test_a_diverging_run_writes_only_finite_vectors_and_exits_1(diverged, tiny_sd1):
    import torch
    from safetensors.torch import load_file

    from invokeai_ti.models.tiny import load_clip_tokenizer

    root, out, result = diverged
    last = one_error_line(result, code=1)
    assert last.startswith("invokeai-ti: error: the loss was not finite for the last 3 step(s) "
                           "(step 4, 3 skipped in all).")  # fmt: skip
    assert f"The last good embedding is in {out / 'learned_embeds.bin'}." in last
    written = _tensor_files(out, root / "embeddings")
    assert out / "learned_embeds.bin" in written and root / "embeddings" / "psychedelic" / \
        "learned_embeds.bin" in written  # fmt: skip
    assert [p for p in written if not _all_finite(p)] == []
    # The last vector whose loss was finite is the initializer's: that is what was written.
    weights = load_file(str(tiny_sd1 / "text_encoder" / "model.safetensors"))
    star = load_clip_tokenizer().encode("*", add_special_tokens=False)[0]
    key = next(k for k in weights if k.endswith("embeddings.token_embedding.weight"))
    final = torch.load(out / "learned_embeds.bin", weights_only=True)[TRIGGER]
    assert torch.equal(final, weights[key][star])
    copy = torch.load(root / "embeddings" / "psychedelic" / "learned_embeds.bin", weights_only=True)
    assert torch.equal(copy[TRIGGER], final)


def _broken_checkpoint(source: Path, target: Path, change) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(str(target / "vectors.safetensors"))
    tensors["vectors.0"] = change(tensors["vectors.0"], torch)
    save_file(tensors, str(target / "vectors.safetensors"))  # by hand: the writers would refuse
    return target


@pytest.mark.parametrize(
    "change, named",
    [(lambda v, torch: v.clone().fill_(float("nan")), "holds 32 NaN or infinite value(s)"),
     (lambda v, torch: torch.cat([v, v]), "holds vectors of shape [[2, 32]], but this run needs 1")],
    ids=["nan", "wrong-shape"],
)  # fmt: skip
@pytest.mark.slow  # its checkpoint comes from the 4-step run above
def test_resume_refuses_nonfinite_or_misshaped_vectors(diverged, tmp_path, change, named):
    root, out, _ = diverged
    folder = _broken_checkpoint(out / "checkpoint-1", tmp_path / "checkpoint-1", change)
    result = run_subprocess(*_run_flags(root, tmp_path / "out", "--resume_from_checkpoint", folder,
                                        "--dry_run"))  # fmt: skip
    line = one_error_line(result)
    assert f"--resume_from_checkpoint {folder / 'vectors.safetensors'} {named}" in line


def test_inspect_reports_nonfinite_values(tmp_path):
    import torch

    path = tmp_path / "learned_embeds.bin"
    vector = torch.zeros(32)
    vector[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    torch.save({"<bad>": vector}, path)  # by hand: the writers would refuse
    result = run_subprocess("--inspect", path, timeout=120)
    assert result.code == 0, result.err
    assert "values:        3 of 32 are NaN or infinite" in result.out


def test_every_writer_refuses_nonfinite_vectors(tmp_path):
    """The last guard: the export, the InvokeAI copy and the checkpoint writer refuse on their
    own, and leave no file behind."""
    import torch

    from invokeai_ti.errors import UserError
    from invokeai_ti.files import checkpoint as ckpt
    from invokeai_ti.files import export

    bad = torch.tensor([[0.0, float("nan")]])
    writers = [
        lambda: export.save_learned_embeds(tmp_path / "a.bin", "<t>", bad),
        lambda: export.save_step_embeds(tmp_path, "<t>", [bad, bad], 3),
        lambda: export.copy_to_invokeai(tmp_path / "root", "t", "<t>", [bad]),
        lambda: export.save_a1111(tmp_path, "t", [bad], 1, None),
        lambda: ckpt.save_checkpoint(tmp_path, ckpt.CheckpointState(ckpt.Progress(step=1), [bad],
                                                                     {"state": {}, "param_groups": []},
                                                                     {}, "{}")),
    ]  # fmt: skip
    for write in writers:
        with pytest.raises(UserError, match="NaN or infinite value"):
            write()
    assert _tensor_files(tmp_path) == [] and not (tmp_path / "checkpoint-1").exists()


# --- item 5: one run per output folder ----------------------------------------------------------

HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from invokeai_ti.files.lock import acquire; "
    "handle = acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)"
)


@pytest.mark.slow  # three fresh processes, one of them a real run
@pytest.mark.skipif(sys.platform == "win32", reason="no SIGKILL; files/lock.py uses msvcrt there")
def test_a_second_run_into_the_same_folder_fails_at_once_and_kill_9_leaves_no_lock(root, tmp_path):
    import os
    import signal
    import subprocess

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ))  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        flags = _run_flags(root, out, "--max_train_steps", "1", "--no-copy")
        busy = run_subprocess(*flags)
        line = one_error_line(busy)
        assert line == (f"invokeai-ti: error: --output_dir {out} is in use by another invokeai-ti "
                        f"run (process {holder.pid}): wait for it to finish, or choose another "
                        "--output_dir.")  # fmt: skip
        assert "Loading" not in busy.err  # refused before the model loads
        assert run_subprocess(*flags, "--dry_run").code == 0  # a dry run takes no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".invokeai-ti.lock").exists()  # the file stays; the OS dropped the lock
    done = run_subprocess(*_run_flags(root, out, "--max_train_steps", "1", "--no-copy"))
    assert done.code == 0, done.err
    assert (out / "learned_embeds.bin").is_file() and not (out / ".invokeai-ti.lock").exists()


# --- item 6: damaged InvokeAI files ------------------------------------------------------------


def _settings_root(root: Path, text: str | bytes) -> list[str]:
    path = root / "invokeai.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return []


def _database(root: Path, content: bytes | None) -> list[str]:
    """An InvokeAI 4+ root whose database is `content` (None: a real one, locked by the test)."""
    (root / "invokeai.yaml").write_text("schema_version: 4.0.2\n")
    db = root / "databases" / "invokeai.db"
    db.parent.mkdir(parents=True)
    if content is not None:
        db.write_bytes(content)
    return ["--model", "some-registered-model"]  # not in models.yaml: the database is read


DAMAGED = [
    ("models-yaml-binary", lambda r: (r / "configs" / "models.yaml").write_bytes(b"\xff\xfe\x00\x81") and [],
     "configs/models.yaml cannot be read (not UTF-8 text)"),
    ("models-yaml-a-list", lambda r: (r / "configs" / "models.yaml").write_text("- a\n- b\n") and [],
     "configs/models.yaml does not hold a mapping of model names"),
    ("models-yaml-path-not-text", lambda r: (r / "configs" / "models.yaml").write_text(
        "stable-diffusion-1.5:\n  format: diffusers\n  path: [1, 2]\n") and [],
     "configs/models.yaml: entry 'stable-diffusion-1.5' has path: [1, 2], which is not a path"),
    ("invokeai-yaml-not-yaml", lambda r: _settings_root(r, "models_dir: [unclosed\n"),
     "invokeai.yaml cannot be read as YAML (ParserError, line 2)"),
    ("invokeai-yaml-binary", lambda r: _settings_root(r, b"\x00\xff\xfe garbage"),
     "invokeai.yaml cannot be read as YAML"),
    ("invokeai-yaml-a-string", lambda r: _settings_root(r, "just some words\n"),
     "invokeai.yaml does not hold a mapping of settings"),
    ("invokeai-yaml-models-dir-list", lambda r: _settings_root(r, "models_dir: [a, b]\n"),
     "invokeai.yaml: models_dir is ['a', 'b'], not a folder path"),
    ("db-not-sqlite", lambda r: _database(r, b"this is not SQLite" * 100),
     "databases/invokeai.db is not an SQLite database (damaged or replaced)"),
]  # fmt: skip


@pytest.mark.parametrize("prepare, culprit", [pytest.param(p, c, id=i) for i, p, c in DAMAGED])
def test_a_damaged_invokeai_file_is_one_line_naming_it(root, prepare, culprit):
    extra = prepare(root) or []
    result = run_subprocess("--root_dir", root, "--placeholder_token", TRIGGER, *FAST, *extra,
                            "--dry_run", timeout=120)  # fmt: skip
    line = one_error_line(result)
    assert culprit in line and str(root) in line, line


def test_a_locked_model_database_is_one_line_naming_it(root):
    """InvokeAI holds a write lock (migration): we wait BUSY_TIMEOUT_S, then say so."""
    import sqlite3

    extra = _database(root, None)
    db = root / "databases" / "invokeai.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("CREATE TABLE models (name, base, format, path, config, type)")
    writer.execute("BEGIN EXCLUSIVE")  # readers are blocked until it commits
    try:
        result = run_subprocess("--root_dir", root, "--placeholder_token", TRIGGER, *FAST, *extra,
                                "--dry_run", timeout=120)  # fmt: skip
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    line = one_error_line(result)
    assert f"{db} is locked by another program" in line, line
