"""What a run learned, made visible: validation grids, the loss plot, and the quality report
(denoising loss of the learned embedding vs the initializer on fixed, held-out draws)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from invokeai_ti import dataset, latents
from invokeai_ti.checkpoint import atomic_write, atomic_write_text, capture_rng, restore_rng
from invokeai_ti.config import TrainingConfig
from invokeai_ti.denoising import prediction_and_target
from invokeai_ti.embedding import Placeholder, prompt_text
from invokeai_ti.errors import UserError
from invokeai_ti.models import Components, load_pipeline

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
LOSS_PLOT = "loss.png"
REPORT = "report.json"
NUM_INFERENCE_STEPS = 25
GUIDANCE_SCALE = 7.5
# The report's draws come from this seed; training seeds its generators from (seed, step, micro),
# so the report never sees a (noise, timestep) pair the vectors were trained on.
EVAL_SEED = 8_675_309
DRAWS_PER_IMAGE = 16


@dataclass
class Observed:
    """What finish() wrote to show what was learned (None: not written)."""

    loss_plot: Path | None = None
    validation_grid: Path | None = None
    report: Path | None = None
    quality: str | None = None  # the report's one line


# --- validation images ---------------------------------------------------------------------------


def validation_every(config: TrainingConfig) -> int:
    """Steps between validation grids: --validation_steps, else --save_steps; 0 (or no images) is
    off."""
    if config.num_validation_images == 0:
        return 0
    return config.save_steps if config.validation_steps is None else config.validation_steps


def validation_prompt(config: TrainingConfig) -> str:
    """--validation_prompt with every placeholder token spelled out, or the first template."""
    if not config.validation_prompt:
        return dataset.templates_for(config.learnable_property)[0].format(prompt_text(config))
    if prompt_text(config) in config.validation_prompt:
        return config.validation_prompt
    # "<tok>" alone names all vectors of a multi-vector trigger, as the training prompts do.
    return config.validation_prompt.replace(config.placeholder_token or "", prompt_text(config))


def check_validation_prompt(config: TrainingConfig) -> None:
    """A prompt without the trigger would draw the same grid at every step: refuse it up front."""
    prompt = config.validation_prompt
    if prompt and validation_every(config) and (config.placeholder_token or "") not in prompt:
        raise UserError(
            f"--validation_prompt '{prompt}' does not contain {config.placeholder_token}, so the "
            "grids would not show what is learned: put the trigger in it, e.g. "
            f"'a photo of {config.placeholder_token} on a beach'."
        )


def save_validation_grid(
    components: Components, config: TrainingConfig, step: int, seed: int, reporter: Any
) -> Path | None:
    """Images from the current vectors, always from the same seed so grids compare across steps;
    written as validation/step-<N>.png and sent to the trackers. The global RNGs are untouched."""
    with preserved_rng():
        images = generate_images(components, config, seed)
    grid = make_grid(images)
    folder = config.output_dir / VALIDATION_DIR
    if step == 0:  # a new run: an earlier run's grids in this folder would mix with this one's
        stale = list(folder.glob("step-*.png"))
        for old in stale:
            old.unlink()
        if stale:
            log.info("Removed %d validation grids of an earlier run from %s.", len(stale), folder)
    path = folder / f"step-{step}.png"
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    reporter.image("validation", grid, step)
    return path


@torch.no_grad()
def generate_images(components: Components, config: TrainingConfig, seed: int) -> list:
    """--num_validation_images images of the validation prompt: the frozen UNet and the text
    encoder(s) whose lookup already reads the trainable vectors; a VAE reloaded if it was freed."""
    vae = components.vae or load_vae(components, config)
    pipe = build_pipeline(components, vae)
    pipe.set_progress_bar_config(disable=True)
    count = config.num_validation_images
    # One CPU generator per image: the same pictures whatever the device or the batch split.
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    latent_images = pipe(
        validation_prompt(config), height=config.resolution, width=config.resolution,
        num_images_per_prompt=count, num_inference_steps=NUM_INFERENCE_STEPS,
        guidance_scale=GUIDANCE_SCALE, generator=generators, output_type="latent",
    ).images  # fmt: skip
    # Decoded in fp32 (the VAE's dtype) one image at a time: a 512 px fp32 decode of a whole
    # batch would need gigabytes next to the training state.
    scaled = latent_images.float() / latents.vae_scaling_factor(vae)
    return [to_pil(vae.decode(x[None]).sample)[0] for x in scaled]


def build_pipeline(components: Components, vae: torch.nn.Module) -> Any:
    """A diffusers pipeline over the frozen components (nothing is copied or loaded)."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    c = components
    scheduler = DPMSolverMultistepScheduler.from_config(c.noise_scheduler.config)
    if c.family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=c.text_encoders[0], text_encoder_2=c.text_encoders[1],
            tokenizer=c.tokenizers[0], tokenizer_2=c.tokenizers[1], unet=c.unet, scheduler=scheduler,
        )  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=c.text_encoders[0], tokenizer=c.tokenizers[0], unet=c.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def load_vae(components: Components, config: TrainingConfig) -> torch.nn.Module:
    """The VAE freed after latent caching, loaded again (fp32) for decoding only."""
    source = components.source
    if source.kind == "single_file":  # its VAE is inside the one checkpoint file
        vae = load_pipeline(config, source).vae.float()
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(source.path, subfolder="vae", local_files_only=True)
    return vae.requires_grad_(False).eval().to(components.device)


