"""Issue 20 item 5: a deterministic validation loss at every validation step, the best step's
embedding kept (--save_best), and early stopping (--early_stop_patience)."""

from __future__ import annotations

import json

import torch
from conftest import TINY_FLAGS

from invokeai_ti.report import quality
from invokeai_ti.train import evaluation

TOKEN = "<psychedelic>"


def train_flags(root, out, *extra):
    return [*TINY_FLAGS, "--root_dir", root, "--placeholder_token", TOKEN, "--output_dir", out,
            "--no-copy", "--save_steps", "2", "--num_validation_images", "0", *extra]  # fmt: skip


def state(out, step):
    return json.loads((out / f"checkpoint-{step}" / "state.json").read_text())


def test_best_step_and_patience_from_the_validation_losses():
    losses = [[0, 0.5], [2, 1.0], [4, 0.8], [6, 0.9], [8, 0.8]]
    assert evaluation.best_validation(losses) == (4, 0.8)  # the earliest; step 0 is the baseline

    class Run:
        class config:
            early_stop_patience = 2

        class progress:
            validation_losses = losses

    assert evaluation.patience_spent(Run)  # steps 6 and 8 brought no new best
    Run.config.early_stop_patience = 3
    assert not evaluation.patience_spent(Run)
    Run.config.early_stop_patience = 0
    assert not evaluation.patience_spent(Run)


def test_save_best_keeps_the_lowest_validation_loss_and_it_resumes_exactly(root, cli, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ("--save_best", "--checkpointing_steps", "2", "--log_format", "json")
    a = cli(*train_flags(root, straight, *flags))
    assert a.code == 0, a.err
    events = [json.loads(line) for line in a.out.splitlines()]
    validations = [e for e in events if e["event"] == "validation"]
    assert [e["step"] for e in validations] == [0, 2, 4]  # 0: the initializer, measured at step 2
    losses = state(straight, 4)["progress"]["validation_losses"]
    assert [step for step, _ in losses] == [0, 2, 4]
    assert [round(loss, 6) for _, loss in losses] == [e["loss"] for e in validations]
    best_step, _ = evaluation.best_validation(losses)
    best = torch.load(straight / "learned_embeds-best.bin", weights_only=True)[TOKEN]
    # The last step has no -steps- file: it is the final embedding.
    name = "learned_embeds.bin" if best_step == 4 else f"learned_embeds-steps-{best_step}.bin"
    assert torch.equal(best, torch.load(straight / name, weights_only=True)[TOKEN])
    assert any(line.startswith("Validation loss: best ") for line in events[-1]["summary"])

    # Stopped at step 2 and resumed: the same validation losses, bit for bit.
    first = cli(*train_flags(root, resumed, *flags, "--max_train_steps", "2"))
    assert first.code == 0, first.err
    second = cli(*train_flags(root, resumed, *flags, "--resume_from_checkpoint", "latest"))
    assert second.code == 0, second.err
    assert state(resumed, 4)["progress"]["validation_losses"] == losses


def test_the_validation_loss_is_the_training_objective_on_fixed_draws(root, cli, tmp_path):
    """Two runs, one with grids and the report and one without: the same validation losses (its
    draws are its own, so nothing else shifts them)."""
    a = cli(*train_flags(root, tmp_path / "a", "--save_best"))
    b = cli(*train_flags(root, tmp_path / "b", "--save_best", "--evaluation_budget", "none",
                         "--num_validation_images", "1"))  # fmt: skip
    assert a.code == 0 and b.code == 0, (a.err, b.err)
    assert (state(tmp_path / "a", 4)["progress"]["validation_losses"]
            == state(tmp_path / "b", 4)["progress"]["validation_losses"])  # fmt: skip


def test_early_stop_after_patience_validations_without_a_new_best(root, cli, tmp_path, monkeypatch):
    rising = iter([0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5])  # the first: the initializer
    monkeypatch.setattr(quality, "denoising_loss", lambda *args, **kwargs: next(rising))
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--max_train_steps", "20", "--early_stop_patience", "2",
                              "--save_best", "--no-quality_report"))  # fmt: skip
    assert result.code == 0, result.err
    assert (
        "Early stop at step 6: 2 validation(s) without a new best (best 1.0000 at step 2"
        in result.out
    )
    assert "Trained 6 steps" in result.out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    assert state(out, 6)["progress"]["validation_losses"] == [
        [0, 0.9],
        [2, 1.0],
        [4, 1.1],
        [6, 1.2],
    ]
    best = torch.load(out / "learned_embeds-best.bin", weights_only=True)[TOKEN]
    assert torch.equal(
        best, torch.load(out / "learned_embeds-steps-2.bin", weights_only=True)[TOKEN]
    )


def test_the_validation_loss_is_off_with_zero_draws(root, cli, tmp_path):
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--validation_loss_draws", "0", "--save_best"))
    assert result.code == 0, result.err
    assert state(out, 4)["progress"]["validation_losses"] == []
    assert not (out / "learned_embeds-best.bin").exists()
