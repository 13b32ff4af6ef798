"""Optional changes to the training objective: min-SNR loss weights (--min_snr_gamma) and offset
noise (--noise_offset). Both off by default, and then the step computes exactly what it did
before they existed. The quality report keeps the plain objective so its numbers stay comparable."""

from __future__ import annotations

import torch


def offset_noise(noise: torch.Tensor, offset: float, generator: torch.Generator,
                 global_batch: int, mine: slice) -> torch.Tensor:  # fmt: skip
    """kohya's noise offset: one extra draw per sample and latent channel, [B, C, 1, 1], scaled
    by `offset`. Drawn for the global batch and sliced like every other draw, so the result does
    not depend on the process count; no draw at all when off, so the RNG stream is unchanged."""
    if not offset:
        return noise
    channels = noise.shape[1]
    extra = torch.randn((global_batch, channels, 1, 1), generator=generator)[mine]
    return noise + offset * extra.to(noise.device)


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor | None:  # fmt: skip
    """Per-sample loss weights [B] of min-SNR-gamma (Hang et al. 2023), or None when gamma is 0.

    SNR(t) = alpha_bar / (1 - alpha_bar). The weight clamps the SNR at gamma so the easy, nearly
    noise-free timesteps stop dominating: min(SNR, gamma) / SNR for an epsilon target; for a
    v-prediction target, whose loss already carries a factor SNR + 1, min(SNR, gamma) / (SNR + 1).
    """
    if not gamma:
        return None
    alpha_bar = alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1 - alpha_bar)
    clamped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clamped / (snr + 1)
    # A zero-terminal-SNR schedule's last step has SNR 0, where min(SNR, gamma) / SNR tends to 1.
    return torch.where(snr > 0, clamped / snr.clamp(min=torch.finfo(snr.dtype).tiny), 1.0)


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of the per-sample losses [B], each weighted by `weights` [B] when given."""
    return per_sample.mean() if weights is None else (per_sample * weights).mean()
