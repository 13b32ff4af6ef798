"""The model families we train, under InvokeAI's base names, and how each is recognised from its
token dimensions: the one table every loader, reader, exporter and the model database agree on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    base: str  # InvokeAI's name (models.yaml / the model database): sd-1, sd-2, sdxl
    label: str  # what messages say: SD1, SD2, SDXL
    token_dims: tuple[int, ...]  # one per text encoder


FAMILIES = (
    Family("sd-1", "SD1", (768,)),
    Family("sd-2", "SD2", (1024,)),
    Family("sdxl", "SDXL", (768, 1280)),  # CLIP-L and OpenCLIP bigG
)
TRAINABLE_BASES = tuple(f.base for f in FAMILIES)
# InvokeAI identifies a one-encoder embedding by its width; SDXL's second encoder is 1280 wide.
BASE_BY_DIM = {f.token_dims[-1]: f.base for f in FAMILIES}
KNOWN_FAMILIES = ", ".join("+".join(map(str, f.token_dims)) + f" {f.label}" for f in FAMILIES)


def label_of_dims(dims: list[int] | tuple[int, ...]) -> str:
    """SD1 / SD2 / SDXL for an embedding's dims, or 'no known family'."""
    return next((f.label for f in FAMILIES if f.token_dims == tuple(dims)), "no known family")


def label_of_base(base: str) -> str:
    return next((f.label for f in FAMILIES if f.base == base), base)


def is_known(dims: list[int] | tuple[int, ...]) -> bool:
    return any(f.token_dims == tuple(dims) for f in FAMILIES)
