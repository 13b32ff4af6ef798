"""Placeholder tokens and the trainable vectors spliced into the text encoder's token lookup.

Only the new vectors are parameters: a [num_vectors, dim] leaf tensor per text encoder. The frozen
embedding matrix is never resized or written during training, so every other row stays bit-identical
and the optimizer state is O(num_vectors x dim) instead of the whole 49k x dim matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError


class TokenLookupWithVectors(torch.nn.Module):
    """nn.Embedding's forward over the frozen matrix, with the placeholder ids read from `vectors`."""

    def __init__(self, base: torch.nn.Embedding, token_ids: list[int], vectors: torch.nn.Parameter):
        super().__init__()
        self.base = base
        self.token_ids = token_ids
        self.vectors = vectors

    @property
    def weight(self) -> torch.Tensor:
        """The frozen matrix, for code that reads an embedding's width or dtype."""
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        num_rows = self.base.weight.shape[0]
        out = F.embedding(input_ids.clamp(max=num_rows - 1), self.base.weight)
        for index, token_id in enumerate(self.token_ids):
            is_token = (input_ids == token_id).unsqueeze(-1)
            out = torch.where(is_token, self.vectors[index].to(out.dtype), out)
        return out


@dataclass
class Placeholder:
    """The new tokens of one tokenizer / text encoder pair and their trainable vectors."""

    tokens: list[str]
    token_ids: list[int]
    vectors: torch.nn.Parameter  # [num_vectors, dim], fp32 leaf
    lookup: TokenLookupWithVectors

    def detached(self) -> torch.Tensor:
        return self.vectors.detach().float().cpu().clone()


def check_placeholder_is_new(tokenizer: Any, token: str) -> None:
    """A trigger that is already a word would silently change that word's meaning."""
    if token in tokenizer.get_vocab():
        raise UserError(
            f"--placeholder_token '{token}' is already in the model's vocabulary: "
            f"pick a new word, e.g. '<{token.strip('<>')}-ti>'."
        )
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) == 1:
        raise UserError(
            f"--placeholder_token '{token}' is already a word in the vocabulary: "
            f"use a new word such as '<{token.strip('<>')}>'."
        )


def initializer_id(tokenizer: Any, initializer: str) -> int:
    ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise UserError(
            f"--initializer_token '{initializer}' is {len(ids)} tokens ({' '.join(pieces)}), "
            "not one: choose a single word such as 'cat' or '*'."
        )
    return ids[0]


def add_placeholder(
    config: TrainingConfig,
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    initial: torch.Tensor | None = None,
) -> Placeholder:
    """Add the placeholder tokens and splice trainable vectors into `text_encoder`'s lookup.

    `initial` ([num_vectors, dim]) overrides the initializer token (from --init_embedding).
    """
    tokens = config.placeholder_tokens
    check_placeholder_is_new(tokenizer, tokens[0])
    init_id = initializer_id(tokenizer, config.initializer_token)
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise UserError(
            f"--placeholder_token '{tokens[0]}' clashes with tokens the model already has "
            f"({', '.join(tokens)}): pick another trigger term."
        )
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    base = text_encoder.get_input_embeddings()
    if initial is None:
        initial = base.weight[init_id].detach().float().repeat(len(tokens), 1)
    vectors = torch.nn.Parameter(initial.detach().float().clone().to(base.weight.device))
    lookup = TokenLookupWithVectors(base, token_ids, vectors)
    text_encoder.set_input_embeddings(lookup)
    return Placeholder(tokens=tokens, token_ids=token_ids, vectors=vectors, lookup=lookup)


def prompt_text(config: TrainingConfig) -> str:
    """The placeholder as it stands in a prompt: all its tokens, space separated."""
    return " ".join(config.placeholder_tokens)


def encode_prompts(
    components: Any,
    prompt_ids: list[torch.Tensor],
    time_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """UNet conditioning for a batch of prompts (ids [B, 77] per tokenizer), read with the current
    vectors.

    SD1/SD2: the last hidden state of the one encoder, [B, 77, dim]. SDXL (two encoders) conditions
    as its pipeline does at inference: both encoders' penultimate hidden states side by side
    ([B, 77, 768 + 1280]), plus `added_cond_kwargs` with the second encoder's pooled, projected
    output and `time_ids` ([B, 6]: original size, crop top-left, target size).
    """
    encoders = components.text_encoders
    if len(encoders) == 1:
        return encoders[0](prompt_ids[0])[0], None
    outputs = [
        encoder(ids, output_hidden_states=True) for encoder, ids in zip(encoders, prompt_ids)
    ]
    hidden = torch.cat([out.hidden_states[-2] for out in outputs], dim=-1)
    pooled = outputs[-1].text_embeds  # [B, projection_dim]
    if time_ids is None:
        raise ValueError("SDXL conditioning needs time_ids")
    return hidden, {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device, pooled.dtype)}


def sdxl_time_ids(
    sizes: list[tuple[int, int]], resolution: int, center_crop: bool, fits: list | None = None
) -> torch.Tensor:
    """SDXL's size and crop conditioning per training image, [num_images, 6]:
    (original height, width, crop top, crop left, target height, width).

    `sizes` are the images' (height, width) as decoded. With --center_crop the crop offsets are
    those of the centred square in the resized image's pixels, as SDXL was trained; without it the
    whole image is resized (no crop). A flipped image keeps its offsets: for a centred crop they
    differ by at most one pixel. With buckets (`fits`, data/buckets.py) each image's own bucket
    and crop.
    """
    if fits is not None:  # buckets: the bucket is the target size, the crop its overhang's half
        rows = [
            [h, w, f.crop_top, f.crop_left, f.height, f.width] for (h, w), f in zip(sizes, fits)
        ]
        return torch.tensor(rows, dtype=torch.float32)
    rows = []
    for height, width in sizes:
        top = left = 0
        if center_crop:
            side = min(height, width)
            scale = resolution / side
            top, left = round((height - side) // 2 * scale), round((width - side) // 2 * scale)
        rows.append([height, width, top, left, resolution, resolution])
    return torch.tensor(rows, dtype=torch.float32)


@contextmanager
def holding(placeholders: list[Placeholder], vectors: list[torch.Tensor] | None) -> Iterator[None]:
    """The placeholders hold `vectors` (None: their own) inside the block and exactly their own
    values again after it, so the optimizer's parameters come back bit for bit."""
    if vectors is None:
        yield
        return
    own = [ph.detached() for ph in placeholders]
    try:
        with torch.no_grad():
            for placeholder, v in zip(placeholders, vectors):
                placeholder.vectors.copy_(v)
        yield
    finally:
        with torch.no_grad():
            for placeholder, v in zip(placeholders, own):
                placeholder.vectors.copy_(v)
