"""Issue 18, item 2: argument lists built from the parser's own definitions (every flag, including
ones added later) with hostile values, run through the real `main(argv)` up to the model load.

Whatever the values, the answer is exit 0 or 2, and an error is exactly one printable line on
stderr, never a traceback. The model loader is replaced by a stop (the test's side, not the
package's), so every check that runs before a model is loaded runs for real: argparse, the
ranges, validate(), the root and output folders, the tracker and prompt checks, resolving --model,
--inspect reading a file. derandomize=True: CI draws the same cases on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invokeai_ti.front.cli import PROG, build_parser, main

# Actions that leave the run: the terminal UI waits for keys, --help/--version print and exit 0
# (tests/test_cli.py covers them), --debug shows tracebacks on purpose.
SKIPPED = {"help", "version", "front_end", "debug"}
ACTIONS = [a for a in build_parser()._actions if a.option_strings and a.dest not in SKIPPED]
NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "-0", "-0.0", "0", "1", "-1", "1e309",
           "-1e309", "1e38", "3.5e38", "1e-320", "0.5", "7", "9", str(2**31), str(2**32),
           str(2**64), str(-(2**63)), "9" * 400, "0x10", "1_000", "１２", "1e3", " 5 "]  # fmt: skip
WORDS = ["", " ", "--", "-", "none", "None", "latest", "<x>", "<my-cat>", "a b", "..", "../..",
         "/", "\\", "<a/b>", "<..>", "<>", "<\x00>", "\x00", "\n", "a\nb", "\r", "\t", "\x1b[31m",
         "\u2028", "\u200b", "é", "猫", "\U0001f408", "ß" * 300, "cat", "*", "x" * 5000]  # fmt: skip


OUTCOMES: dict[int, int] = {}  # exit code -> examples, to show both paths are exercised


class ModelLoadReached(Exception):
    """Raised where the model would load: every check before it passed."""


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A root with the tiny model, and the hostile paths: a file, a missing path, a folder, a
    path under a file, a read-only folder (root ignores its bits; the others still apply)."""
    from conftest import make_concept_images

    from invokeai_ti.models.tiny import write_models_yaml

    base = tmp_path_factory.mktemp("props")
    root = base / "root"
    model = base / "model"  # resolve_model finds it; the load is stopped before it reads more
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    write_models_yaml(root, {"stable-diffusion-1.5": model}, default="stable-diffusion-1.5")
    make_concept_images(root / "text-inversion-training-data" / "x", count=1)
    (base / "a-file.bin").write_bytes(b"not an embedding")
    (base / "empty.pt").write_bytes(b"")
    (base / "folder").mkdir()
    locked = base / "locked"
    locked.mkdir(mode=0o500)
    paths = [base / "a-file.bin", base / "empty.pt", base / "missing", base / "folder",
             base / "a-file.bin" / "under", locked, locked / "out", root]  # fmt: skip
    return root, [str(p) for p in paths]


def _values(action: argparse.Action, paths: list[str]) -> st.SearchStrategy[str]:
    """Hostile values for one flag, plus its valid choices so the other flags get checked too."""
    pools = [st.sampled_from(NUMBERS), st.sampled_from(WORDS), st.sampled_from(paths),
             st.text(st.characters(exclude_categories=("Cs",)), max_size=12)]  # fmt: skip
    if action.choices:
        pools.append(st.sampled_from(list(action.choices)))
    return st.one_of(*pools)


