"""Validation grids (fixed seed, step in the name, RNG stream untouched) and the loss plot."""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS
from PIL import Image

from invokeai_ti.config import TrainingConfig
from invokeai_ti.report import plot, validation


def train_flags(root, out, *extra):
    return [*TINY_FLAGS, "--root_dir", root, "--placeholder_token", "<psychedelic>",
            "--output_dir", out, "--no-copy", "--evaluation_budget", "none", *extra]  # fmt: skip


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def learned(out) -> torch.Tensor:
    return torch.load(out / "learned_embeds.bin", weights_only=True)["<psychedelic>"]


def test_grids_at_validation_steps_from_a_fixed_seed(root, tiny_sd1, cli, tmp_path):
    out = tmp_path / "out"
    (out / "validation").mkdir(parents=True)
    (out / "validation" / "step-900.png").write_bytes(b"an earlier run's grid")
    result = cli(*train_flags(root, out, "--save_steps", "2", "--num_validation_images", "3"))
    assert result.code == 0, result.err
    grids = sorted(p.name for p in (out / "validation").iterdir())  # step-900 of the old run: gone
    # step 0 (the initializer alone), every --save_steps (the default), and the last step
    assert grids == ["step-0.png", "step-2.png", "step-4.png"]
    first, last = (
        pixels(out / "validation" / "step-0.png"),
        pixels(out / "validation" / "step-4.png"),
    )
    assert first.shape == (128, 128, 3)  # 3 images of 64 px in a 2 x 2 grid
    assert np.abs(first[64:, 64:]).max() == 0  # the unused fourth cell stays black
    assert np.abs(first - last).mean() > 0.5  # the learned vector changes what is drawn

    # The same seed and vectors give the same picture: grids differ only by what was learned.
    config = TrainingConfig(placeholder_token="<psychedelic>", resolution=64,
                            num_validation_images=3, output_dir=tmp_path / "again")  # fmt: skip
    components, placeholder = load_tiny(tiny_sd1, config)
    with torch.no_grad():
        placeholder.vectors.copy_(learned(out)[None])
    seed = 0  # the run's --seed
    path = validation.save_validation_grid(components, config, 4, seed, NoTracker())
    assert path == tmp_path / "again" / "validation" / "step-4.png"
    assert np.abs(pixels(path) - last).max() <= 1  # same pixels (rounding aside)


def load_tiny(model_dir, config):
    from invokeai_ti.invokeai.model_source import ModelSource
    from invokeai_ti.models.loading import load_components
    from invokeai_ti.models.placeholder import add_placeholder

    source = ModelSource(path=model_dir, kind="diffusers", name="tiny")
    components = load_components(config, source, torch.device("cpu"))
    placeholder = add_placeholder(config, components.tokenizers[0], components.text_encoders[0])
    components.vae = None  # as after latent caching: validation must load it again
    return components, placeholder


class NoTracker:
    def __init__(self):
        self.images = []

    def image(self, tag, image, step):
        self.images.append((tag, image.size, step))


def test_single_file_model_draws_the_same_grid_as_its_folder(root, tiny_sd1, cli, tmp_path):
    """The VAE freed after caching is loaded again from the one checkpoint file."""
    from safetensors.torch import save_file
    from test_single_file import to_single_file

    single = tmp_path / "tiny-sd1.safetensors"
    save_file(to_single_file(tiny_sd1), single)
    grids = {}
    for name, model in (("folder", tiny_sd1), ("file", single)):
        out = tmp_path / name
        result = cli(*train_flags(root, out, "--model", model, "--max_train_steps", "2",
                                  "--num_validation_images", "2"))  # fmt: skip
        assert result.code == 0, result.err
        grids[name] = pixels(out / "validation" / "step-2.png")
    assert grids["file"].shape == (64, 128, 3)
    assert np.array_equal(grids["file"], grids["folder"])  # same weights, same seed: same pixels


def test_sdxl_grids_and_report(root, tiny_sdxl, cli, tmp_path):
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--model", tiny_sdxl, "--max_train_steps", "2",
                              "--save_steps", "1", "--num_validation_images", "2"))  # fmt: skip
    assert result.code == 0, result.err
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step-0.png", "step-1.png", "step-2.png"]  # fmt: skip
    first, last = (
        pixels(out / "validation" / "step-0.png"),
        pixels(out / "validation" / "step-2.png"),
    )
    assert first.shape == (64, 128, 3) and np.abs(first - last).mean() > 0.5
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["step"] == 2 and report["loss_learned"] != report["loss_initializer"]


