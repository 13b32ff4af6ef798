"""Single-file checkpoints: the tiny models converted to the original LDM / SGM layout, loaded back
offline through diffusers' from_single_file, bit-exact; and the errors when they cannot be."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS
from safetensors.torch import load_file, save_file

# --- a test-side converter: diffusers folder -> one LDM-layout state dict --------------------------

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _unet_prefixes(config: dict) -> list[tuple[str, str, dict]]:
    """(diffusers prefix, LDM prefix, renames inside) for every UNet block."""
    lpb, blocks = config["layers_per_block"], len(config["block_out_channels"])
    maps = [("time_embedding.linear_1", "time_embed.0", {}), ("time_embedding.linear_2", "time_embed.2", {}),
            ("add_embedding.linear_1", "label_emb.0.0", {}), ("add_embedding.linear_2", "label_emb.0.2", {}),
            ("conv_in", "input_blocks.0.0", {}), ("conv_norm_out", "out.0", {}), ("conv_out", "out.2", {}),
            ("mid_block.resnets.0", "middle_block.0", RESNET), ("mid_block.attentions.0", "middle_block.1", {}),
            ("mid_block.resnets.1", "middle_block.2", RESNET)]  # fmt: skip
    for i in range(blocks):
        for j in range(lpb):
            index = 1 + i * (lpb + 1) + j
            maps.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0", RESNET))
            maps.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{index}.1", {}))
        maps.append(
            (
                f"down_blocks.{i}.downsamplers.0.conv",
                f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op",
                {},
            )
        )
        has_attention = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(lpb + 1):
            index = i * (lpb + 1) + j
            maps.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0", RESNET))
            maps.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{index}.1", {}))
        last = i * (lpb + 1) + lpb
        maps.append(
            (
                f"up_blocks.{i}.upsamplers.0.conv",
                f"output_blocks.{last}.{2 if has_attention else 1}.conv",
                {},
            )
        )
    return maps


def _vae_prefixes(config: dict) -> list[tuple[str, str, dict]]:
    blocks = len(config["block_out_channels"])
    shortcut = {"conv_shortcut": "nin_shortcut"}
    maps = [
        ("encoder.conv_norm_out", "encoder.norm_out", {}),
        ("decoder.conv_norm_out", "decoder.norm_out", {}),
    ]
    for part in ("encoder", "decoder"):
        maps += [(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", shortcut),
                 (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", shortcut),
                 (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION)]  # fmt: skip
    for i in range(blocks):
        maps.append((f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block", shortcut))
        maps.append(
            (
                f"encoder.down_blocks.{i}.downsamplers.0.conv",
                f"encoder.down.{i}.downsample.conv",
                {},
            )
        )
        up = blocks - 1 - i  # the LDM decoder numbers its blocks from the lowest resolution up
        maps.append((f"decoder.up_blocks.{i}.resnets", f"decoder.up.{up}.block", shortcut))
        maps.append(
            (f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{up}.upsample.conv", {})
        )
    return maps


def _rename(state: dict, maps: list[tuple[str, str, dict]], prefix: str) -> dict:
    out = {}
    for key, value in state.items():
        match = max(
            (m for m in maps if key.startswith(m[0] + ".")), key=lambda m: len(m[0]), default=None
        )
        new = key
        if match is not None:
            rest = key[len(match[0]) + 1 :]
            for old, replacement in match[2].items():
                if rest.startswith(old + ".") or f".{old}." in "." + rest:
                    rest = rest.replace(old, replacement, 1)
            new = f"{match[1]}.{rest}"
        if match is not None and match[2] is VAE_ATTENTION and value.dim() == 2:
            value = value[:, :, None, None]  # the LDM VAE's attention uses 1x1 convolutions
        out[prefix + new] = value
    return out


def _openclip(state: dict, prefix: str) -> dict:
    """A transformers CLIP text model in OpenCLIP's naming (fused q/k/v, transposed projection)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight")}  # fmt: skip
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state.pop(src + f"self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
            for old, new in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[dst + f"{new}.{kind}"] = state.pop(src + f"{old}.{kind}")  # fmt: skip
    for kind in ("weight", "bias"):
        out[prefix + f"ln_final.{kind}"] = state.pop(f"final_layer_norm.{kind}")
    assert not state, sorted(state)
    return out


def _clip_l(state: dict, prefix: str) -> dict:
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state.items()}


