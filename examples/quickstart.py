"""Quickstart: train an embedding on the built-in tiny model, then render with it in diffusers.

    python examples/quickstart.py [--root quickstart-root] [--steps 40]

Builds an InvokeAI-style root (no download: the model has random weights and the real CLIP
vocabulary), runs the command InvokeAI 2.3's documentation gives, and loads the result from
ROOT/embeddings/<trigger>/learned_embeds.bin with diffusers' load_textual_inversion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
TRIGGER = "psychedelic"


def prepare_root(root: Path) -> Path:
    from invokeai_ti.models.tiny import save_tiny_model, write_models_yaml

    model_dir = root / "models" / "tiny-sd1"
    if not (model_dir / "model_index.json").is_file():
        print(f"Building the tiny random-weight SD1 model in {model_dir} ...")
        save_tiny_model(model_dir, family="sd1")
    write_models_yaml(root, {"stable-diffusion-1.5": model_dir}, default="stable-diffusion-1.5")
    data_dir = root / "text-inversion-training-data" / TRIGGER
    data_dir.mkdir(parents=True, exist_ok=True)
    for image in sorted((EXAMPLES / "images").glob("*.png")):
        shutil.copy2(image, data_dir / image.name)
    return model_dir


def train(root: Path, steps: int) -> None:
    # InvokeAI 2.3's documented command; resolution and steps scaled to the tiny model and a CPU.
    command = [
        sys.executable, "-m", "invokeai_ti",
        "--model=stable-diffusion-1.5", "--learnable_property=style", "--initializer_token=*",
        f"--placeholder_token=<{TRIGGER}>", "--scale_lr", "--train_batch_size=4",
        "--gradient_accumulation_steps=1", f"--max_train_steps={steps}", "--learning_rate=0.0005",
        "--resume_from_checkpoint=latest", "--lr_scheduler=constant", "--mixed_precision=fp16",
        "--only_save_embeds", "--resolution=64", "--report_to=none", "--seed=0",
    ]  # fmt: skip
    print("$ invokeai-ti " + " ".join(command[3:]))
    subprocess.run(command, check=True, env=dict(os.environ, INVOKEAI_ROOT=str(root)))


def render(root: Path, model_dir: Path) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    embedding = root / "embeddings" / TRIGGER / "learned_embeds.bin"
    pipe.load_textual_inversion(embedding)
    image = pipe(
        f"a plate of banana sushi in <{TRIGGER}> style",
        num_inference_steps=10,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    target = root / "quickstart.png"
    image.save(target)
    print(f"Loaded {embedding} into diffusers and rendered {target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("quickstart-root"))
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    root = args.root.resolve()
    model_dir = prepare_root(root)
    train(root, args.steps)
    render(root, model_dir)


if __name__ == "__main__":
    main()
