"""Each of issue 20's learning options through the real CLI, on one model and one image folder, in a
table: wall time, the training loss at the end, the held-out quality report, the vectors' norm.

    python examples/learning_options.py --model PIPELINE_FOLDER --images IMAGE_FOLDER \\
        [--steps 200] [--resolution 256] [--only adamw lion] [--out results.md] [-- EXTRA FLAGS]

Every variant starts from the same flags (the baseline: today's defaults at --steps), changes one
thing, and runs in its own `python -m invokeai_ti` process with --log_format json, so the numbers
are exactly what a user would get. The quality report's losses are on fixed held-out draws with the
plain objective (no min-SNR weighting), so they compare across variants; the training loss does not
when --min_snr_gamma weights it. This measures the loss side only: recovery and editability of a
concept need the concept world's judge.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TOKEN = "<learn-opt>"
# name -> flags added to the baseline. The learning rates are each optimizer's usual starting point
# relative to AdamW's (Lion 3-10x lower; Prodigy's lr multiplies its own estimate).
VARIANTS = {
    "adamw": (),
    "lion": ("--optimizer", "lion", "--learning_rate", "2e-5"),
    "prodigy": ("--optimizer", "prodigy", "--learning_rate", "1", "--no-scale_lr"),
    "schedulefree": ("--optimizer", "schedulefree_adamw", "--lr_scheduler",
                     "constant_with_warmup", "--lr_warmup_steps", "10"),
    "clip1": ("--max_grad_norm", "1"),
    "minsnr5": ("--min_snr_gamma", "5"),
    "offset0.05": ("--noise_offset", "0.05"),
    "keepnorm": ("--embedding_norm", "keep"),
    "prodigy+keepnorm+minsnr5": ("--optimizer", "prodigy", "--learning_rate", "1", "--no-scale_lr",
                                 "--embedding_norm", "keep", "--min_snr_gamma", "5"),
}  # fmt: skip


def run_variant(name: str, extra: tuple[str, ...], args: argparse.Namespace, work: Path) -> dict:
    out = work / name
    command = [sys.executable, "-m", "invokeai_ti", "--root_dir", str(work / "root"),
               "--model", str(args.model), "--train_data_dir", str(args.images),
               "--placeholder_token", TOKEN, "--initializer_token", args.initializer,
               "--output_dir", str(out), "--resolution", str(args.resolution),
               "--max_train_steps", str(args.steps), "--train_batch_size", str(args.batch),
               "--seed", str(args.seed), "--log_format", "json", "--log_every_steps", "1",
               "--report_to", "none", "--validation_steps", "0", "--only_save_embeds",
               "--no-copy", "--checkpointing_steps", str(10**9), "--save_steps", str(10**9),
               *args.extra, *extra]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip().splitlines()[-1:]}
    losses = [json.loads(line)["loss"] for line in proc.stdout.splitlines()
              if line.startswith("{") and json.loads(line).get("event") == "step"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    vectors = torch.load(out / "learned_embeds.bin", weights_only=True)[TOKEN]
    tail = [x for x in losses[-max(1, len(losses) // 10) :] if x is not None]
    return {
        "name": name,
        "wall_s": wall,
        "train_loss_tail": sum(tail) / len(tail) if tail else float("nan"),
        "heldout_initializer": report["loss_initializer"],
        "heldout_learned": report["loss_learned"],
        "change_percent": report["change_percent"],
        "norm": vectors.float().norm(dim=-1).mean().item(),
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Steps {args.steps}, resolution {args.resolution}, batch {args.batch}, seed "
             f"{args.seed}, model {args.model}, images {args.images}, extra flags "
             f"{' '.join(args.extra) or 'none'}.", "",
             "| variant | wall s | train loss (last 10 %) | held-out loss: initializer -> learned "
             "| change | vector norm |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {' '.join(r['error'])} | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['wall_s']:.1f} | {r['train_loss_tail']:.4f} | "
                     f"{r['heldout_initializer']:.4f} -> {r['heldout_learned']:.4f} | "
                     f"{r['change_percent']:+.1f} % | {r['norm']:.4f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a diffusers pipeline folder")
    parser.add_argument("--images", type=Path, required=True, help="the concept's image folder")
    parser.add_argument("--initializer", default="*", help="--initializer_token for every run")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run these variants")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--work", type=Path, help="keep the runs' folders here (default: a temp)")
    parser.add_argument("extra", nargs="*", help="flags after -- go to every run")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        rows = []
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(run_variant(name, VARIANTS[name], args, work))
    text = table(rows, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
