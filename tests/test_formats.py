"""Output layouts read back by independent readers (diffusers' loader, A1111's documented dict,
InvokeAI's identification rules), --inspect, --init_embedding and token-dimension checks."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS
from safetensors.torch import load_file, save_file

from invokeai_ti.config import TrainingConfig
from invokeai_ti.files import export

# InvokeAI's base-model probe for embedding files, written from its documented rules (not our
# formats.py): string_to_param, emb_params and clip_g by shape[-1], any other dict by the first
# tensor's shape[0].
INVOKEAI_BASE = {768: "sd-1", 1024: "sd-2", 1280: "sdxl"}


def invokeai_base(path: Path) -> str | None:
    data = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    if "string_to_token" in data:
        dim = list(data["string_to_param"].values())[0].shape[-1]
    elif "emb_params" in data:
        dim = data["emb_params"].shape[-1]
    elif "clip_g" in data:
        dim = data["clip_g"].shape[-1]
    else:
        dim = list(data.values())[0].shape[0]
    return INVOKEAI_BASE.get(dim)


def _vectors(dims: tuple[int, ...], n: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=generator) for d in dims]


FAMILIES = {"sd-1": (768,), "sd-2": (1024,), "sdxl": (768, 1280)}


@pytest.mark.parametrize("num_vectors", [1, 3])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_invokeai_loadable_file_is_identified_as_its_base(tmp_path, family, num_vectors):
    """Real widths (768 / 1024 / 768+1280) built directly: the tiny models are narrower."""
    vectors = _vectors(FAMILIES[family], num_vectors)
    root, out = tmp_path / "root", tmp_path / "out"
    config = TrainingConfig(placeholder_token="<my-thing>", root_dir=root, output_dir=out,
                            num_vectors=num_vectors, export_format=["diffusers", "a1111", "comfyui"],
                            comfyui_embeddings_dir=tmp_path / "comfy")  # fmt: skip
    files = export.save_final_embeds(config, vectors, trained_steps=7)
    invokeai_loadable = [files.invokeai_copy, *files.others]
    invokeai_loadable = [p for p in invokeai_loadable if "learned_embeds_clip" not in p.name]
    if num_vectors == 1 or family == "sdxl":  # 1-D {token: [dim]} or clip_l/clip_g
        invokeai_loadable.append(files.embeds_bin or files.embeds_safetensors)
    assert len(invokeai_loadable) >= 5
    for path in invokeai_loadable:
        assert invokeai_base(path) == family, path
    # Only the InvokeAI-loadable layout goes into ROOT/embeddings/<trigger>/, one file alone.
    copied = sorted((root / "embeddings" / "my-thing").iterdir())
    assert copied == [files.invokeai_copy]
    if num_vectors > 1 and family != "sdxl":
        assert load_file(files.invokeai_copy)["emb_params"].shape == (
            num_vectors,
            vectors[0].shape[1],
        )


def test_exports_load_in_diffusers_and_a1111_layouts_and_comfyui_folder(
    cli, root, tiny_sd1, tmp_path
):
    """One CLI run with every --export_format; each file read back by diffusers' own loader."""
    from diffusers import StableDiffusionPipeline

    comfy = tmp_path / "ComfyUI" / "models" / "embeddings"
    out = root / "text-inversion-output" / "psychedelic"
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
                 "--max_train_steps", "2", "--num_vectors", "2", "--export_format", "diffusers",
                 "--export_format", "a1111", "--export_format", "comfyui",
                 "--comfyui_embeddings_dir", comfy)  # fmt: skip
    assert result.code == 0, result.err
    learned = torch.load(out / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
    assert learned.shape == (2, 32)
    # A1111's documented .pt layout, field by field.
    pt = torch.load(out / "psychedelic.pt", weights_only=True)
    assert set(pt) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint",
                       "sd_checkpoint_name"}  # fmt: skip
    assert pt["string_to_token"] == {"*": 265} and pt["name"] == "psychedelic" and pt["step"] == 2
    assert torch.equal(pt["string_to_param"]["*"], learned)
    assert pt["sd_checkpoint"] is None and pt["sd_checkpoint_name"] == "stable-diffusion-1.5"
    assert torch.equal(load_file(out / "psychedelic.safetensors")["emb_params"], learned)
    # ComfyUI gets the same two files in its own folder.
    assert torch.equal(
        torch.load(comfy / "psychedelic.pt", weights_only=True)["string_to_param"]["*"], learned
    )
    assert torch.equal(load_file(comfy / "psychedelic.safetensors")["emb_params"], learned)
    # diffusers reads the {token: tensor}, string_to_param and emb_params layouts itself.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, local_files_only=True)
    for path, token in ((out / "learned_embeds.bin", None), (out / "learned_embeds.safetensors", "<a>"),
                        (out / "psychedelic.pt", "<b>"), (comfy / "psychedelic.safetensors", "<c>")):  # fmt: skip
        pipe.load_textual_inversion(str(path), token=token)
        name = token or "<psychedelic>"
        ids = pipe.tokenizer.convert_tokens_to_ids([name, f"{name}_1"])
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], learned), path
    assert "Also written:" in result.out and str(comfy / "psychedelic.pt") in result.out


