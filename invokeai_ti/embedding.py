"""Placeholder tokens and the trainable vectors spliced into the text encoder's token lookup.

Only the new vectors are parameters: a [num_vectors, dim] leaf tensor per text encoder. The frozen
embedding matrix is never resized or written during training, so every other row stays bit-identical
and the optimizer state is O(num_vectors x dim) instead of the whole 49k x dim matrix.
"""

from __future__ import annotations

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
