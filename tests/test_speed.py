"""Speed must not change what is learned: the latent cache, bf16 and gradient checkpointing against
the plain path on the tiny model; the optimizer state stays small at SD1.5 width."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_FLAGS

from invokeai_ti.data import dataset
from invokeai_ti.front.cli import parse_config
from invokeai_ti.invokeai.root import apply_root_defaults
from invokeai_ti.train.run import Run
from invokeai_ti.train.setup import setup
from invokeai_ti.train.step import optimizer_step, train_step

SD15_TOKEN_DIM = 768


def _setup(root, *argv: str) -> Run:
    config, _ = parse_config([*TINY_FLAGS, "--root_dir", str(root), "--placeholder_token",
                              "<psychedelic>", *argv])  # fmt: skip
    config.validate()
    return setup(apply_root_defaults(config))


def _losses(run: Run) -> list[float]:
    p, losses = run.progress, []
    while p.step < run.total_steps:
        samples = dataset.epoch_samples(len(run.images.paths), run.config.repeats,
                                                 run.prompts.num_templates, p.seed, p.epoch)  # fmt: skip
        losses.append(optimizer_step(run, samples))
    return losses


def test_cached_latents_learn_what_encoding_every_step_learns(root):
    """The cache keeps each image's posterior mean and std and draws mean + std * noise with the
    step's generator: the very sample the VAE's posterior gives for that noise. Only the encoder's
    batching differs (one image at a time vs the step's batch), a float-rounding difference."""
    steps = ("--max_train_steps", "6")
    cached = _setup(root, *steps)
    assert cached.components.vae is None and cached.latent_source.vae is None  # VAE freed
    slow = _setup(root, *steps, "--no-cache_latents")
    assert slow.latent_source.vae is not None and slow.latent_source.mean is None
    assert _losses(cached) == pytest.approx(_losses(slow), rel=1e-5, abs=1e-7)
    assert torch.allclose(cached.placeholders[0].vectors, slow.placeholders[0].vectors, atol=1e-6)


def test_bf16_keeps_fp32_vectors_and_follows_the_fp32_loss_trajectory(root):
    """bf16 keeps 8 bits of mantissa (relative rounding 2**-9 per op); through the tiny UNet and
    text encoder that compounds to about 1 % in a step's loss. The same draws make the two runs
    comparable step by step: each loss within 3 %, and the vectors move the same way."""
    steps = ("--max_train_steps", "8")
    fp32 = _setup(root, *steps)
    bf16 = _setup(root, *steps, "--mixed_precision", "bf16")
    c = bf16.components
    assert c.weight_dtype == torch.bfloat16
    assert next(c.unet.parameters()).dtype == torch.bfloat16
    assert c.text_encoders[0].get_input_embeddings().weight.dtype == torch.bfloat16
    vectors = bf16.placeholders[0].vectors
    assert vectors.dtype == torch.float32 and vectors.requires_grad
    start = vectors.detach().clone()
    losses_fp32, losses_bf16 = _losses(fp32), _losses(bf16)
    assert losses_bf16 == pytest.approx(losses_fp32, rel=0.03)
    state = bf16.optimizer.state[vectors]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    move_fp32 = (fp32.placeholders[0].vectors.detach() - start).flatten()
    move_bf16 = (vectors.detach() - start).flatten()
    assert torch.nn.functional.cosine_similarity(move_fp32, move_bf16, dim=0) > 0.9


def test_fp16_on_cpu_warns_once_and_trains_in_fp32(root, caplog):
    run = _setup(root, "--mixed_precision", "fp16")
    assert run.components.weight_dtype == torch.float32 and not run.scaler.is_enabled()
    warnings = [r for r in caplog.records if "fp16 needs a GPU" in r.getMessage()]
    assert len(warnings) == 1


def count_forward_calls(monkeypatch, module: torch.nn.Module, counts: list[int], index: int):
    """Count `module`'s forward passes at the class level (transformers runs a recomputed layer
    outside the module hooks, so a hook would miss the recompute)."""
    cls, real = type(module), type(module).forward

    def counted(self, *args, **kwargs):
        counts[index] += self is module
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counted)


def test_gradient_checkpointing_gives_the_same_gradient(root, monkeypatch):
    """--gradient_checkpointing recomputes the UNet's and the text encoder's layers in the
    backward pass (a layer on the path to the vectors runs twice per step, once without it) and
    changes no number."""
    plain, checkpointed = _setup(root), _setup(root, "--gradient_checkpointing")
    assert checkpointed.components.unet.is_gradient_checkpointing
    samples = dataset.epoch_samples(4, 2, 27, seed=0, epoch=0)[:2]
    grads, calls = [], []
    for run in (plain, checkpointed):
        c = run.components
        # Inside the first checkpointed layers whose input depends on the vectors.
        encoder_mlp = next(
            module
            for name, module in c.text_encoders[0].named_modules()
            if name.endswith("encoder.layers.0.mlp")
        )  # transformers 4 and 5 names
        cross_attention = c.unet.down_blocks[0].attentions[0].transformer_blocks[0]
        counts = [0, 0]
        with monkeypatch.context() as patch:
            count_forward_calls(patch, encoder_mlp, counts, 0)
            count_forward_calls(patch, cross_attention, counts, 1)
            loss = train_step(run, samples, torch.Generator().manual_seed(3))
            loss.backward()
        calls.append(counts)
        grads.append((loss.item(), run.placeholders[0].vectors.grad.clone()))
    assert calls == [[1, 1], [2, 2]]  # [text encoder's first MLP, UNet's first attention block]
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-8)


def test_only_the_vectors_get_gradients(root):
    """No frozen weight (position embeddings included) is in the graph as a leaf needing grad."""
    run = _setup(root, "--max_train_steps", "1")
    c = run.components
    vectors = run.placeholders[0].vectors
    frozen = [(name, p) for name, p in [*c.unet.named_parameters(),
                                        *c.text_encoders[0].named_parameters()] if p is not vectors]  # fmt: skip
    assert [name for name, p in frozen if p.requires_grad] == []
    _losses(run)
    assert all(p.grad is None for _, p in frozen)
    assert [p for g in run.optimizer.param_groups for p in g["params"]] == [vectors]


def test_optimizer_state_is_under_1_mib_at_sd15_width(root):
    """AdamW keeps two fp32 moments per trained number (and a step count). Measured on the tiny
    model, scaled to SD1.5's 768-wide tokens, even 16 vectors stay far below 1 MiB; the upstream
    recipe's full 49,409 x 768 matrix would need 290 MiB."""
    run = _setup(root, "--max_train_steps", "1", "--num_vectors", "2")
    _losses(run)
    vectors = run.placeholders[0].vectors
    state = run.optimizer.state[vectors]
    moment_bytes = sum(t.nbytes for t in state.values() if t.numel() == vectors.numel())
    other_bytes = sum(t.nbytes for t in state.values() if t.numel() != vectors.numel())
    per_number = moment_bytes / vectors.numel()
    assert per_number == 8  # exp_avg + exp_avg_sq, fp32
    sd15_bytes = per_number * 16 * SD15_TOKEN_DIM + other_bytes
    assert sd15_bytes < 1024**2


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_slower(root, caplog, monkeypatch):
    from invokeai_ti.models import loading as models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    _setup(root, "--mixed_precision", "bf16")
    assert any("no native bf16" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    _setup(root, "--mixed_precision", "bf16")
    assert not any("no native bf16" in r.getMessage() for r in caplog.records)
