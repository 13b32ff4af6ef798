"""Validation grids: images drawn from the validation prompt with the current vectors, at a fixed
seed, without shifting the training RNG stream."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.data import dataset, latents
from invokeai_ti.errors import UserError
from invokeai_ti.files.atomic import atomic_write
from invokeai_ti.files.checkpoint import capture_rng, restore_rng
from invokeai_ti.models.loading import Components, load_pipeline
from invokeai_ti.models.placeholder import prompt_text

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
NUM_INFERENCE_STEPS = 25
GUIDANCE_SCALE = 7.5


@dataclass
class Observed:
    """What finish() wrote to show what was learned (None: not written)."""

    loss_plot: Path | None = None
    validation_grid: Path | None = None
    report: Path | None = None
    quality: str | None = None  # the report's one line
    evaluation: str | None = None  # what the grids and the report cost, against the budget
    skipped: str | None = None  # what the budget had no room for
    best: str | None = None  # the best validation loss and its step


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


def grid_forwards(config: TrainingConfig) -> int:
    """A grid's cost in UNet forward passes (two per step for guidance; about two more per image
    for the VAE decode), for the evaluation budget."""
    return config.num_validation_images * (2 * NUM_INFERENCE_STEPS + 2)


def remove_stale_grids(config: TrainingConfig) -> None:
    """A new run: an earlier run's grids in its folder would mix with this one's."""
    folder = config.output_dir / VALIDATION_DIR
    stale = list(folder.glob("step-*.png"))
    for old in stale:
        old.unlink()
    if stale:
        log.info("Removed %d validation grids of an earlier run from %s.", len(stale), folder)


def grid_path(config: TrainingConfig, step: int) -> Path:
    return config.output_dir / VALIDATION_DIR / f"step-{step}.png"


def save_validation_grid(
    components: Components, config: TrainingConfig, step: int, seed: int, reporter: Any,
    advance: Callable[[int], None] | None = None,
) -> Path | None:  # fmt: skip
    """Images from the current vectors, always from the same seed so grids compare across steps;
    written as validation/step-<N>.png and sent to the trackers. The global RNGs are untouched.
    `advance(n)` is told of each denoising step and decode as they finish."""
    with preserved_rng():
        images = generate_images(components, config, seed, advance)
    grid = make_grid(images)
    path = grid_path(config, step)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    reporter.image("validation", grid, step)
    return path


@torch.no_grad()
def generate_images(components: Components, config: TrainingConfig, seed: int,
                    advance: Callable[[int], None] | None = None) -> list:  # fmt: skip
    """--num_validation_images images of the validation prompt: the frozen UNet and the text
    encoder(s) whose lookup already reads the trainable vectors; a VAE reloaded if it was freed."""
    vae = components.vae or load_vae(components, config)
    pipe = build_pipeline(components, vae)
    pipe.set_progress_bar_config(disable=True)
    count = config.num_validation_images
    tell = advance or (lambda n: None)

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        tell(2 * count)  # the guided pair of each image
        return tensors

    # One CPU generator per image: the same pictures whatever the device or the batch split.
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    latent_images = pipe(
        validation_prompt(config), height=config.resolution, width=config.resolution,
        num_images_per_prompt=count, num_inference_steps=NUM_INFERENCE_STEPS,
        guidance_scale=GUIDANCE_SCALE, generator=generators, output_type="latent",
        callback_on_step_end=on_step_end,
    ).images  # fmt: skip
    # Decoded in fp32 (the VAE's dtype) one image at a time: a 512 px fp32 decode of a whole
    # batch would need gigabytes next to the training state.
    scaled = latent_images.float() / latents.vae_scaling_factor(vae)
    images = []
    for x in scaled:
        images.append(to_pil(vae.decode(x[None]).sample)[0])
        tell(2)
    return images


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
