"""Sampling the concept-world pipeline at fixed seeds and judging what it drew."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from invokeai_ti.concepts.judge import Verdict, judge_image

MODEL_DIR = Path(__file__).resolve().parent / "model"
# Sampling settings of every measurement; the ceiling, the initializer and the learned token are
# all drawn with these, so their rates compare.
NUM_INFERENCE_STEPS = 20
# The miniature model is over-guided at SD's usual scales: at 4 its blue samples turned muddy and
# the judge could not name them (blue-square 0.28); at 2 every named caption is drawn in 0.95 of
# samples on average (examples/concepts-results-2026-12-05b.md, section 1). Learned tokens draw
# better at 4 (section 2): the ceiling decides, since it is the yardstick of every rate.
GUIDANCE_SCALE = 2.0


def load_pipeline(model_dir: Path = MODEL_DIR):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from invokeai_ti.errors import ModelError

    if not (model_dir / "model_index.json").is_file():
        raise ModelError(f"{model_dir} is not a diffusers pipeline folder (no model_index.json).")
    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), safety_checker=None,
                                                   requires_safety_checker=False)  # fmt: skip
    # StableDiffusionPipeline.__init__ resets clip_sample to False (an SD1 compatibility rule):
    # reload the scheduler as the folder stores it, so a model pretrained with clipping samples
    # as it was made (the shipped one is unclipped; see pretrain.sampling_scheduler).
    pipe.scheduler = DDIMScheduler.from_pretrained(str(model_dir), subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_token(pipe, token: str, vectors: torch.Tensor) -> None:
    """Splice one new token with its [1, dim] vector into the pipeline's tokenizer and encoder
    (replacing the vector if the token is already there)."""
    if token not in pipe.tokenizer.get_vocab():
        pipe.tokenizer.add_tokens([token])
        pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    token_id = pipe.tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[token_id] = vectors.reshape(-1)


def load_embedding(pipe, path: Path, token: str | None = None) -> str:
    """Add the token of an embedding file (ours or the diffusers script's), or name it `token`;
    its vectors replace earlier ones. Returns the words a prompt needs: "<t>", or "<t> <t>_1 ..."
    for a --num_vectors token (diffusers' names), so every vector counts."""
    from invokeai_ti.files.formats import read_embedding

    embedding = read_embedding(path)
    token = token or (embedding.tokens[0] if embedding.tokens else "<learned>")
    tokens = []
    for i, vector in enumerate(embedding.vectors[0]):
        tokens.append(token if i == 0 else f"{token}_{i}")
        add_token(pipe, tokens[-1], vector[None])
    return " ".join(tokens)


def sample(pipe, prompt: str | torch.Tensor, num_images: int, seed: int = 0) -> np.ndarray:
    """[n, 32, 32, 3] uint8 from seeds seed..seed+n-1 (one generator each, so image i does not
    depend on n). `prompt` is words, or a [1, 77, dim] conditioning used as the prompt's."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    if isinstance(prompt, str):
        given = {"prompt": [prompt] * num_images}
    else:
        given = {"prompt_embeds": prompt.expand(num_images, -1, -1)}
    with torch.no_grad():
        out = pipe(**given, num_inference_steps=NUM_INFERENCE_STEPS,
                   guidance_scale=GUIDANCE_SCALE, generator=generators, output_type="np")  # fmt: skip
    return (out.images * 255).round().clip(0, 255).astype(np.uint8)


@dataclass
class Rate:
    """How many of the judged images show the concept (and the background, when one is asked)."""

    prompt: str
    hits: int
    total: int
    verdicts: list[Verdict] = field(default_factory=list)  # the judge's reading of each image

    @property
    def value(self) -> float:
        return self.hits / self.total


def judged_rate(images: np.ndarray, concept: str, background: str | None = None) -> int:
    return _hits([judge_image(image) for image in images], concept, background)


def _hits(verdicts: list[Verdict], concept: str, background: str | None) -> int:
    return sum(v.concept == concept and (background is None or v.background == background)
               for v in verdicts)  # fmt: skip


def measure(pipe, prompt: str, concept: str, num_images: int, seed: int = 0,
            background: str | None = None) -> tuple[Rate, np.ndarray]:  # fmt: skip
    images = sample(pipe, prompt, num_images, seed)
    verdicts = [judge_image(image) for image in images]
    return Rate(prompt, _hits(verdicts, concept, background), num_images, verdicts), images


def grid(rows: list[np.ndarray], scale: int = 3) -> PIL.Image.Image:  # noqa: F821
    """Rows of equal-length [n, 32, 32, 3] images as one picture, each pixel `scale` x `scale`."""
    from PIL import Image

    pixels = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    image = Image.fromarray(pixels)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
