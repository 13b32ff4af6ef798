"""Shared fixtures: tiny offline SD models (built once per session), images, an InvokeAI root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
# Fast settings for the tiny model; tests add or override flags.
TINY_FLAGS = [
    "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "4", "--repeats", "2",
    "--only_save_embeds", "--report_to", "none", "--log_format", "plain", "--seed", "0",
    "--learning_rate", "5e-3", "--lr_warmup_steps", "0",
]  # fmt: skip


def make_concept_images(folder: Path, count: int = 4, size: tuple[int, int] = (80, 72)) -> Path:
    """A synthetic concept: a red disc on varied grey backgrounds, as PNG files."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", size, (40 + 50 * i, 40 + 50 * i, 60))
        draw = ImageDraw.Draw(image)
        draw.ellipse((8 + 4 * i, 8, 8 + 4 * i + 48, 56), fill=(220, 30, 30))
        image.save(folder / f"concept-{i}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    from invokeai_ti.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd1", family="sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> Path:
    from invokeai_ti.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd2", family="sd2")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    from invokeai_ti.models.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", family="sdxl")


@pytest.fixture(scope="session")
def concept_images(tmp_path_factory) -> Path:
    return make_concept_images(tmp_path_factory.mktemp("images") / "concept")


@pytest.fixture
def root(tmp_path, tiny_sd1, concept_images) -> Path:
    """An InvokeAI 2.3 root whose models.yaml names the tiny model stable-diffusion-1.5, with the
    concept images in text-inversion-training-data/psychedelic."""
    from invokeai_ti.models.tiny import write_models_yaml

    root = tmp_path / "invokeai"
    write_models_yaml(root, {"stable-diffusion-1.5": tiny_sd1}, default="stable-diffusion-1.5")
    shutil.copytree(concept_images, root / "text-inversion-training-data" / "psychedelic")
    return root


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run `invokeai-ti ARGS` in this process and capture its output."""
    from invokeai_ti.front.cli import main

    def run(*args: str) -> CliResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path | None = None, env: dict | None = None,
                   timeout: int = 300) -> CliResult:  # fmt: skip
    """Run the real console entry point (`python -m invokeai_ti`) in a fresh process."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "invokeai_ti", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