@st.composite
def argument_lists(draw, paths: list[str]) -> list[str]:
    argv: list[str] = []
    for action in draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=4)):
        option = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(option)
            continue
        value = draw(_values(action, paths))
        argv += [f"{option}={value}"] if draw(st.booleans()) else [option, value]
    return argv


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except ModelLoadReached:
            code = 0
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stop_at_model_load(places):
    from invokeai_ti.train import setup

    root, _ = places
    real = setup.load_components
    setup.load_components = lambda *a, **k: (_ for _ in ()).throw(ModelLoadReached())
    cwd = Path.cwd()
    os.chdir(root.parent)  # an empty --root_dir or --output_dir means the current folder
    yield
    os.chdir(cwd)
    setup.load_components = real


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=st.data())
def _check_hostile_argv(data, places):
    root, paths = places
    extra = data.draw(argument_lists(paths))
    base = ["--root_dir", str(root), "--placeholder_token", "<x>", "--report_to", "none",
            "--log_format", "plain"]  # fmt: skip
    code, out, err = run_main([*base, *extra])
    OUTCOMES[code] = OUTCOMES.get(code, 0) + 1
    assert "Traceback" not in out + err
    assert code in (0, 2), (extra, code, err)
    lines = err.splitlines()
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), (extra, err)
        assert lines[0].isprintable(), (extra, lines[0])
    else:
        assert f"{PROG}: error" not in err, (extra, err)


def test_hostile_argument_lists_get_one_line_or_run(places, stop_at_model_load):
    OUTCOMES.clear()
    _check_hostile_argv(places=places)
    # Both answers are drawn often: refusals, and runs that passed every check to the model load.
    assert sum(OUTCOMES.values()) >= 300 and OUTCOMES.get(0, 0) >= 30 and OUTCOMES.get(2, 0) >= 30


def test_the_generator_covers_every_flag_of_the_parser():
    """A flag added later is drawn too: the pool is the parser's own list."""
    names = {a.dest for a in ACTIONS}
    assert {"learning_rate", "adam_beta1", "seed", "model", "output_dir", "inspect"} <= names
    assert len(ACTIONS) == len([a for a in build_parser()._actions if a.option_strings]) - 4


@pytest.mark.parametrize("argv", [["--learning_rate=--"], ["--model=--"], ["--export_format=--"],
                                  ["--seed", "\udcff"], [""], ["--placeholder_token=<a\nb>"]])  # fmt: skip
def test_cases_the_property_found(places, stop_at_model_load, argv):
    """Found by the test above: argparse stored [] for `--flag=--`; an empty argument broke the
    unknown-flag hint; a newline in a value split the error line."""
    root, _ = places
    code, out, err = run_main(["--root_dir", str(root), "--placeholder_token", "<x>", *argv])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: "), err
    assert err.strip().isprintable()


def test_stderr_encoding_survives_surrogates(places, stop_at_model_load, monkeypatch):
    """A path from bytes that are not UTF-8 reaches argv as surrogates: still one line."""
    root, _ = places
    code, _, err = run_main(["--root_dir", str(root), "--placeholder_token", "<x\udcff>",
                             "--dry_run"])  # fmt: skip
    assert code == 2 and "\\udcff" in err and len(err.splitlines()) == 1
    assert sys.getdefaultencoding() == "utf-8"


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def _check_hostile_form(data, root: Path):
    import dataclasses

    from invokeai_ti.config import TrainingConfig
    from invokeai_ti.front.gui import form

    text = st.one_of(st.sampled_from(NUMBERS + WORDS),
                     st.text(st.characters(exclude_categories=("Cs",)), max_size=12))  # fmt: skip
    names = data.draw(st.lists(st.sampled_from([*form.NUMBER_FIELDS, "trigger"]), min_size=1,
                               max_size=3))  # fmt: skip
    values = form.initial_values(TrainingConfig(), root, "stable-diffusion-1.5", None, ["no"])
    values = dataclasses.replace(values, **{"trigger": "x", **{n: data.draw(text) for n in names}})
    config, errors = form.build_config(TrainingConfig(root_dir=root), root, values)
    assert (config is None) == bool(errors)
    if config is not None:  # what the form accepts, the flags accept too
        config.validate()
    assert all(message and "\n" not in message for message in errors.values()), errors


def test_the_gui_form_answers_hostile_values_with_field_messages(places):
    """The form's fields take the same hostile values: a message under the field, or a config
    that validate() accepts; never an exception."""
    root, _ = places
    _check_hostile_form(root=root)
