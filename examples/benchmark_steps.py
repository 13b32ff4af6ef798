"""Step-interleaved timing: limit, ours and the upstream recipe in ONE process, one step of each in
turn, so that machine load (which swings absolute times up to 2.5x here) hits all of them alike.

    python examples/benchmark_steps.py --px 256 --rounds 5
    python examples/benchmark_steps.py --px 256 --rounds 5 --precisions fp32 bf16

benchmark.py runs each variant in its own process, which it needs for peak RSS, but there a load
swing between two children shows up as a speed ratio. This script complements it for the ratios;
it builds the same SD1.5-shaped random model (benchmark.py's cache) and the same step functions.
Peak RSS here is all models together, so it is not reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import benchmark


def build_steps(model: Path, images: Path, px: int, precisions: list[str], baseline: bool) -> dict:
    """{"limit fp32": step, "ours fp32": step, ...}: every variant at every precision."""
    steps = {}
    for precision in precisions:
        steps[f"limit {precision}"] = benchmark.limit_step(model, px, precision)[0]
        steps[f"ours {precision}"] = benchmark.ours_step("ours", model, images, px, precision)[0]
        if baseline:
            step, _ = benchmark.baseline_step(model, images, px, precision)
            steps[f"baseline {precision}"] = step
    return steps


def report(median: dict[str, float], precisions: list[str]) -> list[str]:
    lines = []
    for p in precisions:
        ours, limit, base = (median.get(f"{v} {p}") for v in ("ours", "limit", "baseline"))
        lines.append(f"{p}: ours / limit = {ours / limit:.3f}")
        if base:
            lines.append(f"{p}: baseline / ours (speed-up) = {base / ours:.3f}")
            lines.append(f"{p}: baseline / limit (best possible speed-up) = {base / limit:.3f}")
    if {"fp32", "bf16"} <= set(precisions):
        lines.append(f"ours fp32 / ours bf16 (what bf16 gains) = "
                     f"{median['ours fp32'] / median['ours bf16']:.3f}")  # fmt: skip
        lines.append(f"limit fp32 / limit bf16 = {median['limit fp32'] / median['limit bf16']:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="measured steps of each variant")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--no_baseline", action="store_true", help="limit and ours only")
    parser.add_argument("--model_cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "invokeai-ti-bench")  # fmt: skip
    args = parser.parse_args()
    cache = args.model_cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    model, images = benchmark.ensure_model(cache), benchmark.ensure_images(cache, 2)
    os.chdir(tempfile.mkdtemp(prefix="ti-bench-steps-"))  # ours writes its output folder here
    steps = build_steps(model, images, args.px, args.precisions, not args.no_baseline)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            if round_index:
                times[name].append(time.perf_counter() - started)
        if round_index:
            print(f"round {round_index}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()),
                  flush=True)  # fmt: skip
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{args.px} px, {args.rounds} interleaved rounds, median s/step: "
          + ", ".join(f"{n} {m:.3f}" for n, m in median.items()))  # fmt: skip
    print("\n".join(report(median, args.precisions)))


if __name__ == "__main__":
    main()
