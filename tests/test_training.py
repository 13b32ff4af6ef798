"""The trainer end to end on the tiny models: outputs, loading in diffusers, SD2 v-prediction,
leaf vectors vs the full-matrix recipe, untouched rows, step bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS
from safetensors.torch import load_file

from invokeai_ti.data import dataset
from invokeai_ti.front.cli import parse_config
from invokeai_ti.invokeai.root import apply_root_defaults
from invokeai_ti.train.optimizer import build_lr_schedule
from invokeai_ti.train.setup import setup
from invokeai_ti.train.step import optimizer_step, train_step

# 2.3's objective and free vectors (today's defaults weight the loss by min-SNR and hold the norm).
PLAIN_23 = ("--min_snr_gamma", "0", "--embedding_norm", "free")


def _config(*argv: str):
    config, _ = parse_config([*TINY_FLAGS, *argv])
    config.validate()
    return apply_root_defaults(config)


def _render(pipe, prompt: str):
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=generator,
                output_type="np").images[0]  # fmt: skip


def test_result_loads_in_diffusers_and_changes_the_image(cli, root, tiny_sd1):
    from diffusers import StableDiffusionPipeline

    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
                 "--max_train_steps", "3")  # fmt: skip
    assert result.code == 0, result.err
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    before = _render(pipe, "a painting of <psychedelic>")
    pipe.load_textual_inversion(root / "embeddings" / "psychedelic" / "learned_embeds.bin")
    learned = torch.load(
        root / "embeddings" / "psychedelic" / "learned_embeds.bin", weights_only=True
    )
    token_id = pipe.tokenizer.convert_tokens_to_ids("<psychedelic>")
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    assert torch.allclose(row, learned["<psychedelic>"])
    after = _render(pipe, "a painting of <psychedelic>")
    assert abs(after - before).mean() > 1e-4


def test_learned_vector_moves_away_from_the_initializer(cli, root, tiny_sd1):
    assert cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS).code == 0
    learned = torch.load(root / "text-inversion-output/psychedelic/learned_embeds.bin",
                         weights_only=True)["<psychedelic>"]  # fmt: skip
    weights = load_file(tiny_sd1 / "text_encoder" / "model.safetensors")
    table = next(v for k, v in weights.items() if "token_embedding" in k)
    star = 9  # '*' in the CLIP vocabulary
    assert (learned - table[star]).abs().max() > 1e-3


def test_sd2_v_prediction_uses_the_velocity_target(root, tiny_sd2):
    # 2.3's plain objective, so the loss is the unweighted mean squared error.
    run = setup(_config("--model", str(tiny_sd2), "--root_dir", str(root),
                        "--placeholder_token", "<psychedelic>", *PLAIN_23))  # fmt: skip
    assert run.components.prediction_type == "v_prediction"
    samples = dataset.epoch_samples(4, 2, 27, seed=0, epoch=0)[:2]
    loss = train_step(run, samples, torch.Generator().manual_seed(5))
    # The same draws by hand: velocity target, not the noise.
    c, g = run.components, torch.Generator().manual_seed(5)
    shape = run.latent_source.latent_shape
    draw, noise = torch.randn((2, *shape), generator=g), torch.randn((2, *shape), generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    x0 = run.latent_source.draw(torch.tensor([s.image_index for s in samples]),
                                torch.tensor([s.flipped for s in samples]), draw)  # fmt: skip
    with torch.no_grad():
        texts = [run.prompts.text(s.image_index, s.template_index, s.caption_seed) for s in samples]
        hidden = c.text_encoders[0](run.prompts.token_ids(texts, c.tokenizers, c.device)[0])[0]
        pred = c.unet(c.noise_scheduler.add_noise(x0, noise, t), t, hidden).sample
    velocity = c.noise_scheduler.get_velocity(x0, noise, t)
    assert loss.item() == pytest.approx(
        torch.nn.functional.mse_loss(pred, velocity).item(), rel=1e-5
    )
    assert loss.item() != pytest.approx(torch.nn.functional.mse_loss(pred, noise).item(), rel=1e-3)


def test_sd2_trains_from_the_cli(cli, root, tiny_sd2):
    result = cli("--model", tiny_sd2, "--root_dir", root, "--placeholder_token", "<psychedelic>",
                 *TINY_FLAGS)  # fmt: skip
    assert result.code == 0, result.err
    learned = torch.load(root / "embeddings/psychedelic/learned_embeds.bin", weights_only=True)
    assert (
        learned["<psychedelic>"].shape == (48,) and torch.isfinite(learned["<psychedelic>"]).all()
    )


def test_leaf_vectors_match_the_full_matrix_adamw_recipe(root):
    """diffusers' recipe: the whole embedding matrix in AdamW, every other row restored after each
    step. Ours: only a [n, dim] leaf. Same draws, same data: the trained vectors must agree."""
    argv = ("--root_dir", str(root), "--placeholder_token", "<psychedelic>", "--num_vectors", "2",
            "--max_train_steps", "5", "--gradient_accumulation_steps", "2", *PLAIN_23)  # fmt: skip
    ours = setup(_config(*argv))
    _train(ours)
    reference = setup(_config(*argv))
    encoder, placeholder = reference.components.text_encoders[0], reference.placeholders[0]
    full = torch.nn.Embedding.from_pretrained(
        torch.cat([placeholder.lookup.base.weight, placeholder.vectors.detach()]), freeze=False
    )
    original = full.weight.detach().clone()
    encoder.set_input_embeddings(full)
    reference.optimizer = type(ours.optimizer)([full.weight], **_hyper(ours.optimizer))
    reference.schedule = build_lr_schedule(reference.config, reference.optimizer,
                                                          reference.total_steps)  # fmt: skip
    new_rows = torch.tensor(placeholder.token_ids)
    keep = torch.ones(full.weight.shape[0], dtype=torch.bool)
    keep[new_rows] = False

    def restore_other_rows() -> None:
        with torch.no_grad():
            full.weight[keep] = original[keep]

    _train(reference, after_step=restore_other_rows)
    assert torch.allclose(full.weight[new_rows], ours.placeholders[0].vectors, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ours.placeholders[0].vectors, original[new_rows])


def _hyper(optimizer) -> dict:
    group = optimizer.param_groups[0]
    return {k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}


def _train(run, after_step=lambda: None) -> None:
    p = run.progress
    while p.step < run.total_steps:
        samples = dataset.epoch_samples(len(run.images.paths), run.config.repeats,
                                                 run.prompts.num_templates, p.seed, p.epoch)  # fmt: skip
        optimizer_step(run, samples)
        after_step()


def test_frozen_rows_stay_bit_identical(root, tiny_sd1):
    run = setup(_config("--root_dir", str(root), "--placeholder_token", "<psychedelic>"))
    _train(run)
    weights = load_file(tiny_sd1 / "text_encoder" / "model.safetensors")
    table = next(v for k, v in weights.items() if "token_embedding" in k)
    assert torch.equal(run.placeholders[0].lookup.base.weight, table)
    assert all(not p.requires_grad for p in run.components.unet.parameters())
    assert [p for p in run.optimizer.param_groups[0]["params"]] == [run.placeholders[0].vectors]


def test_full_pipeline_export_knows_the_token(cli, root, tiny_sd1):
    from diffusers import StableDiffusionPipeline

    out = root / "pipeline-out"
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", "--output_dir", out,
                 *TINY_FLAGS, "--no-only_save_embeds")  # fmt: skip
    assert result.code == 0, result.err
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    token_id = pipe.tokenizer.convert_tokens_to_ids("<psychedelic>")
    learned = torch.load(out / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
    weight = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(weight[token_id], learned)
    original = next(v for k, v in load_file(tiny_sd1 / "text_encoder/model.safetensors").items()
                    if "token_embedding" in k)  # fmt: skip
    assert torch.equal(weight[: original.shape[0]], original)
    # The unchanged components are copies, not links: writing them leaves the model alone.
    unet = Path("unet/diffusion_pytorch_model.safetensors")
    assert (out / unet).read_bytes() == (tiny_sd1 / unet).read_bytes()
    assert (out / unet).stat().st_ino != (tiny_sd1 / unet).stat().st_ino
    again = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", "--output_dir", out,
                *TINY_FLAGS, "--no-only_save_embeds", "--max_train_steps", "6")  # fmt: skip
    assert again.code == 0, again.err
    assert not [p for p in out.rglob("*.tmp")]
    assert StableDiffusionPipeline.from_pretrained(out, local_files_only=True) is not None


def test_full_pipeline_components_are_copied_while_training_runs(cli, root, monkeypatch):
    """The unchanged components' copy starts before the first step (it overlaps training, as
    examples/overhead.py measures) and is complete when the final files are written."""
    from invokeai_ti.files import pipeline
    from invokeai_ti.train import loop

    events: list[str] = []
    real_copy, real_step = pipeline.ComponentCopy._copy, loop.optimizer_step

    def copy(self, *args):
        events.append("copy started")
        real_copy(self, *args)
        events.append("copy done")

    def step(*args):
        events.append("step")
        return real_step(*args)

    monkeypatch.setattr(pipeline.ComponentCopy, "_copy", copy)
    monkeypatch.setattr(loop, "optimizer_step", step)
    out = root / "overlap-out"
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", "--output_dir", out,
                 *TINY_FLAGS, "--no-only_save_embeds")  # fmt: skip
    assert result.code == 0, result.err
    assert events.index("copy started") < events.index("step")
    assert events.count("copy started") == 1 and events.count("step") == 4
    assert (out / "unet" / "config.json").is_file() and (out / "model_index.json").is_file()


def test_a_failed_component_copy_is_raised_when_the_pipeline_is_saved(tmp_path):
    from invokeai_ti.files.pipeline import ComponentCopy

    (tmp_path / "src" / "unet").mkdir(parents=True)
    (tmp_path / "src" / "unet" / "weights.bin").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "unet").write_text("a file where the folder goes")
    copying = ComponentCopy(tmp_path / "src", tmp_path / "out", ["unet"])
    with pytest.raises(OSError):
        copying.wait()


def test_num_train_epochs_bounds_training_when_smaller(cli, root):
    # 4 images x 2 repeats / batch 2 = 4 steps per epoch: one epoch is 4 steps, not 50.
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
                 "--max_train_steps", "50", "--num_train_epochs", "1")  # fmt: skip
    assert result.code == 0, result.err
    assert "Trained 4 steps" in result.out


def test_several_vectors_write_emb_params_for_invokeai(cli, root):
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
                 "--num_vectors", "3")  # fmt: skip
    assert result.code == 0, result.err
    learned = torch.load(root / "text-inversion-output/psychedelic/learned_embeds.bin",
                         weights_only=True)  # fmt: skip
    assert learned["<psychedelic>"].shape == (3, 32)
    folder = root / "embeddings" / "psychedelic"
    assert sorted(p.name for p in folder.iterdir()) == ["psychedelic.safetensors"]
    assert torch.equal(load_file(folder / "psychedelic.safetensors")["emb_params"],
                       learned["<psychedelic>"])  # fmt: skip


def test_relative_data_dir_is_relative_to_the_current_folder(cli, root, monkeypatch):
    # 2.3 joined a relative --train_data_dir to the root a second time.
    monkeypatch.chdir(root / "text-inversion-training-data")
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", "--train_data_dir",
                 "psychedelic", *TINY_FLAGS, "--max_train_steps", "1")  # fmt: skip
    assert result.code == 0, result.err


def test_no_copy_leaves_the_embeddings_folder_alone(cli, root):
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
                 "--max_train_steps", "1", "--no-copy")  # fmt: skip
    assert result.code == 0 and not (root / "embeddings").exists()


def test_scale_lr_can_be_turned_off(root):
    common = ("--root_dir", str(root), "--placeholder_token", "<psychedelic>", "--dry_run")
    scaled = setup(_config(*common, "--gradient_accumulation_steps", "3"))
    plain = setup(_config(*common, "--no-scale_lr"))
    assert scaled.learning_rate == pytest.approx(5e-3 * 2 * 3)
    assert plain.learning_rate == pytest.approx(5e-3)


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--initializer_token", "two words"], "--initializer_token 'two words' is 2 tokens"),
        (["--placeholder_token", "cat"], "--placeholder_token 'cat' is already"),
        (
            ["--enable_xformers_memory_efficient_attention"],
            "--enable_xformers_memory_efficient_attention",
        ),
        (["--model", "someone/not-cached"], "is not in the local Hugging Face cache"),
        (["--model", "no-such-model"], "Known names: stable-diffusion-1.5"),
        (["--resume_from_checkpoint", "/nonexistent/checkpoint-3"], "is not a checkpoint folder"),
        (
            ["--train_data_dir", "/nonexistent/images"],
            "--train_data_dir /nonexistent/images does not exist",
        ),
    ],
)
def test_core_errors_are_one_line(cli, root, argv, culprit):
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS, *argv)
    assert result.code != 0
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("invokeai-ti: error: ") and culprit in last
    assert "Traceback" not in result.err


def test_non_diffusers_models_yaml_entry_is_refused(cli, root):
    (root / "configs" / "models.yaml").write_text(
        "old-ckpt:\n  format: ckpt\n  config: configs/v1-inference.yaml\n"
    )
    result = cli(
        "--root_dir", root, "--placeholder_token", "<p>", "--model", "old-ckpt", *TINY_FLAGS
    )
    assert result.code != 0 and "models.yaml entry 'old-ckpt' has format 'ckpt'" in result.err


def test_push_to_hub_offline_fails_after_saving_everything(cli, root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("--root_dir", root, "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
                 "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/psychedelic")  # fmt: skip
    assert result.code == 1
    assert (
        result.err.strip()
        .splitlines()[-1]
        .startswith("invokeai-ti: error: --push_to_hub: uploading to 'me/psychedelic' failed")
    )
    assert (root / "text-inversion-output/psychedelic/learned_embeds.bin").is_file()