def test_validation_leaves_the_training_stream_and_resume_exact(root, cli, tmp_path):
    flags = ("--max_train_steps", "6", "--save_steps", "3", "--checkpointing_steps", "3",
             "--num_validation_images", "1")  # fmt: skip
    on, off, resumed = tmp_path / "on", tmp_path / "off", tmp_path / "resumed"
    assert cli(*train_flags(root, on, *flags, "--validation_steps", "1")).code == 0
    assert len(list((on / "validation").iterdir())) == 7  # steps 0..6
    assert cli(*train_flags(root, off, *flags, "--validation_steps", "0")).code == 0
    assert not (off / "validation").exists()  # --validation_steps 0: off
    assert torch.equal(learned(on), learned(off))
    # Interrupted after step 3 (validating every step), then resumed: still the same vectors.
    first = cli(*train_flags(root, resumed, *flags, "--validation_steps", "1",
                             "--max_train_steps", "3"))  # fmt: skip
    assert first.code == 0
    again = cli(*train_flags(root, resumed, *flags, "--validation_steps", "1",
                             "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert again.code == 0, again.err
    assert torch.equal(learned(resumed), learned(on))


def test_validation_prompt_names_every_vector():
    config = TrainingConfig(placeholder_token="<t>", num_vectors=3)
    assert validation.validation_prompt(config) == "a photo of a <t> <t>_1 <t>_2"
    config.validation_prompt = "a <t> on a table"
    assert validation.validation_prompt(config) == "a <t> <t>_1 <t>_2 on a table"
    config.validation_prompt = "a <t> <t>_1 <t>_2 on a table"  # already spelled out: unchanged
    assert validation.validation_prompt(config) == "a <t> <t>_1 <t>_2 on a table"
    style = TrainingConfig(placeholder_token="<s>", learnable_property="style")
    assert validation.validation_prompt(style) == "a painting in the style of <s>"
    assert validation.validation_every(TrainingConfig(save_steps=7)) == 7
    assert validation.validation_every(TrainingConfig(save_steps=7, validation_steps=0)) == 0
    assert validation.validation_every(TrainingConfig(num_validation_images=0)) == 0


def test_validation_prompt_without_the_trigger_is_refused(root, cli, tmp_path):
    result = cli(*train_flags(root, tmp_path / "out", "--validation_prompt", "a red disc"))
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "invokeai-ti: error: --validation_prompt 'a red disc' does not contain <psychedelic>, so "
        "the grids would not show what is learned: put the trigger in it, e.g. 'a photo of "
        "<psychedelic> on a beach'."
    ]
    assert not (tmp_path / "out").exists()
    custom = cli(*train_flags(root, tmp_path / "ok", "--validation_prompt", "a <psychedelic> disc",
                              "--num_validation_images", "1"))  # fmt: skip
    assert custom.code == 0, custom.err
    assert sorted(p.name for p in (tmp_path / "ok" / "validation").iterdir()) == [
        "step-0.png", "step-4.png"]  # fmt: skip


def test_moving_average_skips_non_finite_losses():
    losses = [1.0, 3.0, float("nan"), 5.0, float("inf"), 7.0]
    average = plot.moving_average(losses, 2)
    assert average[:2] == [1.0, 2.0]
    assert average[2] == 3.0  # the NaN is left out of the mean
    assert average[3] == 5.0
    assert average[4] == 5.0
    assert average[5] == 7.0
    assert math.isnan(plot.moving_average([float("nan")], 3)[0])
    assert plot.smoothing_window(30) == 5
    assert plot.smoothing_window(500) == 50
    assert plot.smoothing_window(100_000) == 100


def test_loss_plot_is_rewritten_at_each_save(root, cli, tmp_path, monkeypatch):
    plotted = []
    real = plot.save_loss_plot

    def recording(output_dir, losses, validation=None):
        plotted.append(list(losses))
        return real(output_dir, losses, validation)

    monkeypatch.setattr(plot, "save_loss_plot", recording)
    out = tmp_path / "out"
    result = cli(*train_flags(root, out, "--max_train_steps", "6", "--save_steps", "2",
                              "--validation_steps", "0"))  # fmt: skip
    assert result.code == 0, result.err
    assert [len(losses) for losses in plotted] == [2, 4, 6]  # steps 2, 4 and the end
    state = sorted(out.glob("checkpoint-*"))[-1] / "state.json"
    import json

    assert plotted[-1] == json.loads(state.read_text())["progress"]["losses"]
    image = Image.open(out / "loss.png")
    assert image.size == (640, 360)
    colours = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 20  # two curves, axes and text, not a blank page
    assert f"{out / 'loss.png'}" in result.out


def test_without_matplotlib_one_info_line_and_no_plot(root, cli, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    plot._matplotlib.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="invokeai_ti"):
            result = cli(*train_flags(root, tmp_path / "out", "--save_steps", "1",
                                      "--validation_steps", "0"))  # fmt: skip
    finally:
        plot._matplotlib.cache_clear()
    assert result.code == 0, result.err
    notes = [r.message for r in caplog.records if "matplotlib is not installed" in r.message]
    assert len(notes) == 1  # said once, although the plot was due at 4 saves and the end
    assert not (tmp_path / "out" / "loss.png").exists()
    assert (tmp_path / "out" / "learned_embeds.bin").is_file()


@pytest.fixture(autouse=True)
def _fresh_plot_cache():
    plot._matplotlib.cache_clear()
    yield
