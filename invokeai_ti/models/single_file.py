"""Single-file .safetensors/.ckpt checkpoints, loaded offline with diffusers' `from_single_file`.

A single file holds weights but no configuration, and diffusers downloads one from the hub when it
is not given a local folder (even with local_files_only=True). So we always pass a folder, found in
this order: the models.yaml entry's `config` (a diffusers folder), a diffusers model of the same
family and shape named in models.yaml, the family's reference repository in a local Hugging Face
cache, and last a minimal configuration for the family written here (the architectures are fixed;
the tokenizer is the CLIP vocabulary, taken from any local copy). The family comes from the keys.
.ckpt files are read with torch.load(weights_only=True), here and in diffusers.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invokeai_ti.errors import ModelError
from invokeai_ti.invokeai.model_source import ModelSource, read_models_yaml
from invokeai_ti.invokeai.registry import read_main_models
from invokeai_ti.invokeai.root import find_root
from invokeai_ti.models.single_file_configs import BUNDLED, REFERENCE_REPOS, write_bundled_config

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
# One key that only each family's text encoder layout has (LDM / SGM checkpoint naming).
TEXT_KEYS = {
    "sdxl": "conditioner.embedders.1.model.positional_embedding",
    "sd-2": "cond_stage_model.model.token_embedding.weight",
    "sd-1": "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
}
SDXL_CLIP_L_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
SDXL_CLIP_G_KEY = "conditioner.embedders.1.model.token_embedding.weight"


@dataclass(frozen=True)
class Geometry:
    """What a config folder must agree with: family, UNet input channels and context width, and
    the text encoders' token dimensions."""

    family: str
    in_channels: int
    cross_attention_dim: int
    token_dims: tuple[int, ...]


# --- reading the checkpoint ----------------------------------------------------------------------


def checkpoint_shapes(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape, from the safetensors header or a weights-only, memory-mapped torch.load."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{what} is not a readable safetensors file ({exc}).") from exc
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on foreign bytes
        raise ModelError(
            f"{what} cannot be read with torch.load(weights_only=True): it is damaged, not a "
            "PyTorch file, or pickles Python objects besides tensors (never unpickled here, a file "
            "could run code). Convert it to .safetensors, or use a diffusers folder."
        ) from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{what} does not hold a state dict of a Stable Diffusion model.")
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def detect_geometry(shapes: dict[str, tuple[int, ...]], what: str) -> Geometry:
    """The family from which text encoder layout the keys use; sizes from the UNet's shapes."""
    family = next((name for name, key in TEXT_KEYS.items() if key in shapes), None)
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    context = [
        s[1]
        for k, s in shapes.items()
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")
    ]
    if family is None or conv_in is None or not context:
        if "conditioner.embedders.0.model.token_embedding.weight" in shapes:
            reason = "an SDXL refiner (its only text encoder is OpenCLIP-G): train on the SDXL base"
        else:
            reason = "not an SD1, SD2 or SDXL checkpoint with UNet and text encoder weights"
        raise ModelError(f"{what}: {reason}.")
    if family == "sdxl":
        dims = (shapes[SDXL_CLIP_L_KEY][1], shapes[SDXL_CLIP_G_KEY][1])
    else:
        dims = (shapes[TEXT_KEYS[family]][1],)
    return Geometry(family, conv_in[1], context[0], dims)


# --- finding a config folder ---------------------------------------------------------------------


