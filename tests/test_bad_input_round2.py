"""Issue 18: the second round of bad input, one test per class through the real CLI (a subprocess
of `python -m invokeai_ti`) and, where the GUI takes the same input, through the form's rules.

Classes: numeric ranges (item 1), non-finite vectors (3), the trigger as a folder name (4), one run
per output folder (5), damaged InvokeAI files (6). The property-based sweep over every flag is
tests/test_bad_input_props.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, run_subprocess

from invokeai_ti import ranges
from invokeai_ti.config import TrainingConfig
from invokeai_ti.front.cli import build_parser

TRIGGER = "<psychedelic>"
FAST = [*TINY_FLAGS, "--max_train_steps", "1", "--validation_steps", "0", "--no-copy"]


def one_error_line(result) -> str:
    assert "Traceback" not in result.err + result.out
    lines = result.err.strip().splitlines()
    assert result.code == 2, result.err
    assert len(lines) == 1 and lines[0].startswith("invokeai-ti: error: "), result.err
    return lines[0]


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
    assert expected in one_error_line(result)


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
