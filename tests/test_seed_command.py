"""The command InvokeAI 2.3's documentation gives, run unchanged on the tiny model."""

from __future__ import annotations

import torch
from conftest import run_subprocess

SEED_FLAGS = [
    "--model=stable-diffusion-1.5", "--resolution=512", "--learnable_property=style",
    "--initializer_token=*", "--placeholder_token=<psychedelic>",
    "--scale_lr", "--train_batch_size=8", "--gradient_accumulation_steps=4",
    "--max_train_steps=3000", "--learning_rate=0.0005", "--resume_from_checkpoint=latest",
    "--lr_scheduler=constant", "--mixed_precision=fp16", "--only_save_embeds",
]  # fmt: skip


def test_seed_command_trains_and_copies_into_root(root):
    data = root / "text-inversion-training-data" / "psychedelic"
    out = root / "text-inversion-output" / "psychedelic"
    # The documented command, plus a step budget the CPU can afford (argparse: the last flag wins).
    result = run_subprocess(
        *SEED_FLAGS, f"--train_data_dir={data}", f"--output_dir={out}",
        "--max_train_steps=2", "--resolution=64", "--report_to=none",
        env={"INVOKEAI_ROOT": str(root)},
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "fp16 needs a GPU" in result.err  # warned once, trained in fp32
    assert result.err.count("fp16 needs a GPU") == 1
    learned = torch.load(out / "learned_embeds.bin", weights_only=True)
    assert list(learned) == ["<psychedelic>"]
    assert learned["<psychedelic>"].shape == (32,)  # 1-D: InvokeAI reads the dim from shape[0]
    from safetensors.torch import load_file

    same = load_file(out / "learned_embeds.safetensors")
    assert torch.equal(same["<psychedelic>"], learned["<psychedelic>"])
    copy = torch.load(root / "embeddings" / "psychedelic" / "learned_embeds.bin", weights_only=True)
    assert torch.equal(copy["<psychedelic>"], learned["<psychedelic>"])
    assert "Trained 2 steps" in result.out
