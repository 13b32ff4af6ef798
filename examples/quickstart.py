"""Quickstart: teach the shipped concept-world model a new word from 5 pictures, on a CPU in
about half a minute, and see it work: a before/after grid judged by the world's own judge.

    python examples/quickstart.py [--root quickstart-root] [--concept yellow-square] [--steps 200]

The model is the pretrained miniature Stable Diffusion in invokeai_ti/concepts/model (a real
diffusers SD1 folder, 32 px pictures of coloured shapes, trained here from a seed). The script
builds an InvokeAI-style root naming it, renders 5 pictures of the concept into the training
folder, runs invokeai-ti, then draws "a photo of a <concept>" with the initializer's vector
(before) and with the learned one (after).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TRIGGER = "concept"
TOKEN = f"<{TRIGGER}>"


def prepare_root(root: Path, concept: str) -> None:
    from invokeai_ti.concepts.sampling import MODEL_DIR
    from invokeai_ti.concepts.world import render_concept
    from invokeai_ti.models.tiny import write_models_yaml

    write_models_yaml(root, {"concept-world": MODEL_DIR}, default="concept-world")
    data_dir = root / "text-inversion-training-data" / TRIGGER
    for old in data_dir.glob("*.png"):
        old.unlink()
    render_concept(concept, data_dir, count=5, seed=1000, background="white")
    print(f"Rendered 5 pictures of {concept} into {data_dir}")


def train(root: Path, steps: int) -> Path:
    # The concept-world settings the experiment measured (examples/concepts-results-2026-12-04.md):
    # a constant lr of 5e-3 without scale_lr; the 32 px model wants --resolution 32.
    command = [
        sys.executable, "-m", "invokeai_ti", "--model=concept-world", "--initializer_token=object",
        f"--placeholder_token={TOKEN}", "--resolution=32", "--train_batch_size=4",
        f"--max_train_steps={steps}", "--learning_rate=5e-3", "--no-scale_lr",
        "--lr_scheduler=constant", "--lr_warmup_steps=0", "--adam_weight_decay=0",
        "--only_save_embeds", "--report_to=none", "--seed=0",
        # No grids (this model needs its own sampler, below); a validation loss every 25 steps on
        # fixed draws, whose curve falls where the per-step loss is noise, and the best step kept.
        "--validation_steps=25", "--num_validation_images=0", "--validation_loss_draws=8",
        "--save_best", "--evaluation_budget=none",  # the report too: seconds on this model
    ]  # fmt: skip
    print("$ invokeai-ti " + " ".join(command[3:]))
    subprocess.run(command, check=True, env=dict(os.environ, INVOKEAI_ROOT=str(root)))
    return root / "text-inversion-output" / TRIGGER


def before_after(root: Path, output_dir: Path, concept: str) -> Path:
    from invokeai_ti.concepts.sampling import add_token, grid, judged_rate, load_pipeline, sample
    from invokeai_ti.files.formats import read_embedding

    pipe = load_pipeline()
    prompt = f"a photo of a {TOKEN}"
    initializer = pipe.text_encoder.get_input_embeddings().weight[
        pipe.tokenizer.convert_tokens_to_ids("object</w>")].detach().clone()  # fmt: skip
    add_token(pipe, TOKEN, initializer[None])
    before = sample(pipe, prompt, 32)
    add_token(pipe, TOKEN, read_embedding(output_dir / "learned_embeds.bin").vectors[0][:1])
    after = sample(pipe, prompt, 32)
    target = root / "quickstart.png"
    grid([before[:8], after[:8]], scale=4).save(target)
    print(
        f'"{prompt}" judged as {concept}: before {judged_rate(before, concept) / 32:.2f}, '
        f"after {judged_rate(after, concept) / 32:.2f} (32 samples each)"
    )
    print(f"Before (top row) and after (bottom row): {target}")
    print(f"Loss curve: {output_dir / 'loss.png'}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("quickstart-root"))
    parser.add_argument("--concept", default="yellow-square")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    root = args.root.resolve()
    prepare_root(root, args.concept)
    output_dir = train(root, args.steps)
    before_after(root, output_dir, args.concept)


if __name__ == "__main__":
    main()
