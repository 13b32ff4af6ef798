"""Step time per pixel of a portrait bucket against square training (issue 19, buckets).

    python examples/bucket_speed.py --resolution 256 --steps 4 --rounds 2 [--out results.md]

Trains the real CLI on an SD1.5-shaped random model (built offline, as examples/benchmark.py
does) twice per round, interleaved so that machine load hits both alike: square images at
--resolution, and portrait images with --enable_bucket (kohya's buckets put them at e.g. 192x320
for 256). Each run reports its training seconds in its final JSON object; the table gives seconds
per step and per megapixel, and the ratio bucket / square.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchmark import ensure_model  # noqa: E402


def make_images(folder: Path, size: tuple[int, int], count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(sorted((HERE / "images").glob("*.png"))[:count]):
        Image.open(source).convert("RGB").resize(size).save(folder / f"{i}.png")
    return folder


def train_seconds(model: Path, images: Path, extra: list[str], args, tmp: Path) -> dict:
    cmd = [sys.executable, "-m", "invokeai_ti", "--model", str(model), "--train_data_dir",
           str(images), "--placeholder_token", "<bench>", "--initializer_token", "toy",
           "--resolution", str(args.resolution), "--train_batch_size", "1", "--max_train_steps",
           str(args.steps), "--output_dir", str(tmp / "out"), "--root_dir", str(tmp / "root"),
           "--only_save_embeds", "--no-copy", "--report_to", "none", "--log_format", "json",
           "--validation_steps", "0", "--no-quality_report", "--seed", "0", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model_cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "invokeai-ti-bench")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = ensure_model(args.model_cache)
    r = args.resolution
    portrait = (r * 3 // 4 // 64 * 64, r * 5 // 4 // 64 * 64)  # 192x320 at 256: a kohya bucket
    per_mpx: dict[str, list[float]] = {"square": [], "bucket": []}
    per_step: dict[str, list[float]] = {"square": [], "bucket": []}
    with tempfile.TemporaryDirectory(prefix="ti-buckets-") as tmp_name:
        tmp = Path(tmp_name)
        square_images = make_images(tmp / "square", (r, r))
        portrait_images = make_images(tmp / "portrait", portrait)
        variants = {
            "square": (square_images, [], r * r),
            "bucket": (portrait_images, ["--enable_bucket"], portrait[0] * portrait[1]),
        }
        for round_ in range(args.rounds):
            for name, (images, extra, pixels) in variants.items():
                final = train_seconds(model, images, extra, args, tmp / f"{name}-{round_}")
                step = final["seconds"]["training"] / args.steps
                per_step[name].append(step)
                per_mpx[name].append(step / (pixels / 1e6))
    square, bucket = statistics.median(per_mpx["square"]), statistics.median(per_mpx["bucket"])
    text = "\n".join([
        f"`python examples/bucket_speed.py --resolution {r} --steps {args.steps} --rounds "
        f"{args.rounds}` on {os.cpu_count()} CPUs, {datetime.date.today()}; SD1.5-shaped random "
        "weights, batch 1, fp32; medians over the rounds (interleaved).",
        "",
        "| variant | image size | s/step | s/step per megapixel |",
        "|---|---|---|---|",
        f"| square | {r}x{r} | {statistics.median(per_step['square']):.2f} | {square:.2f} |",
        f"| bucket (--enable_bucket) | {portrait[0]}x{portrait[1]} | "
        f"{statistics.median(per_step['bucket']):.2f} | {bucket:.2f} |",
        "",
        f"Bucket / square, per megapixel: {bucket / square:.3f}x.",
        f"Every round (s/step per megapixel): square {[round(x, 2) for x in per_mpx['square']]}, "
        f"bucket {[round(x, 2) for x in per_mpx['bucket']]}.",
    ]) + "\n"  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
