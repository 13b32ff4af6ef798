"""SDXL: both text encoders trained in one run, conditioned as the SDXL pipeline conditions, and the
outputs loaded back by diffusers' StableDiffusionXLPipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY_FLAGS
from safetensors.torch import load_file

XL_FLAGS = [*TINY_FLAGS, "--max_train_steps", "3", "--num_vectors", "2"]


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory, tiny_sdxl, concept_images):
    """One CLI training run on the tiny SDXL model, shared by the output checks below."""
    from invokeai_ti.front.cli import main

    base = tmp_path_factory.mktemp("sdxl-run")
    out, root = base / "out", base / "root"
    code = main(["--model", str(tiny_sdxl), "--placeholder_token", "<xl-disc>",
                 "--train_data_dir", str(concept_images), "--output_dir", str(out),
                 "--root_dir", str(root), *XL_FLAGS,
                 "--export_format", "diffusers", "--export_format", "a1111"])  # fmt: skip
    assert code == 0
    return out, root


def _initial_rows(model_dir, subfolder):
    """The frozen rows of '*' (the initializer) in one of the tiny model's text encoders."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(
        model_dir, subfolder=subfolder.replace("text_encoder", "tokenizer")
    )
    star = tokenizer.encode("*", add_special_tokens=False)[0]
    weights = load_file(model_dir / subfolder / "model.safetensors")
    table = next(v for k, v in weights.items() if k.endswith("token_embedding.weight"))
    return table[star]


def test_sdxl_trains_both_encoders_into_one_clip_l_clip_g_file(sdxl_run, tiny_sdxl):
    out, root = sdxl_run
    learned = load_file(out / "learned_embeds.safetensors")
    assert set(learned) == {"clip_l", "clip_g"}
    assert learned["clip_l"].shape == (2, 32) and learned["clip_g"].shape == (2, 64)
    # Both encoders' vectors moved away from the initializer '*' they started from.
    for key, subfolder in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
        start = _initial_rows(tiny_sdxl, subfolder)
        moved = (learned[key] - start).abs().max(dim=1).values
        assert (moved > 1e-4).all(), (key, moved)
    # Per-encoder diffusers files hold the same numbers as {token: [n, dim]}.
    assert torch.equal(
        load_file(out / "learned_embeds_clip_l.safetensors")["<xl-disc>"], learned["clip_l"]
    )
    assert torch.equal(
        load_file(out / "learned_embeds_clip_g.safetensors")["<xl-disc>"], learned["clip_g"]
    )
    # The InvokeAI copy is the clip_l/clip_g file, alone in its folder.
    copy_dir = root / "embeddings" / "xl-disc"
    assert sorted(p.name for p in copy_dir.iterdir()) == ["xl-disc.safetensors"]
    copy = load_file(copy_dir / "xl-disc.safetensors")
    assert torch.equal(copy["clip_l"], learned["clip_l"]) and torch.equal(
        copy["clip_g"], learned["clip_g"]
    )
    # A1111 / ComfyUI load SDXL embeddings from clip_l + clip_g in .pt and .safetensors.
    pt = torch.load(out / "xl-disc.pt", weights_only=True)
    assert (
        torch.equal(pt["clip_g"], learned["clip_g"]) and pt["step"] == 3 and pt["name"] == "xl-disc"
    )
    assert torch.equal(load_file(out / "xl-disc.safetensors")["clip_l"], learned["clip_l"])


def _tiny_image(pipe, prompt):
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=1, height=64, width=64, guidance_scale=1.0,
                output_type="np", generator=generator).images[0]  # fmt: skip