def folder_geometry(folder: Path) -> Geometry | None:
    """The same numbers for a diffusers folder, from its JSON configs; None if it is not one."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
        encoders = (
            ["text_encoder", "text_encoder_2"] if "text_encoder_2" in index else ["text_encoder"]
        )
        dims = tuple(
            json.loads((folder / name / "config.json").read_text())["hidden_size"]
            for name in encoders
        )
    except (OSError, ValueError, KeyError):
        return None
    family = "sdxl" if len(dims) == 2 else "sd-2" if unet.get("use_linear_projection") else "sd-1"
    return Geometry(family, unet.get("in_channels", 4), unet.get("cross_attention_dim", 1280), dims)


def _local_diffusers_folders(root: Path) -> Iterator[Path]:
    """Diffusers folders models.yaml or InvokeAI 4+'s database names, then the reference
    repositories in local HF caches."""
    for entry in read_models_yaml(root).values():
        if entry.get("format", "diffusers") == "diffusers" and entry.get("path"):
            path = Path(entry["path"]).expanduser()
            yield path if path.is_absolute() else root / path
    yield from (m.path for m in read_main_models(root) if m.format == "diffusers")
    yield from _cached_reference_repos(
        root, [r for repos in REFERENCE_REPOS.values() for r in repos]
    )


def _cached_reference_repos(root: Path, repos: list[str]) -> Iterator[Path]:
    from huggingface_hub import snapshot_download

    for repo in repos:
        for cache_dir in (root / "models", None):  # 2.3 kept its hub cache in ROOT/models
            try:
                yield Path(snapshot_download(repo, cache_dir=cache_dir, local_files_only=True))
            except Exception:  # noqa: BLE001 - any failure means "not in this cache"
                continue


def _yaml_prediction_type(config: Path) -> str | None:
    """An LDM inference .yaml (2.3's models.yaml `config`) says `parameterization: "v"` for 768-v."""
    import yaml

    try:
        params = yaml.safe_load(config.read_text())["model"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return "v_prediction" if params.get("parameterization") == "v" else "epsilon"


@contextmanager
def config_folder(source: ModelSource, root_dir: Path | None) -> Iterator[tuple[Path, str | None]]:
    """Yield (a local diffusers config folder that fits the checkpoint, prediction type or None)."""
    what = f"--model {source.name}"
    geometry = detect_geometry(checkpoint_shapes(source.path, what), what)
    prediction = source.prediction_type  # InvokeAI 4+'s record; a 2.3 .yaml config overrides it
    if source.config is not None and source.config.suffix.lower() in (".yaml", ".yml"):
        prediction = _yaml_prediction_type(source.config) or prediction
    elif source.config is not None:
        found = folder_geometry(source.config)
        if found is None:
            raise ModelError(
                f"{what}: its models.yaml config {source.config} is neither a diffusers folder nor "
                "an LDM .yaml: point `config:` at a diffusers folder of the same model type."
            )
        if found != geometry:
            raise ModelError(
                f"{what}: its models.yaml config {source.config} does not fit the checkpoint "
                f"(checkpoint: {_describe(geometry)}; config: {_describe(found)})."
            )
        yield source.config, prediction
        return
    root = find_root(root_dir)
    for folder in _local_diffusers_folders(root):
        if folder_geometry(folder) == geometry and (folder / "tokenizer").is_dir():
            log.info("Configuration for %s taken from %s.", source.path.name, folder)
            yield folder, prediction
            return
    if geometry.family in BUNDLED and _fits_bundled(geometry):
        with tempfile.TemporaryDirectory(prefix="invokeai-ti-config-") as tmp:
            folder = write_bundled_config(Path(tmp), geometry.family, _tokenizer_source(root))
            log.info(
                "Configuration for %s: the built-in %s layout.", source.path.name, geometry.family
            )
            yield folder, prediction
        return
    raise ModelError(
        f"{what} is an {geometry.family} checkpoint ({_describe(geometry)}) whose layout is not "
        "built in, and no local diffusers model of that shape was found offline: add "
        "`config: <a diffusers folder of the same model type>` to its models.yaml entry, or "
        "convert the file to a diffusers folder."
    )


def _fits_bundled(geometry: Geometry) -> bool:
    bundled = BUNDLED[geometry.family]
    return (
        geometry.in_channels == bundled["unet"].get("in_channels", 4)
        and geometry.cross_attention_dim == bundled["unet"]["cross_attention_dim"]
        and geometry.token_dims == tuple(enc["hidden_size"] for enc in bundled["text_encoders"])
    )


def _describe(geometry: Geometry) -> str:
    dims = "+".join(str(d) for d in geometry.token_dims)
    return (
        f"{geometry.in_channels} input channels, context width {geometry.cross_attention_dim}, "
        f"token dimension {dims}"
    )


def _tokenizer_source(root: Path) -> Path | None:
    """Any local copy of the CLIP BPE vocabulary (every SD family uses the same one)."""
    for folder in _local_diffusers_folders(root):
        if (folder / "tokenizer" / "vocab.json").is_file():
            return folder / "tokenizer"
    for folder in _cached_reference_repos(root, ["openai/clip-vit-large-patch14"]):
        if (folder / "vocab.json").is_file():
            return folder
    return None


# --- loading -------------------------------------------------------------------------------------


def load_single_file_pipeline(source: ModelSource, root_dir: Path | None) -> Any:
    """The whole pipeline in fp32 (as stored; cast later), its scheduler's prediction type fixed
    from a 2.3 .yaml config when there is one."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    with config_folder(source, root_dir) as (folder, prediction):
        index = json.loads((folder / "model_index.json").read_text())
        is_xl = index.get("_class_name", "").startswith("StableDiffusionXL")
        pipeline_class = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
        if is_xl:
            extra = {"add_watermarker": False}
        else:
            extra = {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipe = pipeline_class.from_single_file(
                str(source.path), config=str(folder), local_files_only=True, **extra
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            raise ModelError(
                f"--model {source.name}: diffusers could not load {source.path.name} with the "
                f"configuration in {folder} ({reason})."
            ) from exc
    if prediction is not None:
        pipe.scheduler.register_to_config(prediction_type=prediction)
    return pipe
