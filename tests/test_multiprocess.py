"""`accelerate launch` with two CPU processes (gloo): one embedding, one set of files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import TINY_FLAGS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(num_processes: int, *args: str) -> subprocess.CompletedProcess:
    # No GPU: --multi_gpu makes accelerate start torchrun workers, which join a gloo group.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(num_processes), "--num_machines", "1",
               "--main_process_port", str(_free_port()), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "invokeai_ti", *args]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_one_embedding_like_one_process_with_twice_the_batch(
    cli, root, tmp_path
):
    common = ["--root_dir", str(root), "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
              "--no-copy", "--checkpointing_steps", "2", "--evaluation_budget", "none"]  # fmt: skip
    two = _launch(2, *common, "--train_batch_size", "1", "--output_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    # Both ranks joined one group (init_process_group waits for world_size members).
    assert two.stderr.count("Training on 2 processes") == 1
    assert two.stdout.count("Trained 4 steps") == 1
    assert "Traceback" not in two.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint-2", "checkpoint-4", "config.toml", "learned_embeds.bin",
        "learned_embeds.safetensors", "loss.png", "report.json", "validation",
    ]  # fmt: skip
    # Rank 0 alone drew the grids (step 0 and the end) while rank 1 waited.
    assert sorted(p.name for p in (tmp_path / "two" / "validation").iterdir()) == [
        "step-0.png", "step-4.png"]  # fmt: skip
    one = cli(*common, "--train_batch_size", "2", "--output_dir", tmp_path / "one")
    assert one.code == 0, one.err
    learned_two = torch.load(tmp_path / "two/learned_embeds.bin", weights_only=True)[
        "<psychedelic>"
    ]
    learned_one = torch.load(tmp_path / "one/learned_embeds.bin", weights_only=True)[
        "<psychedelic>"
    ]
    assert torch.allclose(learned_two, learned_one, atol=1e-6)

    # The checkpoint belongs to 2 processes: resuming it with 1 is refused, naming the difference.
    resumed = cli(*common, "--train_batch_size", "1", "--output_dir", tmp_path / "two",
                  "--resume_from_checkpoint", "latest", "--max_train_steps", "6")  # fmt: skip
    assert resumed.code != 0
    assert "world_size: checkpoint has 2, this run has 1" in resumed.err.strip().splitlines()[-1]


@pytest.mark.slow
def test_unequal_shards_log_the_per_sample_mean_loss(cli, root, tmp_path):
    """Issue 21: 3 images, 2 processes at batch 4: rank 0 gets 3 samples, rank 1 none. The logged
    losses and the vectors equal one process at batch 8 (the loss was half of it before: the
    empty process added 0 and the sum was divided by 2)."""
    from conftest import make_concept_images

    images = make_concept_images(tmp_path / "three", count=3)
    common = ["--root_dir", str(root), "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
              "--no-copy", "--repeats", "1", "--max_train_steps", "3", "--validation_steps", "0",
              "--train_data_dir", str(images)]  # fmt: skip
    two = _launch(2, *common, "--train_batch_size", "4", "--output_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli(*common, "--train_batch_size", "8", "--output_dir", tmp_path / "one")
    assert one.code == 0, one.err

    def losses_and_vectors(out):
        state = json.loads(sorted(out.glob("checkpoint-*"))[-1].joinpath("state.json").read_text())
        vectors = torch.load(out / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
        return state["progress"]["losses"], vectors

    losses_two, vectors_two = losses_and_vectors(tmp_path / "two")
    losses_one, vectors_one = losses_and_vectors(tmp_path / "one")
    assert losses_two == pytest.approx(losses_one, rel=1e-5)
    assert torch.allclose(vectors_two, vectors_one, atol=1e-6)


@pytest.mark.slow
def test_two_processes_with_buckets_captions_and_masks_match_one(cli, root, tmp_path):
    """Issue 19: each global batch from one bucket (its padding split between the ranks), shuffled
    and dropped captions, alpha masks: two processes learn what one does with twice the batch."""
    from test_buckets import BUCKETS, make_shapes

    images = make_shapes(tmp_path / "shapes", alpha=True)
    for image in images.glob("*.png"):
        image.with_suffix(".txt").write_text("<psychedelic>, red disc, grey, studio, plain")
    common = ["--root_dir", str(root), "--placeholder_token", "<psychedelic>", *TINY_FLAGS,
              "--no-copy", "--repeats", "1", "--max_train_steps", "3", "--validation_steps", "0",
              "--train_data_dir", str(images), *BUCKETS, "--alpha_mask", "--caption_extension",
              ".txt", "--shuffle_caption", "--caption_dropout_rate", "0.3"]  # fmt: skip
    two = _launch(2, *common, "--train_batch_size", "1", "--output_dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli(*common, "--train_batch_size", "2", "--output_dir", tmp_path / "one")
    assert one.code == 0, one.err
    learned = [torch.load(tmp_path / name / "learned_embeds.bin", weights_only=True)["<psychedelic>"]
               for name in ("two", "one")]  # fmt: skip
    assert torch.allclose(*learned, atol=1e-6)
