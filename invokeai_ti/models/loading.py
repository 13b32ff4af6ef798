"""Load a resolved model source into frozen components with dtype, device and attention set."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from invokeai_ti.config import TrainingConfig
from invokeai_ti.errors import ModelError, UserError
from invokeai_ti.invokeai.families import BASE_BY_DIM
from invokeai_ti.invokeai.model_source import ModelSource
from invokeai_ti.models import weights
from invokeai_ti.models.tokenizers import load_tokenizers

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The frozen model parts a run needs; `vae` is None once latents are cached."""

    tokenizers: list[Any]  # one per text encoder (two for SDXL)
    text_encoders: list[torch.nn.Module]
    vae: torch.nn.Module | None
    unet: torch.nn.Module
    noise_scheduler: Any
    family: str  # "sd-1", "sd-2" or "sdxl"
    source: ModelSource
    weight_dtype: torch.dtype
    device: torch.device

    @property
    def token_dims(self) -> list[int]:
        return [enc.get_input_embeddings().weight.shape[1] for enc in self.text_encoders]

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def weight_dtype_for(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Frozen weights in half precision when asked; fp16 only where it runs (a GPU)."""
    if mixed_precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError(
                "--mixed_precision bf16: this GPU has no bfloat16 support (it came with Ampere): "
                "use --mixed_precision fp16 or no."
            )
        return torch.bfloat16
    if mixed_precision == "fp16" and device.type != "cpu":
        return torch.float16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX); without it PyTorch emulates
    bf16 (convolutions fall back to its slow reference kernel)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def load_components(
    config: TrainingConfig, source: ModelSource, device: torch.device
) -> Components:
    """Load tokenizer(s), text encoder(s), VAE, UNet and the DDPM training scheduler, all frozen."""
    dtype = weight_dtype_for(config.mixed_precision, device)
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        # Measured on an AVX2-only CPU: an SD1.5 UNet step at 128 px took 4x as long in bf16.
        log.warning("--mixed_precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so "
                    "training will be several times slower than fp32 (it still halves the memory of "
                    "the frozen weights); use --mixed_precision no for speed.")  # fmt: skip
    if not config.debug:  # a loading bar would put lines on stderr before a one-line error
        import diffusers.utils.logging
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()
    load = _load_single_file if source.kind == "single_file" else _load_folder
    tokenizers, encoders, unet, vae, noise_scheduler = load(source, config, dtype)
    for module in (*encoders, unet, vae):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    family = "sdxl" if len(encoders) == 2 else _family_of(encoders[0])
    if source.base and source.base != family:
        raise ModelError(
            f"--model {source.name} is registered as {source.base} but the loaded model is {family}: "
            "fix the model's base in InvokeAI or pick another model."
        )
    components = Components(
        tokenizers=tokenizers,
        text_encoders=encoders,
        vae=vae,
        unet=unet,
        noise_scheduler=noise_scheduler,
        family=family,
        source=dataclasses.replace(source, base=family),  # exports name the family checked here
        weight_dtype=dtype,
        device=device,
    )
    set_attention(components, config.enable_xformers_memory_efficient_attention)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for encoder in encoders:
            # Non-reentrant: the gradient reaches the vectors whatever requires grad at a layer's
            # input.
            encoder.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        for module in (unet, *encoders):
            train_mode_without_dropout(module)
    return components


def train_mode_without_dropout(module: torch.nn.Module) -> None:
    """transformers recomputes a layer in the backward pass only in training mode (older diffusers
    releases did so too). The only thing training mode changes in these frozen models is dropout, so
    it is set to 0 first: every SD model ships 0, and a frozen model must not add noise."""
    for child in module.modules():
        if isinstance(getattr(child, "dropout", None), float):
            child.dropout = 0.0
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0
    module.train()


def _load_folder(source: ModelSource, config: TrainingConfig, dtype: torch.dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = source.path
    _check_pipeline_folder(folder, source.name)
    kwargs = dict(local_files_only=True)
    try:
        tokenizers, encoders = load_text_side(folder, config, dtype)
        # Converted tensor by tensor when the stored dtype differs (see weights.py: the UNet is
        # most of the model, and from_pretrained's conversion held the file's copy too).
        unet = weights.load_diffusers_model(UNet2DConditionModel, folder / "unet", dtype)
        if unet is None:
            unet = UNet2DConditionModel.from_pretrained(
                folder, subfolder="unet", torch_dtype=dtype, **kwargs
            )
        # The VAE stays fp32: it only runs to fill the latent cache, and SD VAEs overflow in fp16.
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs)
        noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"--model {source.name}: could not load the diffusers pipeline in {folder} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Reinstall the model."
        ) from exc
    return tokenizers, encoders, unet, vae, noise_scheduler


def _load_single_file(source: ModelSource, config: TrainingConfig, dtype: torch.dtype):
    from diffusers import DDPMScheduler

    from invokeai_ti.models.single_file import load_single_file_pipeline

    pipe = load_single_file_pipeline(source, config.root_dir)
    is_xl = hasattr(pipe, "text_encoder_2")
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if is_xl else [pipe.tokenizer]
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if is_xl else [pipe.text_encoder]
    # Loaded in the file's own precision: cast to the training dtype (the VAE to fp32, as above).
    unet = pipe.unet if pipe.unet.dtype == dtype else pipe.unet.to(dtype)
    encoders = [enc if enc.dtype == dtype else enc.to(dtype) for enc in encoders]
    vae = pipe.vae if pipe.vae.dtype == torch.float32 else pipe.vae.to(torch.float32)
    return tokenizers, encoders, unet, vae, DDPMScheduler.from_config(pipe.scheduler.config)


def load_pipeline(config: TrainingConfig, source: ModelSource) -> Any:
    """The whole diffusers pipeline (for saving a full pipeline with the new tokens), offline."""
    if source.kind == "single_file":
        from invokeai_ti.models.single_file import load_single_file_pipeline

        return load_single_file_pipeline(source, config.root_dir)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(source.path), local_files_only=True)


def load_text_side(folder: Path, config: TrainingConfig, dtype: torch.dtype | None):
    """The tokenizer(s) and text encoder(s) of a diffusers folder (dtype None: as stored)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    kwargs = dict(local_files_only=True)
    tokenizers = load_tokenizers(folder, config.tokenizer_name)
    encoders = [
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype, **kwargs)
    ]
    if (folder / "text_encoder_2").is_dir():
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", torch_dtype=dtype, **kwargs
            )
        )
    return tokenizers, encoders