def test_diffusers_sdxl_pipeline_loads_the_files_and_the_token_changes_the_image(
    sdxl_run, tiny_sdxl
):
    from diffusers import StableDiffusionXLPipeline

    out, _ = sdxl_run
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)
    before = _tiny_image(pipe, "a photo of * *")  # what the untrained vectors ('*' x2) give
    pipe.load_textual_inversion(
        out / "learned_embeds_clip_l.safetensors",
        token="<xl-disc>",
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
    )
    pipe.load_textual_inversion(out / "learned_embeds_clip_g.safetensors", token="<xl-disc>",
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)  # fmt: skip
    learned = load_file(out / "learned_embeds.safetensors")
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):  # fmt: skip
        ids = tokenizer.convert_tokens_to_ids(["<xl-disc>", "<xl-disc>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], learned[key])
    after = _tiny_image(pipe, "a photo of <xl-disc>")
    assert float(abs(after - before).max()) > 1e-4
    # diffusers' documented recipe for the single clip_l/clip_g file (tensors passed directly)
    # puts the same rows into the encoders.
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):  # fmt: skip
        pipe.load_textual_inversion(learned[key], token="<xl-recipe>",
                                    text_encoder=encoder, tokenizer=tokenizer)  # fmt: skip
        ids = tokenizer.convert_tokens_to_ids(["<xl-recipe>", "<xl-recipe>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], learned[key])


def test_sdxl_conditioning_matches_the_pipeline_and_uses_the_vae_scaling_factor(
    tiny_sdxl, concept_images, tmp_path
):
    """What train_step feeds the UNet equals what StableDiffusionXLPipeline computes at inference
    (penultimate hidden states of both encoders, pooled projection, add_time_ids)."""
    from diffusers import StableDiffusionXLPipeline

    from invokeai_ti.front.cli import parse_config
    from invokeai_ti.invokeai.root import apply_root_defaults
    from invokeai_ti.models.placeholder import encode_prompts
    from invokeai_ti.train.setup import setup

    config, _ = parse_config(["--model", str(tiny_sdxl), "--placeholder_token", "<xl-disc>",
                              "--train_data_dir", str(concept_images), "--output_dir",
                              str(tmp_path / "out"), "--root_dir", str(tmp_path), *XL_FLAGS])  # fmt: skip
    run = setup(apply_root_defaults(dataclasses.replace(config)))
    c = run.components
    assert c.family == "sdxl" and c.token_dims == [32, 64]
    assert run.latent_source.scaling_factor == pytest.approx(0.13025)  # from the VAE config
    # The concept images are 80x72 (w x h), resized whole to 64: no crop.
    assert run.time_ids.tolist() == [[72.0, 80.0, 0.0, 0.0, 64.0, 64.0]] * 4
    with torch.no_grad():
        for placeholder in run.placeholders:  # make the new vectors distinct from any word
            placeholder.vectors.add_(torch.randn_like(placeholder.vectors))
        texts = [run.prompts.text(0, 0), run.prompts.text(0, 5)]
        hidden, added = encode_prompts(c, run.prompts.token_ids(texts, c.tokenizers, c.device),
                                       run.time_ids[:2])  # fmt: skip
        pipe = StableDiffusionXLPipeline(
            vae=None, text_encoder=c.text_encoders[0], text_encoder_2=c.text_encoders[1],
            tokenizer=c.tokenizers[0], tokenizer_2=c.tokenizers[1], unet=c.unet,
            scheduler=c.noise_scheduler, add_watermarker=False)  # fmt: skip
        from invokeai_ti.data.dataset import OBJECT_TEMPLATES

        prompts = [OBJECT_TEMPLATES[i].format("<xl-disc>") for i in (0, 5)]
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
        time_ids = pipe._get_add_time_ids((72, 80), (0, 0), (64, 64), torch.float32,
                                          text_encoder_projection_dim=64)  # fmt: skip
    assert torch.allclose(hidden, embeds, atol=1e-6)
    assert torch.allclose(added["text_embeds"], pooled, atol=1e-6)
    assert torch.equal(added["time_ids"][0], time_ids[0])


def test_sdxl_time_ids_follow_the_centre_crop():
    from invokeai_ti.models.placeholder import sdxl_time_ids

    # A 100 x 200 (h x w) image, centre-cropped to 100 x 100 (left offset 50) then resized to 64:
    # the crop starts 50 * 0.64 = 32 pixels from the left of the resized image.
    assert sdxl_time_ids([(100, 200)], 64, center_crop=True).tolist() == [[100, 200, 0, 32, 64, 64]]
    assert sdxl_time_ids([(300, 100)], 64, center_crop=True).tolist() == [[300, 100, 64, 0, 64, 64]]
    assert sdxl_time_ids([(100, 200)], 64, center_crop=False).tolist() == [[100, 200, 0, 0, 64, 64]]


def test_sdxl_full_pipeline_export_knows_the_token_in_both_encoders(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from invokeai_ti.config import TrainingConfig
    from invokeai_ti.files import pipeline
    from invokeai_ti.invokeai.model_source import ModelSource

    vectors = [torch.randn(2, 32), torch.randn(2, 64)]
    config = TrainingConfig(placeholder_token="<xl-disc>", output_dir=tmp_path / "pipe")
    source = ModelSource(path=tiny_sdxl, kind="diffusers", name="tiny-sdxl")
    pipeline.save_full_pipeline(config, source, ["<xl-disc>", "<xl-disc>_1"], vectors)
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    for tokenizer, encoder, expected in ((pipe.tokenizer, pipe.text_encoder, vectors[0]),
                                         (pipe.tokenizer_2, pipe.text_encoder_2, vectors[1])):  # fmt: skip
        ids = tokenizer.convert_tokens_to_ids(["<xl-disc>", "<xl-disc>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], expected)