def to_single_file(folder: Path) -> dict[str, torch.Tensor]:
    """The tiny diffusers model as one checkpoint in the original (LDM / SGM) key layout."""

    def part(name):
        config = json.loads((folder / name / "config.json").read_text())
        weights = next((folder / name).glob("*.safetensors"))
        return load_file(weights), config

    unet, unet_config = part("unet")
    vae, vae_config = part("vae")
    state = _rename(unet, _unet_prefixes(unet_config), "model.diffusion_model.")
    state.update(_rename(vae, _vae_prefixes(vae_config), "first_stage_model."))
    text, text_config = part("text_encoder")
    if (folder / "text_encoder_2").is_dir():
        state.update(_clip_l(text, "conditioner.embedders.0.transformer."))
        state.update(_openclip(part("text_encoder_2")[0], "conditioner.embedders.1.model."))
    elif text_config["hidden_act"] == "gelu":  # SD2's OpenCLIP-H
        state.update(_openclip(text, "cond_stage_model.model."))
    else:
        state.update(_clip_l(text, "cond_stage_model.transformer."))
    return state


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_file(tiny_sd1, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("single") / "tiny-sd1.safetensors"
    save_file(to_single_file(tiny_sd1), path)
    return path


def _load(model: str, root: Path):
    from invokeai_ti.config import TrainingConfig
    from invokeai_ti.invokeai.model_source import resolve_model
    from invokeai_ti.models.loading import load_components

    config = TrainingConfig(model=model, root_dir=root, placeholder_token="<t>")
    return load_components(config, resolve_model(config), torch.device("cpu"))


def _assert_same_weights(components, folder: Path) -> None:
    """Every UNet, VAE and text encoder tensor equals the diffusers folder's, bit for bit."""
    from diffusers import DiffusionPipeline

    reference = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pairs = [(components.unet, reference.unet), (components.vae, reference.vae),
             (components.text_encoders[0], reference.text_encoder)]  # fmt: skip
    if len(components.text_encoders) == 2:
        pairs.append((components.text_encoders[1], reference.text_encoder_2))
    for ours, theirs in pairs:
        mine, ref = ours.state_dict(), theirs.state_dict()
        ref = {k: v for k, v in ref.items() if not k.endswith("position_ids")}
        mine = {k: v for k, v in mine.items() if k in ref}
        assert set(mine) == set(ref), type(theirs).__name__
        for key in ref:
            assert torch.equal(mine[key], ref[key]), key
    assert (
        components.noise_scheduler.config.prediction_type
        == reference.scheduler.config.prediction_type
    )


def _write_yaml(root: Path, entries: dict) -> None:
    import yaml

    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "models.yaml").write_text(yaml.safe_dump(entries))


# --- tests ---------------------------------------------------------------------------------------


def test_safetensors_file_loads_bit_exact_with_a_local_diffusers_model_as_config(
    sd1_file, root, tiny_sd1
):
    """The `root` fixture's models.yaml names the tiny SD1 folder: it fits, so it is the config."""
    components = _load(str(sd1_file), root)
    assert components.family == "sd-1" and components.token_dims == [32]
    _assert_same_weights(components, tiny_sd1)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_files_load_bit_exact(family, request, tmp_path):
    folder = request.getfixturevalue(f"tiny_{family}")
    path = tmp_path / f"{family}.safetensors"
    save_file(to_single_file(folder), path)
    _write_yaml(
        tmp_path, {"m": {"format": "checkpoint", "weights": str(path), "config": str(folder)}}
    )
    components = _load("m", tmp_path)
    assert components.family == ("sdxl" if family == "sdxl" else "sd-2")
    _assert_same_weights(components, folder)


def test_ckpt_entry_in_models_yaml_trains_from_the_command_line(
    cli, sd1_file, tiny_sd1, root, tmp_path
):
    """A 2.3 models.yaml `format: ckpt` entry: weights .ckpt (nested state_dict), config .yaml."""
    ckpt = tmp_path / "tiny-sd1.ckpt"
    torch.save({"state_dict": load_file(sd1_file), "global_step": 470000}, ckpt)
    (root / "configs" / "v1-inference.yaml").write_text(
        "model:\n  params:\n    parameterization: eps\n"
    )
    _write_yaml(root, {"stable-diffusion-1.5": {"format": "diffusers", "path": str(tiny_sd1)},
                       "sd15-ckpt": {"format": "ckpt", "weights": str(ckpt),
                                     "config": "configs/v1-inference.yaml"}})  # fmt: skip
    out = tmp_path / "out"
    result = cli("--root_dir", root, "--model", "sd15-ckpt", "--placeholder_token", "<psychedelic>",
                 "--output_dir", out, *TINY_FLAGS, "--max_train_steps", "2",
                 "--export_format", "a1111")  # fmt: skip
    assert result.code == 0, result.err
    pt = torch.load(out / "psychedelic.pt", weights_only=True)
    assert pt["string_to_param"]["*"].shape == (1, 32) and pt["step"] == 2
    # A1111 names the model by its short hash: the first 10 hex digits of the file's sha256.
    assert pt["sd_checkpoint"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]
    assert pt["sd_checkpoint_name"] == "tiny-sd1"


