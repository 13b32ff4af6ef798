"""Running the peer: diffusers' own examples/textual_inversion/textual_inversion.py at its own
defaults (batch 16, lr 1e-4, constant schedule) on the same images and steps, through the
launcher that lets it run on a CPU-only torch. Every path is a flag; nothing is assumed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from invokeai_ti.errors import UserError


@dataclass
class PeerSettings:
    script: Path  # textual_inversion.py, kept outside the repository
    launcher: Path  # peer_launch.py (patches the operators torchvision needs on CPU torch)
    pythonpath: Path | None  # a folder holding torchvision for the script, outside our venv

    def check(self) -> None:
        for flag, path in (("--peer_script", self.script), ("--peer_launcher", self.launcher)):
            if not path.is_file():
                raise UserError(
                    f"{flag} {path} does not exist: see docs/benchmarks.md for the setup."
                )


@dataclass
class TrainedRun:
    """A finished training run: the embeddings it saved every --save_steps, each with the wall
    seconds from launch until the file was written (start-up and model loading included)."""

    name: str
    wall_seconds: float
    step_files: list[tuple[int, Path, float]]  # (step, file, seconds since launch)
    command: list[str]


def step_files(output_dir: Path, started: float, steps: int) -> list[tuple[int, Path, float]]:
    """learned_embeds-steps-N.{bin,safetensors} (both trainers' name), then the final
    learned_embeds file as step `steps` (neither trainer writes a step file at the last step)."""
    found = {}
    for path in output_dir.glob("learned_embeds-steps-*"):
        found[int(path.stem.rsplit("-", 1)[1])] = path
    finals = sorted(output_dir.glob("learned_embeds.*"), key=lambda p: p.suffix != ".safetensors")
    if finals:
        found[steps] = finals[0]
    return [(step, path, path.stat().st_mtime - started) for step, path in sorted(found.items())]


def run_timed(name: str, command: list[str], output_dir: Path, steps: int,
              env: dict[str, str] | None = None) -> TrainedRun:  # fmt: skip
    """Run one trainer to the end, its output in `log_path`; a failure is a one-line UserError.
    `output_dir` is emptied first: a step file or checkpoint left by an earlier experiment in the
    same --out would otherwise join this run's curve."""
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    log_path = output_dir / "train.log"
    started = time.time()
    with log_path.open("w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - started
    if result.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(
            f"{name} exited with {result.returncode} ({tail[0][:200]}): see {log_path}."
        )
    return TrainedRun(name, wall, step_files(output_dir, started, steps), command)


def train_peer(peer: PeerSettings, model_dir: Path, images_dir: Path, output_dir: Path,
               token: str, initializer: str, steps: int, save_steps: int, seed: int,
               resolution: int) -> TrainedRun:  # fmt: skip
    """The script with its defaults for everything that shapes learning; only what this world
    needs is set: the model, images, token, steps, resolution, seed and how often to save."""
    peer.check()
    command = [sys.executable, str(peer.launcher), str(peer.script),
               f"--pretrained_model_name_or_path={model_dir}", f"--train_data_dir={images_dir}",
               f"--placeholder_token={token}", f"--initializer_token={initializer}",
               f"--resolution={resolution}", f"--max_train_steps={steps}",
               f"--save_steps={save_steps}", f"--seed={seed}", "--mixed_precision=no",
               f"--output_dir={output_dir}"]  # fmt: skip
    env = dict(os.environ)
    if peer.pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(peer.pythonpath),
                                                          env.get("PYTHONPATH", "")]))  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    return run_timed("diffusers textual_inversion.py", command, output_dir, steps, env)
