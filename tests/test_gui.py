"""The terminal front end: Textual pilot tests of the form (defaults, auto-updates, validation,
keyboard, confirmation, 80x24) and one real training run started from it on the tiny model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
from pathlib import Path

import pytest

pytest.importorskip("textual")

from invokeai_ti import ranges  # noqa: E402
from invokeai_ti.config import TrainingConfig  # noqa: E402
from invokeai_ti.front.cli import build_parser, main, parse_config  # noqa: E402
from invokeai_ti.front.command import command_line, config_to_argv  # noqa: E402
from invokeai_ti.front.gui import choices, form  # noqa: E402
from invokeai_ti.front.gui.app import CANCELLED_EXIT_CODE, StartRequest, TrainingForm  # noqa: E402
from invokeai_ti.invokeai.model_source import default_model_name, list_model_names  # noqa: E402
from invokeai_ti.invokeai.root import apply_root_defaults  # noqa: E402
from invokeai_ti.models.tiny import write_models_yaml  # noqa: E402
from invokeai_ti.models.tokenizers import load_tokenizers  # noqa: E402

SIZE = (80, 24)
DOCS_SNAPSHOT = Path(__file__).resolve().parent.parent / "docs" / "gui-form.svg"


def run_form(config: TrainingConfig, scenario) -> TrainingForm:
    """Run the form headless at 80x24, drive it with `scenario(pilot, app)`, return the app."""
    app = TrainingForm(config)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await scenario(pilot, app)

    asyncio.run(drive())
    return app


async def settle(pilot, app: TrainingForm) -> None:
    """Let Start's worker (tokenizer checks) and the messages it causes finish."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def type_into(
    pilot, app: TrainingForm, widget_id: str, text: str, keys: bool = False
) -> None:
    """Replace a field's text: set it (the same Changed event as typing), or with `keys` type it
    key by key as a user would (slower)."""
    field = app.query_one(f"#{widget_id}")
    field.focus()
    if keys:
        field.value = ""
        await pilot.press(*text)
    else:
        field.value = text
    await pilot.pause()


def value(app: TrainingForm, widget_id: str):
    return app.query_one(f"#{widget_id}").value


def shown_errors(app: TrainingForm) -> dict[str, str]:
    return {w.id.removesuffix("-error"): str(w.render()) for w in app.query(".error.shown")}