def test_yaml_config_sets_v_prediction(sd1_file, tmp_path):
    """2.3's v2-inference-v.yaml says `parameterization: "v"`; the scheduler must follow it."""
    import invokeai_ti.models.single_file_configs as bundled

    (tmp_path / "v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    _write_yaml(tmp_path, {"m": {"format": "ckpt", "weights": str(sd1_file), "config": "v.yaml"}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(bundled.BUNDLED, "sd-1", _tiny_layout("sd-1"))
        components = _load("m", tmp_path)
    assert components.prediction_type == "v_prediction"


def _tiny_layout(family: str) -> dict:
    """The built-in layout entry with the tiny model's numbers, to exercise the built-in path."""
    from invokeai_ti.models.tiny import build_pipeline

    pipe = build_pipeline({"sd-1": "sd1", "sdxl": "sdxl"}[family])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    return {
        "pipeline": type(pipe).__name__,
        "unet": {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")},
        "vae": {k: v for k, v in pipe.vae.config.items() if not k.startswith("_")},
        "text_encoders": [enc.config.to_diff_dict() for enc in encoders],
        "scheduler": {**pipe.scheduler.config, "_class_name": type(pipe.scheduler).__name__},
    }


def test_built_in_layout_loads_without_any_local_model(sd1_file, tiny_sd1, tmp_path):
    """No models.yaml, no config, no hub cache: the family's built-in layout (here patched to the
    tiny model's numbers) and the CLIP vocabulary from clip-anytorch are enough."""
    import invokeai_ti.models.single_file_configs as bundled

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(bundled.BUNDLED, "sd-1", _tiny_layout("sd-1"))
        components = _load(str(sd1_file), tmp_path / "empty-root")
    _assert_same_weights(components, tiny_sd1)
    assert components.tokenizers[0].encode("a photo") == [49406, 320, 1125, 49407]


def test_unknown_layout_without_config_is_one_clear_line(cli, sd1_file, tmp_path):
    result = cli("--root_dir", tmp_path, "--model", sd1_file, "--placeholder_token", "<x>",
                 *TINY_FLAGS, "--train_data_dir", tmp_path)  # fmt: skip
    assert result.code == 2
    assert "is an sd-1 checkpoint" in result.err and "config: <a diffusers folder" in result.err
    assert "Traceback" not in result.err


def test_mismatched_config_folder_is_refused(sd1_file, tiny_sd2, tmp_path):
    from invokeai_ti.errors import ModelError

    _write_yaml(
        tmp_path, {"m": {"format": "ckpt", "weights": str(sd1_file), "config": str(tiny_sd2)}}
    )
    with pytest.raises(ModelError, match="does not fit the checkpoint"):
        _load("m", tmp_path)


class Callback:  # stands for the PyTorch Lightning objects some .ckpt files pickle
    pass


def test_unsafe_or_foreign_files_are_refused(cli, tmp_path):
    pickled = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": Callback()}, pickled)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, lora)
    for path, message in ((pickled, "cannot be read with torch.load(weights_only=True)"),
                          (lora, "not an SD1, SD2 or SDXL checkpoint")):  # fmt: skip
        result = cli("--root_dir", tmp_path, "--model", path, "--placeholder_token", "<x>",
                     *TINY_FLAGS, "--train_data_dir", tmp_path)  # fmt: skip
        assert result.code == 2 and message in result.err, result.err
        assert "Traceback" not in result.err


def test_built_in_layouts_are_the_published_architectures():
    """Parameter counts of SD 1.5, SD 2.1 and SDXL base, built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from invokeai_ti.models.single_file_configs import BUNDLED

    def count(module):
        return sum(p.numel() for p in module.parameters())

    expected = {"sd-1": (859_520_964, [123_060_480]), "sd-2": (865_910_724, [340_387_840]),
                "sdxl": (2_567_463_684, [123_060_480, 694_659_840])}  # fmt: skip
    for family, (unet_params, encoder_params) in expected.items():
        spec = BUNDLED[family]
        with init_empty_weights():
            assert count(UNet2DConditionModel.from_config(spec["unet"])) == unet_params
            assert count(AutoencoderKL.from_config(spec["vae"])) == 83_653_863
            classes = [CLIPTextModel, CLIPTextModelWithProjection]
            counts = [
                count(cls(CLIPTextConfig(**enc)))
                for cls, enc in zip(classes, spec["text_encoders"])
            ]
        assert counts == encoder_params, family
