"""The denoising objective, shared by the training step and the quality report, so the report
measures exactly what training minimises: noise the latents, encode the prompts with the current
vectors, let the UNet predict, and say what it should have predicted."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invokeai_ti.models.loading import Components
from invokeai_ti.models.placeholder import Placeholder, encode_prompts, holding


def prediction_and_target(c: Components, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                          prompt_ids: list[torch.Tensor],
                          time_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """UNet output and its target (noise, or velocity for v-prediction models), both fp32
    [B, 4, h, w]; `prompt_ids` are each sample's prompt per tokenizer ([B, 77]), `time_ids` are
    SDXL's size conditioning."""
    x_t = c.noise_scheduler.add_noise(x0, noise, t)
    half = c.weight_dtype != torch.float32  # frozen weights in half precision run under autocast
    with torch.autocast(c.device.type, dtype=c.weight_dtype, enabled=half):
        hidden, added = encode_prompts(c, prompt_ids, time_ids)  # [B, 77, dim]
        pred = c.unet(x_t.to(c.weight_dtype), t, hidden.to(c.weight_dtype),
                      added_cond_kwargs=added).sample  # fmt: skip
    if c.prediction_type == "v_prediction":
        target = c.noise_scheduler.get_velocity(x0, noise, t)
    else:
        target = noise
    return pred.float(), target.float()


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor,
                    weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """[B] squared error, the mean over each sample's weighted latent cells; `weights` [B, 1, h, w]
    are the loss masks, none: every cell weighs 1 (the plain mean). Normalised by the weights, so
    a small subject counts as much as a large one."""
    error = (pred - target).pow(2)  # [B, C, h, w]
    w = torch.ones_like(error[:, :1]) if weights is None else weights.to(error)
    # A sample with no weighted cell (a mask's outside, for a subject filling the picture) adds 0.
    total = w.sum(dim=(1, 2, 3)).clamp_min(torch.finfo(error.dtype).tiny)
    return (error * w).sum(dim=(1, 2, 3)) / (total * error.shape[1])


@dataclass
class MaskedPrior:
    """Masked prior preservation (OneTrainer's name): outside the loss mask the prediction is
    pulled, with `weight`, toward what the model predicts with the initial `vectors`. A mask alone
    leaves the background free, and the token still learned the training background from the
    UNet's context (examples/concepts-results-2026-12-04b.md section 3)."""

    placeholders: list[Placeholder]
    vectors: list[torch.Tensor]
    weight: float


def objective(c: Components, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              prompt_ids: list[torch.Tensor], time_ids: torch.Tensor | None,
              masks: torch.Tensor | None, prior: MaskedPrior | None = None) -> torch.Tensor:  # fmt: skip
    """[B] the training objective: per_sample_loss of the prediction, weighted by the loss masks,
    plus, with `prior`, `prior.weight` x the mean squared distance from the prior's prediction
    outside them."""
    prior_pred = None
    if prior is not None and masks is not None:
        # Before the trainable forward: `holding` writes the vectors in place.
        with torch.no_grad(), holding(prior.placeholders, prior.vectors):
            prior_pred, _ = prediction_and_target(c, x0, noise, t, prompt_ids, time_ids)
    pred, target = prediction_and_target(c, x0, noise, t, prompt_ids, time_ids)
    loss = per_sample_loss(pred, target, masks)
    if prior_pred is None:
        return loss
    # Each part is the mean over its own cells, so the weight does not depend on the subject's size.
    return loss + prior.weight * per_sample_loss(pred, prior_pred, 1 - masks.to(pred))
