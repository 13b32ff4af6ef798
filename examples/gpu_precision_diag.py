"""Why is a half-precision step slower than fp32 on a GPU? (examples/gpu-results-2026-12-04.md)

gpu_checks.py measured, on an H200 at 512 px batch 1: fp32 0.116 s/step, fp16 0.461, bf16 0.531,
bf16 at batch 8 0.212. This times the bare SD1.5-shaped text encoder + UNet step (no invokeai-ti
code) in each precision, with and without cuDNN's autotuner, then profiles invokeai-ti's own step.

    python examples/gpu_precision_diag.py --model /tmp/gpu-checks/sd15   # --shape tiny on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def bare_step(shape: str, dtype: torch.dtype, batch: int, px: int, device: str):
    """Random weights made on the device (no disk), the text encoder + UNet step to one vector."""
    from invokeai_ti.models import tiny

    with torch.device(device):
        encoder = tiny._text_encoder("sd1", shape, 0).to(dtype)
        unet = tiny._unet("sd1", shape, encoder.config.hidden_size, 0).to(dtype)
    unet.requires_grad_(False), encoder.requires_grad_(False)
    ids = torch.full((batch, 77), 49407, device=device)
    ids[:, 0], ids[:, 5] = 49406, 1000
    vector = torch.zeros(encoder.config.hidden_size, device=device, requires_grad=True)
    where = (ids == 1000).unsqueeze(-1)
    encoder.get_input_embeddings().register_forward_hook(
        lambda _m, _i, out: torch.where(where, out + vector.to(out.dtype), out)
    )
    x = torch.randn((batch, 4, px // 8, px // 8), device=device)
    half = dtype != torch.float32

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=half):
            pred = unet(x.to(dtype), t, encoder(ids)[0].to(dtype)).sample
        F.mse_loss(pred.float(), x).backward()
        vector.grad = None

    return step


def timed(step, warmup: int, steps: int) -> float:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(step, label: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"\n== profile: {label} (3 steps), by {key}", flush=True)
    print(
        prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60), flush=True
    )


def ours_step(model: Path, precision: str, batch: int, px: int):
    sys.path.insert(0, str(HERE))
    import benchmark

    step, _ = benchmark.ours_step("ours", model, HERE / "images", px, precision)
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True, help="for invokeai-ti's own step")
    parser.add_argument("--shape", default="sd15", help="tiny: a smoke test on a CPU")
    parser.add_argument("--px", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, dtype, batch, bench in [("fp32", torch.float32, 1, False),
                                      ("bf16", torch.bfloat16, 1, False),
                                      ("fp16", torch.float16, 1, False),
                                      ("bf16 cudnn.benchmark", torch.bfloat16, 1, True),
                                      ("fp16 cudnn.benchmark", torch.float16, 1, True),
                                      ("fp32 cudnn.benchmark", torch.float32, 1, True),
                                      ("bf16 batch 8", torch.bfloat16, 8, False)]:  # fmt: skip
        torch.backends.cudnn.benchmark = bench
        step = bare_step(args.shape, dtype, batch, args.px, device)
        s = timed(step, 3, args.steps)
        rows.append((name, s))
        print(f"bare {name}: {s:.4f} s/step", flush=True)
        if name == "bf16":
            profile(step, "bare bf16 batch 1")
        del step
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    torch.backends.cudnn.benchmark = False
    while not (args.model / "model_index.json").is_file():  # built beside this run
        time.sleep(2)
    step = ours_step(args.model, "bf16", 1, args.px)
    print(f"ours bf16: {timed(step, 3, args.steps):.4f} s/step", flush=True)
    profile(step, "invokeai-ti bf16 batch 1")


if __name__ == "__main__":
    main()