def test_single_vector_diffusers_file_stays_1d_and_the_sd1_copy_is_learned_embeds_bin(tmp_path):
    vectors = _vectors((768,), 1)
    config = TrainingConfig(placeholder_token="<one>", root_dir=tmp_path, output_dir=tmp_path / "o")
    files = export.save_final_embeds(config, vectors, 3)
    assert torch.load(files.embeds_bin, weights_only=True)["<one>"].shape == (768,)
    assert files.invokeai_copy == tmp_path / "embeddings" / "one" / "learned_embeds.bin"
    assert files.main == files.embeds_bin and files.others == []


# --- --inspect ------------------------------------------------------------------------------------


def _write_examples(folder: Path) -> dict[str, Path]:
    """One file per supported layout, at real widths."""
    sd1, sd2 = _vectors((768,), 3), _vectors((1024,), 1)
    xl = _vectors((768, 1280), 2)
    config = TrainingConfig(placeholder_token="<ex>", root_dir=folder, output_dir=folder / "out",
                            export_format=["diffusers", "a1111"])  # fmt: skip
    export.save_final_embeds(config, sd1, trained_steps=120)
    xl_config = TrainingConfig(placeholder_token="<xl>", root_dir=folder, output_dir=folder / "xl",
                               export_format=["diffusers"])  # fmt: skip
    export.save_final_embeds(xl_config, xl, trained_steps=40)
    torch.save({"<old>": sd2[0][0]}, folder / "learned_embeds.bin")  # InvokeAI 2.3 / HF concept
    return {
        "a1111_pt": folder / "out" / "ex.pt",
        "a1111_st": folder / "out" / "ex.safetensors",
        "diffusers_multi": folder / "out" / "learned_embeds.bin",
        "sdxl": folder / "xl" / "learned_embeds.safetensors",
        "sdxl_clip_g": folder / "xl" / "learned_embeds_clip_g.safetensors",
        "invokeai23": folder / "learned_embeds.bin",
    }


def test_inspect_describes_every_layout(cli, tmp_path):
    files = _write_examples(tmp_path)
    expected = {
        "a1111_pt": ["A1111 .pt", "ex", "vectors:       3", "dimension:     768", "SD1",
                     "identifies it as sd-1", "training step: 120"],
        "a1111_st": ["A1111 .safetensors (emb_params)", "vectors:       3", "SD1", "step: 120"],
        "diffusers_multi": ["diffusers", "<ex>", "vectors:       3", "768", "SD1",
                            "would misread it as token dimension 3", "not stored"],
        "sdxl": ["SDXL (clip_l + clip_g)", "<xl>", "vectors:       2",
                 "clip_l 768, clip_g 1280", "family:  SDXL", "identifies it as sdxl", "step: 40"],
        "sdxl_clip_g": ["diffusers", "1280", "training step: 40"],
        "invokeai23": ["<old>", "vectors:       1", "1024", "SD2", "identifies it as sd-2"],
    }  # fmt: skip
    for name, path in files.items():
        result = cli("--inspect", path)
        assert result.code == 0, (name, result.err)
        for fragment in expected[name]:
            assert fragment in result.out, (name, fragment, result.out)


class _Foreign:  # a pickled class: torch.load(weights_only=True) must refuse it
    pass


