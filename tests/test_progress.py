"""Progress output (tqdm bar, plain lines, JSON lines) and the trackers (TensorBoard, wandb)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest
import torch
from conftest import TINY_FLAGS, run_subprocess

from invokeai_ti.report import progress


def train_flags(root, out, *extra):
    return [*TINY_FLAGS, "--root_dir", root, "--placeholder_token", "<psychedelic>",
            "--output_dir", out, "--no-copy", "--evaluation_budget", "none", *extra]  # fmt: skip


def saved_losses(out) -> list[float]:
    state = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    return json.loads((state / "state.json").read_text())["progress"]["losses"]


def test_json_lines_follow_the_run(root, tmp_path):
    out = tmp_path / "out"
    result = run_subprocess(*train_flags(root, out, "--log_format", "json", "--log_every_steps", "2",
                                         "--validation_steps", "0"))  # fmt: skip
    assert result.code == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]  # every line is JSON
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == [2, 4]
    for record in steps:
        assert set(record) >= {"step", "loss", "lr", "steps_per_s", "eta", "eta_s", "total"}
        assert record["total"] == 4 and record["steps_per_s"] > 0
        assert record["lr"] == pytest.approx(5e-3 * 2)  # --scale_lr: x batch size 2
    losses = saved_losses(out)
    assert [r["loss"] for r in steps] == [round(losses[1], 6), round(losses[3], 6)]
    assert steps[-1]["eta"] == "0:00:00"
    done = records[-1]
    assert done["event"] == "done" and records.index(done) == len(records) - 1
    assert done["embeds_bin"] == str(out / "learned_embeds.bin")
    assert done["loss_plot"] == str(out / "loss.png") and done["report"] == str(out / "report.json")
    report = json.loads((out / "report.json").read_text())
    assert done["quality"].startswith(f"Quality: loss {report['loss_initializer']:.3f} -> ")
    assert done["nonfinite_steps"] == 0
    assert any(line.startswith("Trained 4 steps") for line in done["summary"])


def test_plain_lines_when_stdout_is_not_a_terminal(root, tmp_path):
    out = tmp_path / "out"
    result = run_subprocess(*train_flags(root, out, "--log_format", "auto", "--log_every_steps", "3",
                                         "--max_train_steps", "7", "--validation_steps", "0"))  # fmt: skip
    assert result.code == 0, result.err
    assert "\r" not in result.out + result.err  # no carriage-return bar in a CI log
    lines = [line for line in result.out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]  # every 3, and the last
    losses = saved_losses(out)
    assert lines[0].split()[3] == f"{losses[2]:.4f}"
    assert "steps/s eta " in lines[0]


def test_tqdm_bar_shows_loss_lr_rate_and_eta(root, cli, tmp_path):
    result = cli(*train_flags(root, tmp_path / "out", "--log_format", "tqdm",
                              "--validation_steps", "0"))  # fmt: skip
    assert result.code == 0, result.err
    assert "Steps" in result.err and "4/4" in result.err
    assert "loss=" in result.err and "lr=1.00e-02" in result.err
    assert "step/s" in result.err  # tqdm's own rate, in steps
    assert "<00:00" in result.err  # and its ETA
    assert "step 4/4" not in result.out  # no plain lines next to the bar


def test_auto_format_is_a_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert progress._resolve_format("auto") == "tqdm"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert progress._resolve_format("auto") == "plain"
    assert progress._resolve_format("json") == "json"
    assert progress.format_eta(3725.4) == "1:02:05"
    assert progress.format_eta(float("nan")) == "?"


def test_tensorboard_logs_loss_lr_norm_rate_and_grids(root, cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--report_to", "tensorboard", "--save_steps", "2",
                              "--num_validation_images", "1"))  # fmt: skip
    assert result.code == 0, result.err
    events = EventAccumulator(str(out / "logs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert [e.step for e in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [e.value for e in scalars["train/loss"]] == pytest.approx(saved_losses(out), rel=1e-6)
    assert [e.value for e in scalars["train/lr"]] == pytest.approx([1e-2] * 4)
    assert all(e.value > 0 for e in scalars["train/steps_per_s"])
    vector = torch.load(out / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
    assert scalars["train/embedding_norm"][-1].value == pytest.approx(
        vector.norm().item(), rel=1e-5
    )
    step2 = torch.load(out / "learned_embeds-steps-2.bin", weights_only=True)["<psychedelic>"]
    assert scalars["train/embedding_norm"][1].value == pytest.approx(step2.norm().item(), rel=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert scalars["eval/loss_learned"][0].value == pytest.approx(report["loss_learned"], rel=1e-6)
    assert scalars["eval/loss_initializer"][0].value == pytest.approx(
        report["loss_initializer"], rel=1e-6
    )
    images = events.Images("validation")
    assert [e.step for e in images] == [0, 2, 4]
    assert (images[0].width, images[0].height) == (64, 64)


def test_report_to_none_writes_no_logs(root, cli, tmp_path):
    result = cli(
        *train_flags(root, tmp_path / "out", "--report_to", "none", "--validation_steps", "0")
    )
    assert result.code == 0, result.err
    assert not (tmp_path / "out" / "logs").exists()


def test_wandb_asked_for_but_missing_is_one_line(root, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable, whatever is installed
    result = cli(*train_flags(root, tmp_path / "out", "--report_to", "wandb"))
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "invokeai-ti: error: --report_to wandb: wandb is not installed; `pip install wandb` or use "
        "--report_to tensorboard or none."
    ]
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written


def test_wandb_gets_the_same_numbers(root, cli, tmp_path, monkeypatch):
    calls = {"log": [], "init": [], "finish": 0}

    class FakeRun:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: calls["init"].append(kwargs) or FakeRun()
    fake.Image = lambda image: ("image", image.size)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--report_to", "wandb", "--save_steps", "2",
                              "--num_validation_images", "1"))  # fmt: skip
    assert result.code == 0, result.err
    assert calls["init"][0]["project"] == "invokeai-ti"
    assert calls["init"][0]["config"]["placeholder_token"] == "<psychedelic>"
    losses = [(step, v["train/loss"]) for step, v in calls["log"] if "train/loss" in v]
    assert losses == [(i + 1, loss) for i, loss in enumerate(saved_losses(out))]
    grids = [(step, v["validation"]) for step, v in calls["log"] if "validation" in v]
    assert grids == [(0, ("image", (64, 64))), (2, ("image", (64, 64))), (4, ("image", (64, 64)))]
    assert calls["finish"] == 1
    assert not list(out.glob("logs/events.out.tfevents.*"))  # wandb only: no TensorBoard files
