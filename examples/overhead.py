"""What a short run spends besides loading the model and training (issue 20, item 6).

    python examples/overhead.py --resolution 256 --steps 2 [--baseline] [--out results.md]

Runs the real CLI with its default flags (only the model, the images, the trigger, the step count
and the resolution given) on an SD1.5-shaped random model built offline, in a fresh process per
variant, and splits its wall time with the numbers the run reports in its final JSON object:
loading (resolving and loading the model), images and latents (decoding and VAE-encoding the
images once, the pass each training step would otherwise make), the training steps, and
everything else (starting Python and importing, checkpoints, exports, the loss plot, grids, the
quality report). Variants:

- default:     the default flags (grids and report within --evaluation_budget 0.1; the full
               pipeline written, as InvokeAI 2.3 did without --only_save_embeds).
- only-embeds: --only_save_embeds, the seed's typical command: no 4 GB pipeline copy.
- baseline:    with --baseline, the default flags with --evaluation_budget none: every grid and
               the report drawn whatever they cost, as before the budget existed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchmark import ensure_images, ensure_model  # noqa: E402

TOKEN, INITIALIZER = "<bench>", "toy"


def run_variant(name: str, extra: list[str], args: argparse.Namespace, model: Path,
                images: Path) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ti-overhead-") as tmp:
        cmd = [sys.executable, "-m", "invokeai_ti", "--model", str(model),
               "--train_data_dir", str(images), "--placeholder_token", TOKEN,
               "--initializer_token", INITIALIZER, "--max_train_steps", str(args.steps),
               "--resolution", str(args.resolution), "--output_dir", str(Path(tmp) / "out"),
               "--root_dir", str(Path(tmp) / "root"), "--log_format", "json", *extra]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))  # fmt: skip
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"{name} FAILED:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return dict(variant=name, error=True)
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    s = final["seconds"]
    # Encoding the images is the VAE pass every training step would otherwise make: it is
    # training's, and shown in its own column.
    outside = wall - s["loading"] - s["images and latents"] - s["training"]
    return dict(variant=name, wall=wall, loading=s["loading"], training=s["training"],
                evaluation=s["evaluation"], latents=s["images and latents"],
                final_files=s["final files"], outside=outside, outside_share=outside / wall,
                command=" ".join(cmd[1:]))  # fmt: skip


def import_seconds() -> float:
    """Starting Python and importing the trainer, torch and diffusers: part of 'outside'."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import invokeai_ti.train.loop, diffusers"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--model_cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "invokeai-ti-bench")  # fmt: skip
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also run with --evaluation_budget none (slow on a CPU: minutes)",
    )
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    model = ensure_model(args.model_cache)
    images = ensure_images(args.model_cache, args.num_images)
    variants = [("default", []), ("only-embeds", ["--only_save_embeds"])]
    if args.baseline:
        variants.append(("baseline", ["--evaluation_budget", "none"]))
    rows = [run_variant(name, extra, args, model, images) for name, extra in variants]
    imports = import_seconds()
    lines = [
        f"`python examples/overhead.py {' '.join(sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} CPUs), {datetime.date.today()}; SD1.5-shaped random weights, "
        f"{args.resolution} px, {args.steps} steps, {args.num_images} images, default flags.",
        "",
        "| variant | wall s | loading s | images+latents s | training steps s | everything else s "
        "| share of wall | of which: final files s | grids+report s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['variant']} | failed | | | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['wall']:.1f} | {r['loading']:.1f} | "
                     f"{r['latents']:.1f} | {r['training']:.1f} | {r['outside']:.1f} | "
                     f"{100 * r['outside_share']:.1f} % | {r['final_files']:.1f} | "
                     f"{r['evaluation']:.1f} |")  # fmt: skip
    lines += ["", f"Starting Python and importing torch, diffusers and the trainer alone: "
              f"{imports:.1f} s (counted in 'everything else')."]  # fmt: skip
    if len(rows) == 3 and not any(r.get("error") for r in rows):
        lines.append(f"Wall time default / baseline: {rows[0]['wall'] / rows[2]['wall']:.2f}x.")
    lines += ["", "Commands:"] + [f"- {r['variant']}: `{r.get('command', '')}`" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