def test_inspect_refuses_foreign_files_in_one_line(cli, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a tensor file at all" * 10)
    pickled = tmp_path / "pickled.pt"
    torch.save({"x": _Foreign()}, pickled)
    model = tmp_path / "model.safetensors"
    save_file({f"model.diffusion_model.w{i}": torch.zeros(1) for i in range(100)}, model)
    odd = tmp_path / "odd.pt"
    torch.save({"a": torch.zeros(3, 4), "b": torch.zeros(2, 4)}, odd)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    cases = {
        garbage: "is not a PyTorch or safetensors embedding file",
        pickled: "holds Python objects other than tensors",
        model: "holds 100 tensors",
        odd: "is not an embedding file this tool knows",
        empty: "is not a readable safetensors file",
        tmp_path / "missing.pt": "does not exist",
        tmp_path: "is a folder, not an embedding file",
    }
    for path, message in cases.items():
        result = cli("--inspect", path)
        assert result.code == 2, path
        assert message in result.err and "Traceback" not in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1, result.err


def test_weights_only_reader_never_unpickles_code(tmp_path):
    """The file would run code if unpickled; reading it must refuse before that."""
    from invokeai_ti.errors import UserError
    from invokeai_ti.files.formats import read_embedding

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    path = tmp_path / "evil.pt"
    torch.save({"<t>": torch.zeros(4), "x": Payload()}, path, pickle_module=pickle)
    with pytest.raises(UserError):
        read_embedding(path)
    assert not marker.exists()


# --- --init_embedding and token-dimension checks --------------------------------------------------


def test_init_embedding_sets_the_starting_vectors_of_any_format(root, tmp_path):
    from invokeai_ti.front.cli import parse_config
    from invokeai_ti.invokeai.root import apply_root_defaults
    from invokeai_ti.train.setup import setup

    start = _vectors((32,), 2, seed=3)[0]
    a1111 = tmp_path / "start.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": start}, "name": "s",
                "step": 9}, a1111)  # fmt: skip
    emb_params = tmp_path / "start.safetensors"
    save_file({"emb_params": start}, emb_params)
    for path in (a1111, emb_params):
        config, _ = parse_config(["--root_dir", str(root), "--placeholder_token", "<psychedelic>",
                                  *TINY_FLAGS, "--num_vectors", "2", "--init_embedding", str(path),
                                  "--dry_run"])  # fmt: skip
        run = setup(apply_root_defaults(config))
        assert torch.equal(run.placeholders[0].vectors.detach(), start)


def _sd1_args(root):
    return ["--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS]


def test_init_embedding_of_another_family_fails_before_reading_images(cli, root, tmp_path):
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"emb_params": torch.zeros(1, 1024)}, sd2)
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, xl)
    # --train_data_dir does not exist: the dimension error must come first.
    missing_images = ["--train_data_dir", tmp_path / "no-images"]
    result = cli(*_sd1_args(root), "--init_embedding", sd2, *missing_images)
    assert result.code == 2
    assert (f"--init_embedding {sd2} was trained on a model with token dimension 1024 (SD2), but "
            "the current model has token dimension 32 (SD1)") in result.err  # fmt: skip
    assert "768 SD1, 1024 SD2, 768+1280 SDXL" in result.err
    result = cli(*_sd1_args(root), "--init_embedding", xl, *missing_images)
    assert (
        "token dimension 768+1280 (SDXL), but the current model has token dimension 32"
        in result.err
    )
    assert "Traceback" not in result.err and result.err.count("error:") == 1


def test_init_embedding_vector_count_must_match(cli, root, tmp_path):
    path = tmp_path / "three.safetensors"
    save_file({"emb_params": torch.zeros(3, 32)}, path)
    result = cli(*_sd1_args(root), "--init_embedding", path)
    assert result.code == 2 and "holds 3 vector(s) per token but --num_vectors is 1" in result.err
    assert "--num_vectors 3" in result.err


def test_resume_from_a_checkpoint_of_another_family_fails_at_once(cli, root, tmp_path):
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    save_file({"vectors.0": torch.zeros(1, 1024)}, folder / "vectors.safetensors")
    (folder / "state.json").write_text(json.dumps({"progress": {"step": 10}, "config": {}}))
    result = cli(*_sd1_args(root), "--resume_from_checkpoint", folder,
                 "--train_data_dir", tmp_path / "no-images")  # fmt: skip
    assert result.code == 2
    assert (f"--resume_from_checkpoint {folder} was trained on a model with token dimension 1024 "
            "(SD2), but the current model has token dimension 32 (SD1)") in result.err  # fmt: skip


def test_checkpoint_folders_read_as_embeddings(tmp_path):
    from invokeai_ti.files.formats import read_embedding

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    tensors = OrderedDict({"vectors.1": torch.ones(2, 1280), "vectors.0": torch.zeros(2, 768),
                           "optimizer.0.exp_avg": torch.zeros(2, 768)})  # fmt: skip
    save_file(dict(tensors), folder / "vectors.safetensors")
    (folder / "state.json").write_text(json.dumps(
        {"progress": {"step": 4}, "config": {"placeholder_token": "<c>"}}))  # fmt: skip
    embedding = read_embedding(folder)
    assert embedding.dims == [768, 1280] and embedding.family == "SDXL"
    assert embedding.step == 4 and embedding.tokens == ["<c>"] and embedding.num_vectors == 2
