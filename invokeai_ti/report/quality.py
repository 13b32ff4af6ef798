"""The quality report: the denoising loss of the learned embedding vs the initializer's on fixed,
held-out draws, with the objective training minimises."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from invokeai_ti.data import latents
from invokeai_ti.data.captions import Prompts
from invokeai_ti.files.atomic import atomic_write_text
from invokeai_ti.models.denoising import MaskedPrior, objective
from invokeai_ti.models.loading import Components
from invokeai_ti.models.placeholder import Placeholder, holding

REPORT = "report.json"
# The report's draws come from this seed; training seeds its generators from (seed, step, micro),
# so the report never sees a (noise, timestep) pair the vectors were trained on.
EVAL_SEED = 8_675_309
DRAWS_PER_IMAGE = 16


@dataclass
class Draws:
    """A fixed set of (image, flip, template, latent sample, noise, timestep) for the report."""

    image_index: torch.Tensor  # [N]
    flipped: torch.Tensor  # [N]
    template_index: torch.Tensor  # [N]
    # [N, C, h, w], or with buckets one [C, h_i, w_i] per draw: samples the cached distribution
    latent_noise: torch.Tensor | list[torch.Tensor]
    noise: torch.Tensor | list[torch.Tensor]  # as latent_noise
    t: torch.Tensor  # [N]


def make_draws(num_images: int, num_templates: int,
               latent_shape: tuple[int, ...] | list[tuple[int, ...]], num_timesteps: int,
               seed: int, per_image: int = DRAWS_PER_IMAGE) -> Draws:  # fmt: skip
    """`per_image` draws per image, timesteps stratified over the schedule (one per equal slice,
    which halves the spread of the estimate compared with uniform timesteps). `latent_shape`: one
    for all images, or each image's (buckets)."""
    g = torch.Generator().manual_seed(seed)
    n = num_images * per_image
    slot = torch.arange(per_image).repeat(num_images)  # which slice of the schedule
    t = ((slot + torch.rand(n, generator=g)) * num_timesteps / per_image).long()
    image_index = torch.arange(num_images).repeat_interleave(per_image)
    flipped = torch.randint(0, 2, (n,), generator=g)
    template_index = torch.randint(0, num_templates, (n,), generator=g)
    shapes = latent_shape if isinstance(latent_shape, list) else [latent_shape] * num_images
    if len(set(shapes)) == 1:
        latent_noise = torch.randn((n, *shapes[0]), generator=g)
        noise = torch.randn((n, *shapes[0]), generator=g)
    else:
        latent_noise = [torch.randn(shapes[i], generator=g) for i in image_index.tolist()]
        noise = [torch.randn(shapes[i], generator=g) for i in image_index.tolist()]
    return Draws(image_index, flipped, template_index, latent_noise, noise,
                 t.clamp(max=num_timesteps - 1))  # fmt: skip


def _rows(values: torch.Tensor | list[torch.Tensor], part: slice) -> torch.Tensor:
    return values[part] if isinstance(values, torch.Tensor) else torch.stack(values[part])


def _batches(draws: Draws, latent_source: latents.LatentSource, batch_size: int):
    """Slices of at most `batch_size` draws whose images share a latent shape (one bucket)."""
    start, n = 0, len(draws.t)
    while start < n:
        end = min(start + batch_size, n)
        first = latent_source.shape_of(int(draws.image_index[start]))
        while latent_source.shape_of(int(draws.image_index[end - 1])) != first:
            end -= 1
        yield slice(start, end)
        start = end


@torch.no_grad()
def denoising_loss(components: Components, latent_source: latents.LatentSource,
                   prompts: Prompts, time_ids: torch.Tensor | None, draws: Draws,
                   batch_size: int, advance: Callable[[int], None] | None = None,
                   prior: MaskedPrior | None = None) -> float:  # fmt: skip
    """Mean of the training objective (train_step's loss) over `draws`, with each image's whole
    caption (no shuffle or dropout) and its loss mask; a test keeps the two equal. `advance(n)` is
    told of each batch of n draws as it finishes."""
    c, device = components, components.device
    total = 0.0
    for part in _batches(draws, latent_source, batch_size):
        t = draws.t[part].to(device)
        images, flipped = draws.image_index[part], draws.flipped[part]
        x0 = latent_source.draw(images, flipped, _rows(draws.latent_noise, part))
        noise = _rows(draws.noise, part).to(device)
        texts = [prompts.text(i, k) for i, k in zip(images.tolist(),
                                                    draws.template_index[part].tolist())]  # fmt: skip
        prompt_ids = prompts.token_ids(texts, c.tokenizers, device)
        image_time_ids = time_ids[images] if time_ids is not None else None
        masks = latent_source.weights(images, flipped)
        total += objective(c, x0, noise, t, prompt_ids, image_time_ids, masks, prior).sum().item()
        if advance is not None:
            advance(len(t))
    return total / len(draws.t)


@dataclass
class QualityReport:
    step: int
    loss_initializer: float
    loss_learned: float
    num_images: int
    num_draws: int
    seed: int

    @property
    def change_percent(self) -> float:
        return 100 * (self.loss_learned - self.loss_initializer) / self.loss_initializer

    def line(self) -> str:
        return (f"Quality: loss {self.loss_initializer:.3f} -> {self.loss_learned:.3f} "
                f"({self.change_percent:+.0f} %) vs initializer, on {self.num_draws} held-out "
                f"draws over {self.num_images} training images.")  # fmt: skip


def quality_report(components: Components, placeholders: list[Placeholder],
                   latent_source: latents.LatentSource, prompts: Prompts,
                   time_ids: torch.Tensor | None, initial: list[torch.Tensor], step: int,
                   batch_size: int, seed: int = EVAL_SEED, per_image: int = DRAWS_PER_IMAGE,
                   advance: Callable[[int], None] | None = None,
                   prior: MaskedPrior | None = None) -> QualityReport:  # fmt: skip
    """The denoising loss on the same draws with the initializer's vectors and with the current
    (learned) ones; the placeholders hold the learned vectors again afterwards."""
    num_images = latent_source.num_images
    draws = fixed_draws(components, latent_source, prompts, seed, per_image)
    losses = {}
    for name, vectors in (("initializer", initial), ("learned", None)):
        with holding(placeholders, vectors):
            losses[name] = denoising_loss(components, latent_source, prompts, time_ids, draws,
                                          batch_size, advance, prior)  # fmt: skip
    return QualityReport(step, losses["initializer"], losses["learned"], num_images,
                         len(draws.t), seed)  # fmt: skip


def fixed_draws(components: Components, latent_source: latents.LatentSource, prompts: Prompts,
                seed: int, per_image: int) -> Draws:  # fmt: skip
    """The same draws for every call with the same seed: the report's, or the validation loss's."""
    num_images = latent_source.num_images
    shapes = [latent_source.shape_of(i) for i in range(num_images)]
    return make_draws(num_images, prompts.num_templates, shapes,
                      components.noise_scheduler.config.num_train_timesteps, seed, per_image)  # fmt: skip


def save_report(output_dir: Path, report: QualityReport) -> Path:
    document = dict(asdict(report), change_percent=round(report.change_percent, 2))
    return atomic_write_text(output_dir / REPORT, json.dumps(document, indent=1) + "\n")
