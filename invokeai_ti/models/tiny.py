"""Offline builder of random-weight SD1 / SD2 (v-prediction) / SDXL diffusers pipelines with the real
CLIP BPE.

`tiny` shapes make the tests and the quickstart fast; `sd15` shapes match Stable Diffusion 1.5 so the
benchmark measures real costs. Nothing is downloaded: the vocabulary comes from the `clip-anytorch`
package and the weights from a seeded generator.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from invokeai_ti.errors import UserError

FAMILIES = ("sd1", "sd2", "sdxl")
SHAPES = ("tiny", "sd15")


@lru_cache(maxsize=1)
def clip_bpe_path() -> Path:
    """The real CLIP merges file shipped inside clip-anytorch (installed with --no-deps)."""
    spec = importlib.util.find_spec("clip")
    for folder in spec.submodule_search_locations or [] if spec else []:
        candidate = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.is_file():
            return candidate
    raise UserError(
        "the CLIP vocabulary is missing: run `pip install --no-deps clip-anytorch` "
        "(it ships bpe_simple_vocab_16e6.txt.gz), then try again."
    )


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_clip_tokenizer_files(folder: Path) -> Path:
    """Write vocab.json and merges.txt of the 49,408-token CLIP vocabulary into `folder`."""
    lines = gzip.open(clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def load_clip_tokenizer(max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """SD2 and SDXL's second tokenizer pad with "!" instead of the end token; the vocabulary is the same."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_clip_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(
            str(folder), model_max_length=max_length, pad_token=pad_token
        )


def _text_encoder(family: str, shape: str, seed: int, openclip: bool = False):
    """CLIP-L (quick_gelu) for SD1 and SDXL's first encoder; OpenCLIP (gelu) for SD2 and SDXL's
    second, which also projects the pooled output (SDXL's `text_embeds`)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dims = {
        "tiny": dict(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2
        ),
        "sd15": dict(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12
        ),
    }[shape]
    if shape == "tiny" and family == "sd2":
        dims = dict(dims, hidden_size=48, intermediate_size=64)
    if shape == "tiny" and openclip and family == "sdxl":
        dims = dict(dims, hidden_size=64, intermediate_size=80)
    config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="gelu" if family == "sd2" or openclip else "quick_gelu",
        projection_dim=dims["hidden_size"],
        **dims,
    )
    torch.manual_seed(seed + (10 if openclip else 0))
    model_class = CLIPTextModelWithProjection if family == "sdxl" and openclip else CLIPTextModel
    return model_class(config).eval()


def _unet(family: str, shape: str, cross_attention_dim: int, seed: int, pooled_dim: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed + 1)
    if shape == "sd15":
        return UNet2DConditionModel(sample_size=64, cross_attention_dim=cross_attention_dim)
    if family == "sdxl":
        # SDXL's layout in miniature: no attention in the first block, two transformer layers in
        # the second, and the "text_time" added embedding (pooled text + 6 size/crop numbers).
        return UNet2DConditionModel(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=cross_attention_dim,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + pooled_dim,
            norm_num_groups=8,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4) if family == "sd2" else 8,
        use_linear_projection=family == "sd2",
        norm_num_groups=8,
    )


def _vae(shape: str, seed: int, scaling_factor: float = 0.18215):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 2)
    if shape == "sd15":
        widths = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
                  "sample_size": 512, "scaling_factor": 0.18215}  # fmt: skip
    else:  # four blocks keep SD's 8x downsampling, so resolutions behave as on a real model
        widths = {"block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 8,
                  "sample_size": 64, "scaling_factor": scaling_factor}  # fmt: skip
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        **widths,
    )


def build_pipeline(family: str = "sd1", shape: str = "tiny", seed: int = 0):
    """A StableDiffusion(XL)Pipeline with random weights; SD2 uses v-prediction like SD 2.x 768-v."""
    from diffusers import DDPMScheduler, PNDMScheduler, StableDiffusionPipeline

    if family not in FAMILIES or shape not in SHAPES:
        raise ValueError(f"family must be one of {FAMILIES} and shape one of {SHAPES}")
    if family == "sdxl":
        if shape != "tiny":
            raise ValueError("only the tiny SDXL shape is built offline")
        return _build_sdxl(seed)
    text_encoder = _text_encoder(family, shape, seed)
    prediction_type = "v_prediction" if family == "sd2" else "epsilon"
    schedule = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction_type,
    )
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1, **schedule)
    DDPMScheduler(**schedule)  # fail here, not in training, if the schedule is not DDPM-compatible
    return StableDiffusionPipeline(
        vae=_vae(shape, seed),
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        unet=_unet(family, shape, text_encoder.config.hidden_size, seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(seed: int):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline

    text_encoder = _text_encoder("sdxl", "tiny", seed)
    text_encoder_2 = _text_encoder("sdxl", "tiny", seed, openclip=True)
    width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    num_train_timesteps=1000, prediction_type="epsilon")  # fmt: skip
    DDPMScheduler(**schedule)
    return StableDiffusionXLPipeline(
        # SDXL's VAE scaling factor differs from SD1/2's: training must read it from the config.
        vae=_vae("tiny", seed, scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=load_clip_tokenizer(),
        tokenizer_2=load_clip_tokenizer(pad_token="!"),
        unet=_unet("sdxl", "tiny", width, seed, text_encoder_2.config.projection_dim),
        scheduler=EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading", **schedule),
        add_watermarker=False,
    )


def save_tiny_model(folder: Path, family: str = "sd1", shape: str = "tiny", seed: int = 0) -> Path:
    """Build and save a pipeline as a diffusers folder (safetensors weights); returns the folder."""
    build_pipeline(family, shape, seed).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_models_yaml(root: Path, models: dict[str, Path], default: str | None = None) -> Path:
    """An InvokeAI 2.3 ROOT/configs/models.yaml naming diffusers folders."""
    import yaml

    entries = {
        name: {
            "description": f"{name} (random weights)",
            "format": "diffusers",
            "path": str(path),
            **({"default": True} if name == default else {}),
        }
        for name, path in models.items()
    }
    target = root / "configs" / "models.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(entries, sort_keys=False))
    (root / "invokeai.init").touch()
    return target
