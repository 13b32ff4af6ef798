"""What this root and machine offer the training form: the diffusers models and the one to
pre-select, a model's folder, native size and tokenizers, the mixed precisions and xformers.

No torch at import; the functions that probe the machine import it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.invokeai.model_source import default_model_name, list_model_names, resolve_model

FALLBACK_MODEL = "stable-diffusion-1.5"
RESOLUTIONS = (512, 768)


def machine_precisions() -> list[str]:
    """'no' always; fp16 and bf16 only on a CUDA GPU that runs them (the trainer would fall back
    to fp32 for fp16 on a CPU, and bf16 on most CPUs is slower than fp32)."""
    import torch

    options = ["no"]
    if torch.cuda.is_available():
        options.append("fp16")
        if torch.cuda.is_bf16_supported():
            options.append("bf16")
    return options


def xformers_usable() -> bool:
    """models.set_attention refuses xformers unless it is installed and a CUDA GPU is present."""
    if importlib.util.find_spec("xformers") is None:
        return False
    import torch

    return torch.cuda.is_available()


def model_choices(root: Path, requested: str) -> tuple[list[str], str]:
    """The diffusers models to offer and the one to pre-select: a non-default --model, else the
    registry's default, else stable-diffusion-1.5, else the first."""
    names = list_model_names(root)
    if requested not in names and (Path(requested).expanduser() / "model_index.json").is_file():
        names.insert(0, requested)  # a folder given with --model stays selectable
    if not names:
        raise UserError(
            f"--gui: no diffusers models in {root / 'configs' / 'models.yaml'} or InvokeAI's "
            "model database: install one in InvokeAI, or start with --gui --model "
            "/path/to/a/diffusers-folder."
        )
    for candidate in (
        requested if requested != TrainingConfig.model else None,
        default_model_name(root),
        FALLBACK_MODEL,
    ):
        if candidate in names:
            return names, candidate
    return names, names[0]


def model_folder(root: Path, name: str) -> Path:
    """The diffusers folder of a model the form offers; UserError says why there is none."""
    source = resolve_model(TrainingConfig(root_dir=root, model=name))
    if source.kind != "diffusers":
        raise UserError(f"{name} is a single-file checkpoint: convert it to diffusers first.")
    return source.path


@dataclass(frozen=True)
class ModelInfo:
    """What the form shows about a model: its folder and native size, or why it cannot be used."""

    folder: Path | None
    native: int | None
    problem: str | None


def inspect_model(root: Path, name: str) -> ModelInfo:
    try:
        folder = model_folder(root, name)
    except UserError as exc:
        return ModelInfo(None, None, str(exc))
    return ModelInfo(folder, native_resolution(folder), None)


def native_resolution(folder: Path) -> int | None:
    """unet/config.json sample_size x 8 (the VAE's downsampling): 512 for SD1, 768 for SD2-v."""
    try:
        size = json.loads((folder / "unet" / "config.json").read_text()).get("sample_size")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(size, list) and size:
        size = size[0]
    return size * 8 if isinstance(size, int) and size > 0 else None


def resolution_choices(*preferred: int | None) -> list[int]:
    return sorted({*RESOLUTIONS, *(value for value in preferred if value)})