def _family_of(text_encoder: torch.nn.Module) -> str:
    """SD2 uses OpenCLIP (gelu); SD1 uses OpenAI CLIP (quick_gelu). Tiny models keep that trait."""
    config = text_encoder.config
    if config.hidden_size in (768, 1024):
        return BASE_BY_DIM[config.hidden_size]
    return "sd-2" if config.hidden_act == "gelu" else "sd-1"


def _check_pipeline_folder(folder: Path, name: str) -> None:
    missing = [
        sub
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
        if not (folder / sub).is_dir()
    ]
    if missing:
        raise ModelError(
            f"--model {name}: {folder} is not a complete diffusers pipeline "
            f"(missing {', '.join(missing)}): install the model again or pick another one."
        )


def set_attention(components: Components, xformers: bool) -> None:
    """PyTorch SDPA is diffusers' default; xformers only when asked, installed and on CUDA."""
    if not xformers:
        return
    if importlib.util.find_spec("xformers") is None:
        raise UserError(
            "--enable_xformers_memory_efficient_attention: xformers is not installed; "
            "`pip install xformers` or leave the flag out (PyTorch SDPA is used)."
        )
    if components.device.type != "cuda":
        raise UserError(
            "--enable_xformers_memory_efficient_attention needs a CUDA GPU; leave the flag out on "
            f"{components.device.type}."
        )
    components.unet.enable_xformers_memory_efficient_attention()
