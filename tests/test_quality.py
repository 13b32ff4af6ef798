"""The quality report (learned vs initializer on held-out draws), --eval_only, and the NaN guard."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import TINY_FLAGS

from invokeai_ti.data import dataset
from invokeai_ti.front.cli import parse_config
from invokeai_ti.invokeai.root import apply_root_defaults
from invokeai_ti.report import quality
from invokeai_ti.train import evaluation
from invokeai_ti.train import step as training_step
from invokeai_ti.train.setup import setup

TOKEN = "<psychedelic>"
LINE = re.compile(r"^Quality: loss (\d+\.\d{3}) -> (\d+\.\d{3}) \(([+-]\d+) %\) vs initializer")


def train_flags(root, out, *extra):
    return [*TINY_FLAGS, "--root_dir", root, "--placeholder_token", TOKEN,
            "--output_dir", out, "--no-copy", "--validation_steps", "0",
            "--evaluation_budget", "none", *extra]  # fmt: skip


def vector(path) -> torch.Tensor:
    return torch.load(path, weights_only=True)[TOKEN]


def test_learned_embedding_beats_the_initializer_on_held_out_draws(root, cli, tmp_path):
    out = tmp_path / "out"
    # 12 steps of batch 4 at lr 2e-2 (scaled: 8e-2) reach the plateau the tiny model allows.
    flags = train_flags(root, out, "--max_train_steps", "12", "--train_batch_size", "4",
                        "--learning_rate", "2e-2", "--repeats", "12")  # fmt: skip
    result = cli(*flags)
    assert result.code == 0, result.err
    line = next(x for x in result.out.splitlines() if x.startswith("Quality:"))
    report = json.loads((out / "report.json").read_text())
    before, after, percent = LINE.match(line).groups()
    assert float(before) == round(report["loss_initializer"], 3)
    assert float(after) == round(report["loss_learned"], 3)
    assert int(percent) == round(report["change_percent"])
    assert (
        report["step"] == 12 and report["num_images"] == 4 and report["seed"] == quality.EVAL_SEED
    )
    assert report["num_draws"] == 4 * quality.DRAWS_PER_IMAGE

    # Draws from other seeds than the report's and the training generators': still better.
    config = apply_root_defaults(parse_config([str(f) for f in flags])[0])
    for seed in (1, 2, 3):
        text = evaluation.evaluate_output(config, seed=seed)
        held_out = json.loads((out / "report.json").read_text())
        assert held_out["seed"] == seed
        assert held_out["loss_learned"] < held_out["loss_initializer"] * 0.995, text


def test_eval_only_reproduces_the_end_of_training_report(root, cli, tmp_path):
    out = tmp_path / "out"
    assert cli(*train_flags(root, out)).code == 0
    trained = json.loads((out / "report.json").read_text())
    (out / "report.json").unlink()
    # --eval_only takes the model, data and initializer from the run's checkpoint, not the flags.
    result = cli("--eval_only", "--root_dir", root, "--placeholder_token", TOKEN,
                 "--output_dir", out, "--resolution", "512", "--report_to", "none")  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), lines
    again = json.loads((out / "report.json").read_text())
    assert again["loss_initializer"] == pytest.approx(trained["loss_initializer"], rel=1e-6)
    assert again["loss_learned"] == pytest.approx(trained["loss_learned"], rel=1e-6)
    assert again["step"] == trained["step"] == 4


def test_eval_only_without_a_finished_run_is_one_line(root, cli, tmp_path):
    result = cli("--eval_only", "--root_dir", root, "--placeholder_token", TOKEN,
                 "--output_dir", tmp_path / "nothing")  # fmt: skip
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1
    assert "nothing has no checkpoint-<step> folder; train first" in result.err


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_report_loss_is_the_training_loss(family, request, root, tmp_path):
    """denoising_loss on the draws train_step would make gives train_step's loss (SD2: v-prediction
    target; SDXL: two encoders, pooled embeds and time ids)."""
    model = request.getfixturevalue(f"tiny_{family}")
    # The report keeps the plain loss, so the training step is compared without min-SNR weighting.
    flags = [str(f) for f in train_flags(root, tmp_path / "out", "--model", model,
                                         "--min_snr_gamma", "0")]  # fmt: skip
    run = setup(apply_root_defaults(parse_config(flags)[0]))
    samples = [dataset.Sample(1, 1, 3), dataset.Sample(2, 0, 5)]
    with torch.no_grad():
        expected = training_step.train_step(run, samples, torch.Generator().manual_seed(7)).item()
    g = torch.Generator().manual_seed(7)  # the draws in train_step's order
    shape = run.latent_source.latent_shape
    latent_noise, noise = (
        torch.randn((2, *shape), generator=g),
        torch.randn((2, *shape), generator=g),
    )
    draws = quality.Draws(
        image_index=torch.tensor([1, 2]), flipped=torch.tensor([1, 0]),
        template_index=torch.tensor([3, 5]), latent_noise=latent_noise, noise=noise,
        t=torch.randint(0, 1000, (2,), generator=g),
    )  # fmt: skip
    got = quality.denoising_loss(run.components, run.latent_source, run.prompts,
                                    run.time_ids, draws, 2)  # fmt: skip
    assert got == pytest.approx(expected, rel=1e-5)
    # Stratified timesteps: one per tenth of the schedule for each image.
    fixed = quality.make_draws(2, 5, shape, 1000, seed=0, per_image=10)
    assert (fixed.t[:10] // 100).tolist() == list(range(10))
    assert torch.equal(fixed.image_index, torch.tensor([0] * 10 + [1] * 10))


def nan_on_steps(monkeypatch, steps):
    """train_step returns a NaN loss (with NaN gradients) when the step being made is in `steps`."""
    real = training_step.train_step

    def step(run, samples, generator):
        loss = real(run, samples, generator)
        return loss * float("nan") if run.progress.step + 1 in steps else loss

    monkeypatch.setattr(training_step, "train_step", step)


def test_non_finite_losses_are_skipped_and_counted(root, cli, tmp_path, monkeypatch, caplog):
    nan_on_steps(monkeypatch, {2, 3})
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--max_train_steps", "5", "--save_steps", "1",
                              "--log_every_steps", "1"))  # fmt: skip
    assert result.code == 0, result.err
    assert "Trained 5 steps (2 updates skipped: loss not finite)" in result.out
    warnings = [r.message for r in caplog.records if "update skipped" in r.message]
    assert warnings == [
        "step 2: the loss or its gradient is not finite (nan); update skipped (1 so far).",
        "step 3: the loss or its gradient is not finite (nan); update skipped (2 so far).",
    ]
    assert "step 3/5" in result.out and "2 skipped (loss not finite)" in result.out
    # Steps 2 and 3 changed nothing: the vector after them is the vector after step 1.
    after = {n: vector(out / f"learned_embeds-steps-{n}.bin") for n in (1, 2, 3, 4)}
    assert torch.equal(after[1], after[2]) and torch.equal(after[2], after[3])
    assert not torch.equal(after[3], after[4])
    state = json.loads((out / "checkpoint-5" / "state.json").read_text())
    assert state["progress"]["nonfinite_steps"] == 2 and state["progress"]["nonfinite_streak"] == 0


def test_ten_in_a_row_stop_with_the_last_good_embedding(root, cli, tmp_path, monkeypatch):
    nan_on_steps(monkeypatch, set(range(4, 100)))
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--max_train_steps", "50", "--save_steps", "1"))
    assert result.code == 1
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("invokeai-ti: error: the loss was not finite for 10 steps in a row "
                            "(step 13, 10 skipped in all).")  # fmt: skip
    assert (
        "--mixed_precision bf16, or no (fp32)" in error and str(out / "learned_embeds.bin") in error
    )
    # Step 3 was the last finite loss; it was computed with the vector saved after step 2.
    assert torch.equal(
        vector(out / "learned_embeds.bin"), vector(out / "learned_embeds-steps-2.bin")
    )
    assert not torch.equal(vector(out / "learned_embeds.bin"),
                           vector(out / "learned_embeds-steps-3.bin"))  # fmt: skip
    state = json.loads((out / "checkpoint-13" / "state.json").read_text())
    assert state["progress"]["nonfinite_steps"] == 10
    assert (out / "loss.png").is_file()


def test_a_diverging_learning_rate_keeps_the_initializer(root, tiny_sd1, cli, tmp_path):
    """A real overflow, nothing injected: lr 1e30 sends the vector to ~1e30 after one update, the
    text encoder's layer norm then overflows, and the only good embedding is the first one."""
    from invokeai_ti.models.tiny import load_clip_tokenizer

    out = tmp_path / "out"
    # --embedding_norm free: the default held norm would scale the 1e30 vector back down.
    result = cli(*train_flags(root, out, "--max_train_steps", "30", "--learning_rate", "1e30",
                              "--no-scale_lr", "--log_format", "json",
                              "--embedding_norm", "free"))  # fmt: skip
    assert result.code == 1
    records = [json.loads(line) for line in result.out.splitlines()]
    assert records[-1] == {"event": "stopped", "stopped_at": 11, "nonfinite_steps": 10,
                           "embedding": str(out / "learned_embeds.bin")}  # fmt: skip
    from safetensors.torch import load_file

    weights = load_file(str(tiny_sd1 / "text_encoder" / "model.safetensors"))
    star = load_clip_tokenizer().encode("*", add_special_tokens=False)[0]
    key = next(k for k in weights if k.endswith("embeddings.token_embedding.weight"))
    initializer = weights[key][star]
    assert torch.equal(vector(out / "learned_embeds.bin"), initializer)