def to_pil(pixels: torch.Tensor) -> list:
    """[B, 3, H, W] in [-1, 1] -> PIL images."""
    from PIL import Image

    array = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(x.permute(1, 2, 0).cpu().numpy()) for x in array]


def make_grid(images: list) -> Any:
    """The images in a near-square grid, row by row."""
    from PIL import Image

    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Every global RNG (torch, CUDA, numpy, python) as it was before, so validation cannot shift
    the training stream (resume exactness depends on it) even if a scheduler draws from them."""
    tensors, states = capture_rng()
    try:
        yield
    finally:
        restore_rng(tensors, states)


# --- loss plot -----------------------------------------------------------------------------------


def moving_average(losses: list[float], window: int) -> list[float]:
    """Mean of the finite losses among the last `window` steps (NaN where there are none)."""
    out, recent = [], []
    for loss in losses:
        recent = (recent + [loss])[-window:]
        finite = [x for x in recent if math.isfinite(x)]
        out.append(sum(finite) / len(finite) if finite else float("nan"))
    return out


def smoothing_window(num_steps: int) -> int:
    """About a tenth of the run, between 5 and 100 steps."""
    return max(5, min(100, num_steps // 10))


@lru_cache(maxsize=1)
def _matplotlib() -> tuple[Any, Any] | None:
    """matplotlib is optional: without it, one info line per process and no plot."""
    try:
        from matplotlib.figure import Figure  # a bare Figure renders with Agg: no GUI backend
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.info("matplotlib is not installed: no loss.png (pip install matplotlib).")
        return None
    return Figure, MaxNLocator


def save_loss_plot(output_dir: Path, losses: list[float]) -> Path | None:
    """loss.png: the loss of every step (non-finite ones left out) and its moving average."""
    matplotlib = _matplotlib()
    if matplotlib is None or not losses:
        return None
    figure_class, integer_ticks = matplotlib
    window = smoothing_window(len(losses))
    steps = list(range(1, len(losses) + 1))
    shown = [x if math.isfinite(x) else float("nan") for x in losses]
    figure = figure_class(figsize=(6.4, 3.6), dpi=100)
    ax = figure.add_subplot()
    ax.plot(steps, shown, linewidth=0.8, alpha=0.45, label="loss per step")
    ax.plot(steps, moving_average(losses, window), linewidth=2, label=f"mean of {window} steps")
    ax.xaxis.set_major_locator(integer_ticks(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss (MSE)")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    return atomic_write(output_dir / LOSS_PLOT, lambda tmp: figure.savefig(tmp, format="png"))


# --- quality report ------------------------------------------------------------------------------


@dataclass
class Draws:
    """A fixed set of (image, flip, template, latent sample, noise, timestep) for the report."""

    image_index: torch.Tensor  # [N]
    flipped: torch.Tensor  # [N]
    template_index: torch.Tensor  # [N]
    latent_noise: torch.Tensor  # [N, C, h, w]: draws the latent from the cached distribution
    noise: torch.Tensor  # [N, C, h, w]
    t: torch.Tensor  # [N]


def make_draws(num_images: int, num_templates: int, latent_shape: tuple[int, ...],
               num_timesteps: int, seed: int, per_image: int = DRAWS_PER_IMAGE) -> Draws:  # fmt: skip
    """`per_image` draws per image, timesteps stratified over the schedule (one per equal slice,
    which halves the spread of the estimate compared with uniform timesteps)."""
    g = torch.Generator().manual_seed(seed)
    n = num_images * per_image
    slot = torch.arange(per_image).repeat(num_images)  # which slice of the schedule
    t = ((slot + torch.rand(n, generator=g)) * num_timesteps / per_image).long()
    return Draws(
        image_index=torch.arange(num_images).repeat_interleave(per_image),
        flipped=torch.randint(0, 2, (n,), generator=g),
        template_index=torch.randint(0, num_templates, (n,), generator=g),
        latent_noise=torch.randn((n, *latent_shape), generator=g),
        noise=torch.randn((n, *latent_shape), generator=g),
        t=t.clamp(max=num_timesteps - 1),
    )


@torch.no_grad()
def denoising_loss(components: Components, latent_source: latents.LatentSource,
                   prompt_ids: list[torch.Tensor], time_ids: torch.Tensor | None, draws: Draws,
                   batch_size: int) -> float:  # fmt: skip
    """Mean of the training objective (train_step's MSE) over `draws`; a test keeps the two equal."""
    c, device = components, components.device
    total = 0.0
    for start in range(0, len(draws.t), batch_size):
        part = slice(start, start + batch_size)
        t = draws.t[part].to(device)
        x0 = latent_source.draw(draws.image_index[part], draws.flipped[part], draws.latent_noise[part])
        noise = draws.noise[part].to(device)
        templates = draws.template_index[part].to(device)
        image_time_ids = time_ids[draws.image_index[part]] if time_ids is not None else None
        pred, target = prediction_and_target(c, x0, noise, t, prompt_ids, templates, image_time_ids)
        total += (pred - target).pow(2).mean(dim=(1, 2, 3)).sum().item()
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
                   latent_source: latents.LatentSource, prompt_ids: list[torch.Tensor],
                   time_ids: torch.Tensor | None, initial: list[torch.Tensor], step: int,
                   batch_size: int, seed: int = EVAL_SEED) -> QualityReport:  # fmt: skip
    """The denoising loss on the same draws with the initializer's vectors and with the current
    (learned) ones; the placeholders hold the learned vectors again afterwards."""
    cached = latent_source.mean if latent_source.mean is not None else latent_source.pixels
    num_images = cached.shape[0]
    draws = make_draws(num_images, prompt_ids[0].shape[0], latent_source.latent_shape,
                       components.noise_scheduler.config.num_train_timesteps, seed)  # fmt: skip
    learned = [ph.detached() for ph in placeholders]
    losses = {}
    for name, vectors in (("initializer", initial), ("learned", learned)):
        with torch.no_grad():
            for placeholder, v in zip(placeholders, vectors):
                placeholder.vectors.copy_(v)
        losses[name] = denoising_loss(components, latent_source, prompt_ids, time_ids, draws,
                                      batch_size)  # fmt: skip
    return QualityReport(step, losses["initializer"], losses["learned"], num_images,
                         len(draws.t), seed)  # fmt: skip


def save_report(output_dir: Path, report: QualityReport) -> Path:
    document = dict(asdict(report), change_percent=round(report.change_percent, 2))
    return atomic_write_text(output_dir / REPORT, json.dumps(document, indent=1) + "\n")
