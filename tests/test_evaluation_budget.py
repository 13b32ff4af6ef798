"""Issue 20 item 6: grids and the quality report spend at most --evaluation_budget of the training
time; what does not fit is skipped and said; a deferred step-0 grid is the same picture; each job
shows progress while it runs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS
from PIL import Image

from invokeai_ti.report import progress
from invokeai_ti.report.budget import EvaluationBudget
from invokeai_ti.report.validation import Observed
from invokeai_ti.train import evaluation


def train_flags(root, out, *extra):
    return [*TINY_FLAGS, "--root_dir", root, "--placeholder_token", "<psychedelic>",
            "--output_dir", out, "--no-copy", "--save_steps", "2", "--num_validation_images", "2",
            *extra]  # fmt: skip


def test_the_budget_prices_jobs_from_the_training_steps_then_from_their_own_time():
    budget = EvaluationBudget(0.1, planned_steps=100, samples_per_step=2)
    assert budget.cost("grid", 10) is None and not budget.fits("grid", 1)  # nothing timed yet
    budget.add_step(1.2)
    budget.add_step(0.8)  # 1 s a step, 2 samples, 3 passes each: 1/6 s a forward pass
    assert budget.allowance() == pytest.approx(0.1 * 100 * 1.0)
    assert budget.cost("grid", 60) == pytest.approx(10.0)
    assert budget.fits("grid", 60) and not budget.fits("grid", 61)
    assert not budget.fits("grid", 30, reserve=5.1)
    budget.seconds_per_forward["grid"] = 0.05  # a grid's own timing wins once it ran
    assert budget.cost("grid", 100) == pytest.approx(5.0)
    assert EvaluationBudget(None, 1, 1).fits("grid", 10**9)  # 'none': no limit, even untimed


def scheduled_run(
    fraction, steps, step_seconds, grid_seconds, report_seconds_per_draw, monkeypatch
):
    """A stand-in Run whose jobs spend their price on the budget, to test the policy alone."""
    config = SimpleNamespace(evaluation_budget=fraction, train_batch_size=1,
                             gradient_accumulation_steps=1, num_validation_images=4,
                             validation_steps=10, save_steps=10, quality_report=True,
                             output_dir=None)  # fmt: skip
    run = SimpleNamespace(config=config, progress=SimpleNamespace(step=0), total_steps=steps,
                          initial_grid_pending=True, skipped_grids=0, initial_vectors=None,
                          budget=EvaluationBudget(fraction, steps, 1))  # fmt: skip
    drawn, reports = [], []

    def draw_grid(run, reporter, step, vectors=None):
        run.budget.spent_seconds += grid_seconds
        run.initial_grid_pending = run.initial_grid_pending and step != 0
        drawn.append(step)

    def write_report(run, reporter, observed, per_image):
        run.budget.spent_seconds += report_seconds_per_draw * per_image
        reports.append(per_image)

    monkeypatch.setattr(evaluation, "draw_grid", draw_grid)
    monkeypatch.setattr(evaluation, "write_report", write_report)
    monkeypatch.setattr(evaluation, "report_forwards", lambda run, k: 2 * k)
    monkeypatch.setattr(evaluation.validation, "grid_forwards", lambda config: 1000)
    run.budget.seconds_per_forward = {"report": report_seconds_per_draw / 2,
                                      "grid": grid_seconds / 1000}  # fmt: skip
    for step in range(1, steps + 1):
        run.progress.step = step
        run.budget.add_step(step_seconds)
        if step % 10 == 0 and step < steps:
            evaluation.periodic_grid(run, SimpleNamespace(message=print))
    observed = Observed()
    evaluation.final_jobs(run, None, observed)
    return run, drawn, reports, [observed.skipped] if observed.skipped else []


def test_the_last_grid_the_first_grid_and_the_report_come_before_grids_in_between(monkeypatch):
    # 100 steps of 1 s: 10 s to spend. Grids cost 3 s, the report 0.25 s a draw per image. At
    # step 10 the owed step-0 grid and that step's grid fit beside the reserve (last grid 3 s,
    # smallest report 1 s); later grids do not; the report shrinks from 16 draws (4 s) to 4.
    run, drawn, reports, messages = scheduled_run(0.1, 100, 1.0, 3.0, 0.25, monkeypatch)
    assert drawn == [0, 10, 100]
    assert reports == [4]
    assert run.budget.spent_seconds == pytest.approx(10.0)
    (line,) = messages
    assert line.startswith("Skipped to keep grids and the report within 10 % of the training time")
    assert "8 grid(s) during training" in line and "step 100" not in line


def test_a_run_too_short_for_any_job_skips_them_all_and_says_so(monkeypatch):
    run, drawn, reports, messages = scheduled_run(0.1, 20, 0.1, 3.0, 0.25, monkeypatch)
    assert drawn == [] and reports == []
    assert run.budget.spent_seconds == 0
    (line,) = messages
    assert "within 10 % of the training time" in line
    assert "the grid of step 20" in line and "the grid of step 0" in line
    assert "the quality report" in line and "--eval_only" in line


def test_a_short_cli_run_skips_what_does_not_fit_and_reports_its_seconds(root, cli, tmp_path):
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--log_format", "json"))
    assert result.code == 0, result.err
    final = json.loads(result.out.strip().splitlines()[-1])
    seconds = final["seconds"]
    assert seconds["training"] > 0 and seconds["loading"] > 0
    # The tiny model's steps take milliseconds and a grid far more than 10 % of them.
    assert seconds["evaluation"] <= 0.1 * seconds["training"]
    assert not (out / "validation").exists() and not (out / "report.json").exists()
    assert any(line.startswith("Skipped to keep grids and the report") for line in final["summary"])


def test_a_deferred_step0_grid_is_the_same_picture_and_leaves_training_unchanged(
    root, cli, tmp_path
):
    """With a budget the step-0 grid waits for a timed step and is drawn from the initializer's
    vectors then: the same pixels as drawn at once, and the same learned vectors."""
    at_once = cli(*train_flags(root, tmp_path / "a", "--evaluation_budget", "none"))
    deferred = cli(*train_flags(root, tmp_path / "b", "--evaluation_budget", "100000"))
    assert at_once.code == 0 and deferred.code == 0, (at_once.err, deferred.err)
    names = sorted(p.name for p in (tmp_path / "a" / "validation").iterdir())
    assert names == ["step-0.png", "step-2.png", "step-4.png"]
    assert sorted(p.name for p in (tmp_path / "b" / "validation").iterdir()) == names
    for name in names:
        a = np.asarray(Image.open(tmp_path / "a" / "validation" / name))
        b = np.asarray(Image.open(tmp_path / "b" / "validation" / name))
        assert np.array_equal(a, b), name
    va = torch.load(tmp_path / "a" / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
    vb = torch.load(tmp_path / "b" / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
    assert torch.equal(va, vb)
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["num_draws"] == 16 * report["num_images"]  # it all fit: full draws


def test_grids_and_the_report_show_progress_while_they_run(root, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "TASK_EVERY_S", 0)  # every advance is a line
    result = cli(*train_flags(root, tmp_path / "out", "--evaluation_budget", "none",
                              "--log_format", "json", "--max_train_steps", "2"))  # fmt: skip
    assert result.code == 0, result.err
    tasks = [json.loads(line) for line in result.out.splitlines() if '"event": "task"' in line]
    grid = [t for t in tasks if t["task"] == "Grid of step 2"]
    report = [t for t in tasks if t["task"] == "Quality report"]
    assert grid and grid[-1]["done"] == grid[-1]["total"] == 2 * (2 * 25 + 2)
    assert [t["done"] for t in grid] == sorted(t["done"] for t in grid)
    assert report and report[-1]["done"] == report[-1]["total"]


def test_no_quality_report_writes_none(root, cli, tmp_path):
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--evaluation_budget", "none", "--no-quality_report",
                              "--validation_steps", "0"))  # fmt: skip
    assert result.code == 0, result.err
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("value", ["-0.5", "nan", "inf"])
def test_a_bad_budget_is_one_line(root, cli, tmp_path, value):
    result = cli(*train_flags(root, tmp_path / "out", f"--evaluation_budget={value}"))
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "--evaluation_budget" in lines[0]
