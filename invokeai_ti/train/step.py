"""One training step: train_step() computes a micro-batch's loss; optimizer_step() accumulates
micro-batches, averages over processes and updates the vectors."""

from __future__ import annotations

import math

import torch

from invokeai_ti.data import dataset
from invokeai_ti.models.denoising import MaskedPrior, objective
from invokeai_ti.train.loss_weighting import min_snr_weights, offset_noise, weighted_mean
from invokeai_ti.train.optimizer import to_eval_point, to_train_point, update_vectors
from invokeai_ti.train.run import Run


def train_step(run: Run, samples: list[dataset.Sample], generator: torch.Generator) -> torch.Tensor:
    """One micro-batch: latents, noise, timesteps, prompts with the current vectors, UNet, loss."""
    c, device = run.components, run.components.device
    b, offset = run.config.train_batch_size, run.rank * run.config.train_batch_size
    global_b = b * run.world_size  # draws are made for the global batch, then sliced, so the
    mine = slice(offset, offset + len(samples))  # result does not depend on the process count
    image_index = torch.tensor([s.image_index for s in samples])
    flipped = torch.tensor([s.flipped for s in samples])
    shape = run.latent_source.shape_of(samples[0].image_index)  # a batch is from one bucket
    latent_draw = torch.randn((global_b, *shape), generator=generator)[mine]
    noise = torch.randn((global_b, *shape), generator=generator)[mine].to(device)
    t = torch.randint(0, c.noise_scheduler.config.num_train_timesteps, (global_b,),
                      generator=generator)[mine].to(device)  # fmt: skip
    noise = offset_noise(noise, run.config.noise_offset, generator, global_b, mine)
    texts = [run.prompts.text(s.image_index, s.template_index, s.caption_seed) for s in samples]
    prompt_ids = run.prompts.token_ids(texts, c.tokenizers, device)  # [B, 77] per tokenizer
    x0 = run.latent_source.draw(image_index, flipped, latent_draw)  # [B, 4, h, w] scaled
    time_ids = run.time_ids[image_index] if run.time_ids is not None else None
    masks = run.latent_source.weights(image_index, flipped)  # loss masks [B, 1, h, w] or None
    loss = objective(c, x0, noise, t, prompt_ids, time_ids, masks, masked_prior(run))
    snr_weights = min_snr_weights(c.noise_scheduler.alphas_cumprod, t, run.config.min_snr_gamma,
                                  c.prediction_type)  # fmt: skip
    return weighted_mean(loss, snr_weights)


def masked_prior(run: Run) -> MaskedPrior | None:
    """--masked_prior_preservation_weight's pull toward the initial vectors, or None."""
    weight = run.config.masked_prior_preservation_weight
    return MaskedPrior(run.placeholders, run.initial_vectors, weight) if weight else None


def optimizer_step(run: Run, samples_of_epoch: list[dataset.Sample | None]) -> float:
    """Accumulate up to --gradient_accumulation_steps micro-batches (never across an epoch end),
    sum gradients over processes, and update the vectors unless the loss is not finite.

    Each micro-batch's mean loss is weighted by its share of the step's samples over all
    processes, so the loss and gradient are the mean over samples whatever the process count and
    however unequal the shards (a process with no samples adds nothing)."""
    p, cfg = run.progress, run.config
    count = min(cfg.gradient_accumulation_steps, run.micro_per_epoch - p.position)
    global_batch = cfg.train_batch_size * run.world_size
    window = samples_of_epoch[p.position * global_batch : (p.position + count) * global_batch]
    step_samples = sum(s is not None for s in window)  # bucket padding is no sample
    total_loss = torch.zeros((), device=run.components.device)
    to_train_point(run.optimizer)  # schedule-free AdamW's gradient point; a no-op for the others
    for micro in range(count):
        samples = dataset.micro_batch(samples_of_epoch, p.position, cfg.train_batch_size,
                                      run.rank, run.world_size)  # fmt: skip
        generator = torch.Generator().manual_seed(
            ((p.seed * 1_000_003 + p.step) * 1009 + micro) % 2**63
        )
        if samples:
            loss = train_step(run, samples, generator) * (len(samples) / step_samples)
            run.scaler.scale(loss).backward()
            total_loss += loss.detach()
        p.position += 1
    params = [ph.vectors for ph in run.placeholders]
    if run.world_size > 1:
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch.distributed.all_reduce(param.grad)
        torch.distributed.all_reduce(total_loss)
    loss = total_loss.item()
    # The fp16 scaler skips non-finite gradients itself; without it they would poison the vectors.
    grads_finite = run.scaler.is_enabled() or all(
        q.grad is None or bool(torch.isfinite(q.grad).all()) for q in params)  # fmt: skip
    if math.isfinite(loss) and grads_finite:
        update_vectors(run)  # clip, step, hold the norm
        p.nonfinite_streak = 0
    else:
        p.nonfinite_steps += 1
        p.nonfinite_streak += 1
    run.optimizer.zero_grad(set_to_none=True)
    to_eval_point(run.optimizer)
    run.schedule.step()
    p.step += 1
    if p.position >= run.micro_per_epoch:
        p.epoch, p.position = p.epoch + 1, 0
    return loss
