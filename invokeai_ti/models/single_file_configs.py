"""Built-in diffusers configurations of the SD1, SD2 (768-v) and SDXL base architectures, so a
single-file checkpoint loads offline when no local diffusers model of its family exists.

Only the values that differ from the diffusers / transformers class defaults are listed; the
architectures are fixed by the published models (tests check the parameter counts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from invokeai_ti.errors import ModelError, UserError

# Where diffusers keeps each family's configuration on the hub; a local cache of one is used first.
REFERENCE_REPOS = {
    "sd-1": ["stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"],
    "sd-2": ["stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2"],
    "sdxl": ["stabilityai/stable-diffusion-xl-base-1.0"],
}

_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 num_train_timesteps=1000, steps_offset=1, set_alpha_to_one=False,
                 timestep_spacing="leading")  # fmt: skip
# The real CLIP configs keep OpenAI's legacy token ids (eos 2 selects argmax pooling).
_CLIP = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
             pad_token_id=1, layer_norm_eps=1e-5)  # fmt: skip
CLIP_L = dict(_CLIP, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
              num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768)  # fmt: skip
OPENCLIP_H = dict(_CLIP, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                  num_hidden_layers=23, hidden_act="gelu", projection_dim=512)  # fmt: skip
OPENCLIP_G = dict(_CLIP, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                  num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)  # fmt: skip
_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2)  # fmt: skip

BUNDLED: dict[str, dict[str, Any]] = {
    "sd-1": {
        "pipeline": "StableDiffusionPipeline",
        "unet": dict(sample_size=64, cross_attention_dim=768),
        "vae": dict(_VAE, sample_size=512, scaling_factor=0.18215),
        "text_encoders": [CLIP_L],
        "scheduler": dict(
            _SCHEDULE, _class_name="PNDMScheduler", prediction_type="epsilon", skip_prk_steps=True
        ),  # fmt: skip
    },
    "sd-2": {  # SD 2.x 768-v, the common SD2 checkpoint; a 2.3 .yaml config can say epsilon
        "pipeline": "StableDiffusionPipeline",
        "unet": dict(
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=[5, 10, 20, 20],
            use_linear_projection=True,
        ),  # fmt: skip
        "vae": dict(_VAE, sample_size=768, scaling_factor=0.18215),
        "text_encoders": [OPENCLIP_H],
        "scheduler": dict(
            _SCHEDULE,
            _class_name="PNDMScheduler",
            prediction_type="v_prediction",
            skip_prk_steps=True,
        ),  # fmt: skip
    },
    "sdxl": {
        "pipeline": "StableDiffusionXLPipeline",
        "unet": dict(
            sample_size=128,
            cross_attention_dim=2048,
            block_out_channels=[320, 640, 1280],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10],
            attention_head_dim=[5, 10, 20],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),  # fmt: skip
        "vae": dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        "text_encoders": [CLIP_L, OPENCLIP_G],
        "scheduler": dict(
            _SCHEDULE, _class_name="EulerDiscreteScheduler", prediction_type="epsilon"
        ),  # fmt: skip
    },
}


def write_bundled_config(target: Path, family: str, tokenizer_source: Path | None) -> Path:
    """A diffusers folder holding only configs and tokenizers: what from_single_file needs."""
    spec = BUNDLED[family]
    is_xl = family == "sdxl"
    index = {
        "_class_name": spec["pipeline"],
        "scheduler": ["diffusers", spec["scheduler"]["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if is_xl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"],
                     force_zeros_for_empty_prompt=True)  # fmt: skip
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None],
                     requires_safety_checker=False)  # fmt: skip
    _write_json(target / "model_index.json", index)
    _write_json(
        target / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **spec["unet"]}
    )
    _write_json(target / "vae" / "config.json", {"_class_name": "AutoencoderKL", **spec["vae"]})
    _write_json(target / "scheduler" / "scheduler_config.json", spec["scheduler"])
    names = ["text_encoder", "text_encoder_2"][: len(spec["text_encoders"])]
    architectures = ["CLIPTextModel", "CLIPTextModelWithProjection"]
    for name, architecture, encoder in zip(names, architectures, spec["text_encoders"]):
        _write_json(target / name / "config.json",
                    {"architectures": [architecture], "model_type": "clip_text_model", **encoder})  # fmt: skip
    # SD2 and SDXL's second tokenizer pad with "!"; the vocabulary is CLIP's in every family.
    pads = ["!"] if family == "sd-2" else ["<|endoftext|>", "!"][: len(names)]
    for name, pad in zip(["tokenizer", "tokenizer_2"], pads):
        _write_tokenizer(target / name, tokenizer_source, pad)
    return target


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _write_tokenizer(folder: Path, source: Path | None, pad_token: str) -> None:
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            from invokeai_ti.models.tiny import write_clip_tokenizer_files

            try:
                source = write_clip_tokenizer_files(Path(tmp))
            except UserError as exc:
                raise ModelError(
                    "no local copy of the CLIP tokenizer was found (no diffusers model in "
                    "models.yaml, no openai/clip-vit-large-patch14 in the Hugging Face cache, no "
                    "clip-anytorch package): `pip install --no-deps clip-anytorch` or install any "
                    "diffusers model, then try again."
                ) from exc
        tokenizer = CLIPTokenizer.from_pretrained(
            str(source), pad_token=pad_token, model_max_length=77
        )
        tokenizer.save_pretrained(str(folder))
