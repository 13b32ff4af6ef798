"""The tokenizers of a diffusers model folder (or --tokenizer_name), read without any weights:
training and the GUI's trigger check load the same ones from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizers(folder: Path, tokenizer_name: str | None = None) -> list[Any]:
    """CLIP tokenizer(s): one for SD1/SD2, two for SDXL (tokenizer_2), offline only."""
    from transformers import CLIPTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if tokenizer_name:
        tokenizers = [CLIPTokenizer.from_pretrained(tokenizer_name, **kwargs)]
    else:
        tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **kwargs)]
    if (folder / "tokenizer_2").is_dir():
        tokenizers.append(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", **kwargs))
    return tokenizers