def make_checkpoint(output_dir: Path, step: int, token: str, **fingerprint) -> Path:
    """A checkpoint folder as checkpoint.py lists it (state.json + vectors file)."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    state = {"fingerprint": {"placeholder_token": token, "model": "stable-diffusion-1.5",
                             "num_vectors": 1, "resolution": 64, **fingerprint},
             "progress": {"step": step}}  # fmt: skip
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "vectors.safetensors").write_bytes(b"x")
    return folder


# --- defaults -----------------------------------------------------------------------------------


def test_form_opens_with_root_defaults(root, tiny_sd1):
    async def scenario(pilot, app):
        assert value(app, "model") == "stable-diffusion-1.5"
        assert value(app, "trigger") == ""
        assert value(app, "initializer") == "*"
        assert value(app, "learning_rate") == "0.0005"  # the form's 5e-4, not the CLI's 1e-4
        assert value(app, "max_train_steps") == "5000"
        assert value(app, "train_batch_size") == "8"
        assert value(app, "resolution") == 64  # the tiny UNet's sample_size 8 x 8
        assert value(app, "resume") is False
        assert value(app, "scale_lr") is True
        assert value(app, "lr_scheduler") == "constant"
        assert app.query_one("#lr_warmup_steps").disabled  # constant: no warmup to set
        assert value(app, "data_dir") == str(root / "text-inversion-training-data")
        # Mixed precision offers what this machine runs; this CPU-only test machine: "no".
        options = [v for _, v in app.query_one("#mixed_precision")._options]
        assert options == choices.machine_precisions()
        assert bool(app.query("#xformers")) == choices.xformers_usable()
        assert app.focused.id == "model"

    run_form(TrainingConfig(root_dir=root), scenario)
    assert choices.native_resolution(tiny_sd1) == 64


def test_command_line_flags_prefill_the_form(root):
    config, _ = parse_config(["--gui", "--root_dir", str(root), "--placeholder_token", "<cat>",
                              "--learning_rate", "0.003", "--resolution", "768", "--seed", "7",
                              "--lr_scheduler", "linear", "--max_train_steps", "300"])  # fmt: skip

    async def scenario(pilot, app):
        assert value(app, "trigger") == "cat"
        assert value(app, "learning_rate") == "0.003"
        assert value(app, "resolution") == 768
        assert value(app, "max_train_steps") == "300"
        assert not app.query_one("#lr_warmup_steps").disabled
        assert value(app, "output_dir") == str(root / "text-inversion-output" / "cat")

    run_form(config, scenario)


def test_model_list_and_default_from_models_yaml(tmp_path, tiny_sd1):
    root = tmp_path / "root"
    write_models_yaml(root, {"a": tiny_sd1, "b": tiny_sd1, "stable-diffusion-1.5": tiny_sd1},
                      default="b")  # fmt: skip
    yaml_path = root / "configs" / "models.yaml"
    yaml_path.write_text(yaml_path.read_text() + "old-ckpt:\n  format: ckpt\n  weights: x.ckpt\n")
    assert list_model_names(root) == ["a", "b", "stable-diffusion-1.5"]  # no ckpt entries
    assert default_model_name(root) == "b"
    assert choices.model_choices(root, TrainingConfig.model) == (list_model_names(root), "b")
    assert choices.model_choices(root, "a")[1] == "a"  # a --model flag wins
    write_models_yaml(root, {"a": tiny_sd1, "stable-diffusion-1.5": tiny_sd1})
    assert choices.model_choices(root, TrainingConfig.model)[1] == "stable-diffusion-1.5"


def test_many_models_scroll_and_the_last_one_is_selectable(tmp_path, tiny_sd1):
    root = tmp_path / "root"
    names = [f"model-{i:03d}" for i in range(150)]
    write_models_yaml(root, dict.fromkeys(names, tiny_sd1), default="model-000")

    async def scenario(pilot, app):
        select = app.query_one("#model")
        assert len(select._options) == 150
        await pilot.press("enter")  # opens the list
        await pilot.press("end")
        await pilot.pause()
        overlay = select.query_one("SelectOverlay")
        assert overlay.scroll_offset.y > 100  # scrolled down to the end of the list
        await pilot.press("enter")
        await pilot.pause()
        assert value(app, "model") == "model-149"

    run_form(TrainingConfig(root_dir=root), scenario)


# --- auto-updates -------------------------------------------------------------------------------


def test_folders_follow_the_trigger_until_edited_by_hand(root):
    data, out = root / "text-inversion-training-data", root / "text-inversion-output"

    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")
        assert value(app, "data_dir") == str(data / "psychedelic")
        assert value(app, "output_dir") == str(out / "psychedelic")
        assert str(app.query_one("#data_dir-hint").render()) == "4 images"
        assert str(app.query_one("#trigger-hint").render()) == "prompt: <psychedelic>"
        await type_into(pilot, app, "output_dir", str(root / "mine"))
        await type_into(pilot, app, "trigger", "other")
        assert value(app, "data_dir") == str(data / "other")  # still following
        assert value(app, "output_dir") == str(root / "mine")  # edited by hand: kept
        assert str(app.query_one("#data_dir-hint").render()) == "missing"

    run_form(TrainingConfig(root_dir=root), scenario)


def test_resume_box_follows_the_triggers_checkpoints(root):
    out = root / "text-inversion-output"
    make_checkpoint(out / "psychedelic", 3, "<psychedelic>")
    make_checkpoint(out / "psychedelic", 12, "<psychedelic>")
    make_checkpoint(out / "shared", 5, "<someone-else>")

    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")
        assert value(app, "resume") is True
        assert str(app.query_one("#resume-hint").render()) == "checkpoint-12 found"
        await type_into(pilot, app, "trigger", "psychedelic2")
        assert value(app, "resume") is False
        await type_into(pilot, app, "trigger", "psychedelic")
        assert value(app, "resume") is True
        # Another trigger's checkpoints in a hand-picked folder are not resumable.
        await type_into(pilot, app, "output_dir", str(out / "shared"))
        assert value(app, "resume") is False
        assert "<someone-else>" in str(app.query_one("#resume-hint").render())

    run_form(TrainingConfig(root_dir=root), scenario)


def test_model_change_moves_resolution_to_its_native_size(tmp_path, tiny_sd1):
    big = tmp_path / "big"  # the tiny model with an SD2-v sized UNet config: native 768
    big.mkdir()
    for child in tiny_sd1.iterdir():
        (big / child.name).symlink_to(child)
    (big / "unet").unlink()
    (big / "unet").mkdir()
    unet_config = json.loads((tiny_sd1 / "unet" / "config.json").read_text())
    (big / "unet" / "config.json").write_text(json.dumps({**unet_config, "sample_size": 96}))
    root = tmp_path / "root"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1, "sd-2": big})

    async def scenario(pilot, app):
        assert value(app, "resolution") == 64
        app.query_one("#model").value = "sd-2"
        await pilot.pause()
        assert value(app, "resolution") == 768
        assert str(app.query_one("#resolution-hint").render()) == "native 768"
        app.query_one("#resolution").value = 512  # by hand: kept when the model changes
        app.query_one("#model").value = "stable-diffusion-1.5"
        await pilot.pause()
        assert value(app, "resolution") == 512

    run_form(TrainingConfig(root_dir=root), scenario)


# --- validation ---------------------------------------------------------------------------------


def test_start_with_problems_shows_them_inline_and_stays_open(root):
    (root / "text-inversion-training-data" / "empty").mkdir()
    (root / "embeddings").mkdir()
    (root / "embeddings" / "taken.pt").write_bytes(b"x")

    async def scenario(pilot, app):
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        errors = shown_errors(app)
        assert errors["trigger"].startswith("Required")
        assert "data_dir" not in errors  # it follows a trigger that is not there yet
        assert app.focused.id == "trigger"  # the first field with a problem
        await type_into(pilot, app, "trigger", "my cat")
        assert "without spaces" in shown_errors(app)["trigger"]  # live, before Start
        await type_into(pilot, app, "trigger", "taken")
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        errors = shown_errors(app)
        assert "<taken> is taken by" in errors["trigger"]
        assert "does not exist: create it" in errors["data_dir"]
        await type_into(pilot, app, "trigger", "empty")
        await type_into(pilot, app, "max_train_steps", "0")
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        errors = shown_errors(app)
        assert "holds no readable images" in errors["data_dir"]
        assert errors["max_train_steps"].startswith("Must be a positive number")
        assert app.return_value is None and app.is_running

    run_form(TrainingConfig(root_dir=root), scenario)


def test_initializer_must_be_one_token_of_the_models_tokenizer(root):
    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")
        await type_into(pilot, app, "initializer", "psychedelicartwork")
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        error = shown_errors(app)["initializer"]
        assert "is 3 tokens" in error or "tokens (" in error  # embedding.py's own message
        assert app.is_running
        await type_into(pilot, app, "initializer", "cat")
        await pilot.press("ctrl+s")
        await settle(pilot, app)

    app = run_form(TrainingConfig(root_dir=root), scenario)
    assert app.return_value.config.initializer_token == "cat"


def test_trigger_the_tokenizer_knows_is_refused(tiny_sd1):
    tokenizer = load_tokenizers(tiny_sd1)[0]
    tokenizer.add_tokens(["<known>"])
    config = TrainingConfig(placeholder_token="<known>", initializer_token="*")
    assert (
        "already in the model's vocabulary" in form.token_problems(config, [tokenizer])["trigger"]
    )
    config = TrainingConfig(placeholder_token="<new>", initializer_token="*")
    assert form.token_problems(config, [tokenizer]) == {}


def test_sdxl_tokens_are_checked_with_both_tokenizers(tmp_path, tiny_sdxl):
    root = tmp_path / "root"
    write_models_yaml(root, {"sdxl": tiny_sdxl})
    info = choices.inspect_model(root, "sdxl")
    assert (info.folder, info.native, info.problem) == (tiny_sdxl, 64, None)
    tokenizers = load_tokenizers(tiny_sdxl)
    assert len(tokenizers) == 2
    tokenizers[1].add_tokens(["<only-in-the-second>"])
    config = TrainingConfig(placeholder_token="<only-in-the-second>")
    assert "trigger" in form.token_problems(config, tokenizers)


def test_resume_of_a_checkpoint_with_other_settings_is_refused_in_the_form(root):
    make_checkpoint(root / "text-inversion-output" / "psychedelic", 4, "<psychedelic>",
                    resolution=512)  # fmt: skip

    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")
        assert value(app, "resume") is True
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        assert "resolution: checkpoint has 512, this run has 64" in shown_errors(app)["resume"]

    run_form(TrainingConfig(root_dir=root), scenario)


# --- confirmation before anything is lost ------------------------------------------------------


def test_fresh_start_over_old_outputs_asks_and_says_what_is_lost(root):
    out = root / "text-inversion-output" / "psychedelic"
    old = make_checkpoint(out, 8, "<psychedelic>")
    (out / "learned_embeds.bin").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")

    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")
        app.query_one("#resume").value = False  # the user wants a new run
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        dialog = app.screen.query_one("#losses")
        text = str(dialog.render())
        assert "1 checkpoint(s) of <psychedelic>" in text and "checkpoint-8" in text
        assert "learned_embeds.bin" in text
        await pilot.press("enter")  # Back is focused: Enter deletes nothing
        await pilot.pause()
        assert app.is_running and app.return_value is None
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        await pilot.press("tab", "enter")  # "Delete and start fresh"
        await pilot.pause()

    app = run_form(TrainingConfig(root_dir=root), scenario)
    request = app.return_value
    assert sorted(request.remove) == sorted([old, out / "learned_embeds.bin"])
    assert old.exists()  # nothing is deleted before training actually starts
    from invokeai_ti.files.previous_run import remove_outputs

    remove_outputs(request.remove)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --- keyboard and cancel ------------------------------------------------------------------------


def test_ctrl_n_ctrl_p_tab_and_shift_tab_move_between_fields(root):
    async def scenario(pilot, app):
        order = []
        for _ in range(4):
            order.append(app.focused.id)
            await pilot.press("ctrl+n")
        assert order == ["model", "trigger", "data_dir", "max_train_steps"]
        await pilot.press("ctrl+p")
        assert app.focused.id == "max_train_steps"
        await pilot.press("shift+tab")
        assert app.focused.id == "data_dir"
        await pilot.press("tab")
        assert app.focused.id == "max_train_steps"

    run_form(TrainingConfig(root_dir=root), scenario)


@pytest.mark.parametrize("key", ["escape", "ctrl+c"])
def test_escape_and_ctrl_c_cancel(root, key):
    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")  # focus in an Input
        await pilot.press(key)
        await pilot.pause()

    app = run_form(TrainingConfig(root_dir=root), scenario)
    assert app.return_value is None and not app.is_running


def test_escape_closes_an_open_list_before_cancelling(root):
    async def scenario(pilot, app):
        await pilot.press("enter")  # open the model list
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running

    run_form(TrainingConfig(root_dir=root), scenario)


def test_the_whole_form_is_reachable_at_80x24(root):
    async def scenario(pilot, app):
        ids = []
        for _ in range(len(app.screen.focus_chain)):
            await pilot.press("tab")
            focused = app.focused
            ids.append(focused.id)
            region = focused.region
            assert 0 <= region.y < SIZE[1] and region.right <= SIZE[0], focused.id
        assert {"num_vectors", "start", "cancel"} <= set(ids)

    run_form(TrainingConfig(root_dir=root), scenario)


def test_gui_without_a_terminal_or_textual_is_one_line(cli, root, monkeypatch):
    result = cli("--gui", "--root_dir", root)  # pytest's stdin is not a terminal
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "invokeai-ti: error: --gui needs an interactive terminal: run it in one, or give the "
        "settings as flags (see invokeai-ti --help)."
    ]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "textual" else real(name, *a))  # fmt: skip
    result = cli("--gui", "--root_dir", root)
    assert result.code == 2 and "pip install textual" in result.err


def test_a_root_without_diffusers_models_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("invokeai_ti.front.gui.app.has_terminal", lambda: True)
    result = cli("--gui", "--root_dir", tmp_path / "empty-root")
    assert result.code == 2
    assert result.err.startswith("invokeai-ti: error: --gui: no diffusers models in ")
    assert len(result.err.strip().splitlines()) == 1


# --- the equivalent command -----------------------------------------------------------------------


def every_field_changed() -> TrainingConfig:
    """A config where every field with a flag differs from its default, derived from the parser so a
    new flag is covered without editing this test."""
    actions = {a.dest: a for a in build_parser()._actions}
    defaults, values = TrainingConfig(), {}
    for f in dataclasses.fields(TrainingConfig):
        action, default = actions.get(f.name), getattr(TrainingConfig(), f.name)
        if f.name in ("front_end", "config") or action is None:  # config: see config_to_argv
            continue
        if action.choices:
            others = [c for c in action.choices if c != default and c not in (default or [])]
            values[f.name] = others if isinstance(default, list) else others[0]
        elif isinstance(default, bool):
            values[f.name] = not default
        elif "Path" in str(f.type):
            values[f.name] = Path("/tmp/somewhere") / f.name
        elif f.name in ranges.RANGES:  # another value its range accepts
            r = ranges.RANGES[f.name]
            values[f.name] = (
                (default or 0) + 3 * r.multiple_of if r.integer else (default + r.low) / 2
            )
        elif isinstance(default, float):
            values[f.name] = default * 3 + 0.125
        elif isinstance(default, int) or "int" in str(f.type):
            values[f.name] = (default or 0) + 3
        else:
            values[f.name] = f"value-{f.name}"
    values["resume_from_checkpoint"] = "/tmp/somewhere/checkpoint-3"
    return dataclasses.replace(defaults, **values)


def test_config_to_argv_round_trips_through_the_cli_parser():
    for config in (TrainingConfig(), every_field_changed(),
                   TrainingConfig(local_rank=5, validation_prompt="", scale_lr=False,
                                  copy_to_embeddings=False, learning_rate=5e-05),
                   TrainingConfig(evaluation_budget=None, quality_report=False)):  # fmt: skip
        argv = config_to_argv(config)
        assert parse_config(argv)[0] == config, argv
        shown = shlex.split(command_line(config), comments=True)  # the hub token is not shown
        assert parse_config(shown[1:])[0] == dataclasses.replace(config, hub_token=None)
    assert "--no-copy" in config_to_argv(TrainingConfig(copy_to_embeddings=False))
    secret = dataclasses.replace(TrainingConfig(), hub_token="hf_secret")
    assert "hf_secret" not in command_line(secret)


# --- a real run ---------------------------------------------------------------------------------


def test_gui_trains_the_tiny_model_and_installs_the_embedding(root, monkeypatch, capsys):
    """`invokeai-ti --gui` end to end: the form filled by keys, Start, the printed command, real
    training on the tiny model, the embedding copied into ROOT/embeddings/<trigger>/."""
    import torch

    from invokeai_ti.train import loop

    async def fill_and_start(pilot) -> None:
        app = pilot.app
        await pilot.pause()
        await type_into(pilot, app, "trigger", "psychedelic", keys=True)
        await type_into(pilot, app, "max_train_steps", "2", keys=True)
        await type_into(pilot, app, "train_batch_size", "2")
        await type_into(pilot, app, "learning_rate", "0.005")
        await pilot.press("ctrl+s")
        await settle(pilot, app)

    real_run, real_train, trained = TrainingForm.run, loop.train, []
    monkeypatch.setattr(TrainingForm, "run", lambda self: real_run(
        self, headless=True, size=SIZE, auto_pilot=fill_and_start))  # fmt: skip
    monkeypatch.setattr("invokeai_ti.front.gui.app.has_terminal", lambda: True)
    monkeypatch.setattr(loop, "train", lambda config: real_train(trained.append(config) or config))
    flags = ["--seed", "0", "--repeats", "1", "--report_to", "none", "--log_format", "plain"]
    code = main(["--gui", "--root_dir", str(root), *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    command = next(line for line in out.splitlines() if line.startswith("  invokeai-ti "))
    config, _ = parse_config(shlex.split(command)[1:])
    assert config.placeholder_token == "<psychedelic>"
    assert (config.max_train_steps, config.train_batch_size, config.resolution) == (2, 2, 64)
    assert (config.learning_rate, config.seed, config.repeats) == (0.005, 0, 1)
    assert config.only_save_embeds and config.root_dir == root
    # The printed command is exactly the run: the CLI would train this same config.
    assert trained == [apply_root_defaults(config)]
    learned = torch.load(root / "text-inversion-output" / "psychedelic" / "learned_embeds.bin",
                         weights_only=True)  # fmt: skip
    copy = root / "embeddings" / "psychedelic" / "learned_embeds.bin"
    assert f"Copied for InvokeAI to {copy}" in out
    installed = torch.load(copy, weights_only=True)
    assert torch.equal(installed["<psychedelic>"], learned["<psychedelic>"])
    assert learned["<psychedelic>"].shape == (32,)
    # Trained: the vector moved away from the initializer's ("*") embedding.
    tokenizer = load_tokenizers(config_model_folder(root))[0]
    star = tokenizer.convert_tokens_to_ids("*</w>")
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(config_model_folder(root), subfolder="text_encoder")
    initial = encoder.get_input_embeddings().weight[star].detach()
    assert not torch.allclose(learned["<psychedelic>"], initial)


def config_model_folder(root: Path) -> Path:
    return choices.model_folder(root, "stable-diffusion-1.5")


def test_cancel_from_the_command_line_exits_130(root, monkeypatch, capsys):
    async def cancel(pilot) -> None:
        await pilot.pause()
        await pilot.press("escape")

    real_run = TrainingForm.run
    monkeypatch.setattr(TrainingForm, "run", lambda self: real_run(
        self, headless=True, size=SIZE, auto_pilot=cancel))  # fmt: skip
    monkeypatch.setattr("invokeai_ti.front.gui.app.has_terminal", lambda: True)
    assert main(["--gui", "--root_dir", str(root)]) == CANCELLED_EXIT_CODE == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "invokeai-ti: cancelled; nothing was trained."
    assert not (root / "text-inversion-output").exists()


# --- the snapshot in the docs ---------------------------------------------------------------------


def test_snapshot_of_the_form_at_80x24(tmp_path, tiny_sd1, concept_images, monkeypatch):
    """Renders the form as docs/gui-form.svg shows it; UPDATE_GUI_SNAPSHOT=1 rewrites that file."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))  # paths show as ~/invokeai/...
    root = tmp_path / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1, "sd-2.1-768": tiny_sd1},
                      default="stable-diffusion-1.5")  # fmt: skip
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    svg = {}

    async def scenario(pilot, app):
        await type_into(pilot, app, "max_train_steps", "3000")
        await type_into(pilot, app, "trigger", "psychedelic", keys=True)
        svg["text"] = app.export_screenshot(title="invokeai-ti --gui")

    run_form(TrainingConfig(root_dir=root), scenario)
    text = svg["text"]
    for label in ("Model", "Trigger", "Data", "folder", "Learning", "Resume", "Vectors", "Start"):
        assert label in text, label
    assert "~/invokeai/text-inversion-training-data/psychedelic" in text.replace("&#160;", " ")
    if os.environ.get("UPDATE_GUI_SNAPSHOT"):
        DOCS_SNAPSHOT.parent.mkdir(exist_ok=True)
        DOCS_SNAPSHOT.write_text(text)
    assert DOCS_SNAPSHOT.is_file(), "run with UPDATE_GUI_SNAPSHOT=1 to write docs/gui-form.svg"


def test_start_request_is_the_same_config_the_cli_builds(root):
    """The form fills the CLI's TrainingConfig: settings it does not show pass through."""
    base, _ = parse_config(["--root_dir", str(root), "--seed", "11", "--checkpointing_steps", "7"])

    async def scenario(pilot, app):
        await type_into(pilot, app, "trigger", "psychedelic")
        await pilot.press("ctrl+s")
        await settle(pilot, app)

    request: StartRequest = run_form(base, scenario).return_value
    assert (request.config.seed, request.config.checkpointing_steps) == (11, 7)
    assert request.config.learning_rate == form.FORM_LEARNING_RATE
    assert request.config.placeholder_token == "<psychedelic>" and request.remove == []
