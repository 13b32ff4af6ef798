"""Issue 20's learning options on the concept world: recovery over steps and editability of
every option on the same concepts, images and seeds, against the baseline run in the same
invocation (the experiment's tuned AdamW) and against 2.3's defaults.

    python examples/concepts_options.py --out /tmp/options [--only base lion] \\
        [--concepts yellow-square green-circle yellow-triangle red-square blue-square]
    python examples/concepts_options.py --out /tmp/options --table-only   # the table of what ran

Each variant is one `python -m invokeai_ti.concepts experiment` (the real invokeai-ti CLI for
training, 32 judged samples per prompt) with the variant's flags appended to the experiment's
own (`--trainer_flag`), in WORK/VARIANT/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONCEPTS = ["yellow-square", "green-circle", "yellow-triangle", "red-square", "blue-square"]
# name -> flags on top of the experiment's settings (AdamW, constant lr 5e-3, no scale_lr,
# batch 4, no weight decay, 150 steps). Lion takes a lr 10x below AdamW's; Prodigy's lr
# multiplies its own estimate.
DEFAULTS_23 = ["--learning_rate=1e-4", "--scale_lr", "--lr_warmup_steps=500",
               "--adam_weight_decay=1e-2", "--train_batch_size=8"]  # fmt: skip
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "defaults-2.3": DEFAULTS_23,
    "lion": ["--optimizer=lion", "--learning_rate=5e-4"],
    "prodigy": ["--optimizer=prodigy", "--learning_rate=1"],
    "schedulefree": ["--optimizer=schedulefree_adamw"],
    "clip1": ["--max_grad_norm=1"],
    "minsnr5": ["--min_snr_gamma=5"],
    "offset0.05": ["--noise_offset=0.05"],
    "keepnorm": ["--embedding_norm=keep"],
    "minsnr5+keepnorm": ["--min_snr_gamma=5", "--embedding_norm=keep"],
}
# 2.3's defaults with the two new flags on: what a default run would be if their defaults changed.
VARIANTS["defaults-2.3+minsnr5+keepnorm"] = DEFAULTS_23 + VARIANTS["minsnr5+keepnorm"]


PEER = "diffusers script"
FLAGS_OF = {"base": "(the experiment: AdamW, lr 5e-3 constant)",
            PEER: "(its own defaults: lr 1e-4 constant, batch 16; from --peer_results)"}  # fmt: skip


# Every variant starts from 2.3's plain objective and free vectors, so a row means what it meant
# before min-SNR and the held norm became the trainer's defaults; a variant's flags come after.
PLAIN = ["--min_snr_gamma=0", "--embedding_norm=free"]
# The experiment as these rows measured it, before it captioned its pictures and decayed the lr.
EXPERIMENT_2026_12_05 = ["--no-captions", "--lr_scheduler=constant"]


def run_variant(name: str, concepts: list[str], out: Path, steps: int, save_steps: int) -> None:
    cmd = [sys.executable, "-m", "invokeai_ti.concepts", "experiment", "--concept", *concepts,
           "--out", str(out / name), "--steps", str(steps), "--save_steps", str(save_steps),
           *EXPERIMENT_2026_12_05,
           *[f"--trainer_flag={flag}" for flag in PLAIN + VARIANTS[name]]]  # fmt: skip
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    (out / name / "command.txt").write_text(" ".join(cmd[1:]) + "\n")
    status = "ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}"
    print(f"{name}: {status} ({time.time() - started:.0f} s)", flush=True)


def peer_rows(experiment_json: Path, concepts: list[str]) -> list[dict]:
    """The diffusers script's rows of an experiment run with --peer_script, in the shape of ours,
    for the given concepts (the same images, seeds and steps as this file's base run)."""
    by_concept = {r["concept"]: r for r in json.loads(experiment_json.read_text())["rows"]}
    return [dict(by_concept[c], learned=by_concept[c]["peer"],
                 learned_edit=by_concept[c]["peer_edit"], ours_curve=by_concept[c]["peer_curve"],
                 ours_seconds_to_90pct=by_concept[c]["peer_seconds_to_90pct"],
                 ours_wall_seconds=by_concept[c]["peer_wall_seconds"])
            for c in concepts if c in by_concept]  # fmt: skip


def table(out: Path, peer_results: Path | None = None) -> str:
    rows = {}
    for name in VARIANTS:
        path = out / name / "results.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())["rows"]
    if not rows:
        return "no variant has run yet\n"
    # The reference: the experiment's settings if they ran, else the first variant that did.
    reference = "base" if "base" in rows else next(iter(rows))
    concepts = [r["concept"] for r in rows[reference]]
    if peer_results is not None:
        rows[PEER] = peer_rows(peer_results, concepts)
    # Every table lines its cells up by concept: a variant run on other concepts has no row.
    rows = {name: r for name, r in rows.items() if [x["concept"] for x in r] == concepts}
    base = _summary(rows[reference])
    lines = [f"| option | flags | recovery at steps {' / '.join(map(str, base['steps']))} (mean "
             "over concepts) | learned / caption | edit: learned / caption | s to 90 % of caption "
             f"(mean, reached) | wall s | vs {reference}: recovery, edit |", "|---" * 8 + "|"]  # fmt: skip
    for name, variant_rows in rows.items():
        s = _summary(variant_rows)
        curve = " / ".join(f"{v:.2f}" for v in s["curve"])
        lines.append(
            f"| {name} | {' '.join(VARIANTS.get(name, [])) or FLAGS_OF.get(name, '')} | "
            f"{curve} | {s['learned']:.2f} / {s['caption']:.2f} | {s['edit']:.2f} / {s['caption_edit']:.2f} | "
            f"{s['to90']} | {s['wall']:.0f} | {s['learned'] / max(base['learned'], 1e-9):.2f}, "
            f"{s['edit'] / max(base['edit'], 1e-9):.2f} |"
        )
    lines.append("")
    lines.append("Per concept, final recovery (learned; caption in brackets):")
    lines.append("")
    lines.append("| option | " + " | ".join(concepts) + " |")
    lines.append("|---" * (len(concepts) + 1) + "|")
    for name, variant_rows in rows.items():
        cells = " | ".join(f"{r['learned']:.2f} ({r['caption']:.2f})" for r in variant_rows)
        lines.append(f"| {name} | {cells} |")
    lines += ["", f"Per concept, seconds to 90 % of the caption (- not reached), and the ratio to "
              f"{reference} where both reach it:", "",
              "| option | " + " | ".join(concepts) + " |", "|---" * (len(concepts) + 1) + "|"]  # fmt: skip
    for name, variant_rows in rows.items():
        cells = []
        for r, ref in zip(variant_rows, rows[reference]):
            own, theirs = r["ours_seconds_to_90pct"], ref["ours_seconds_to_90pct"]
            ratio = f" ({own / theirs:.2f}x)" if own and theirs and name != reference else ""
            cells.append(f"{own:.1f} s{ratio}" if own is not None else "-")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _summary(rows: list[dict]) -> dict:
    n = len(rows)
    # Every 50th step only, so runs saved every 10 steps and every 50 share the column.
    steps = sorted({p["step"] for r in rows for p in r["ours_curve"]})
    steps = [s for s in steps if s % 50 == 0] or steps
    curve = [sum(next((p["rate"] for p in r["ours_curve"] if p["step"] == s), 0) for r in rows) / n
             for s in steps]  # fmt: skip
    reached = [r["ours_seconds_to_90pct"] for r in rows if r["ours_seconds_to_90pct"] is not None]
    to90 = (
        f"{sum(reached) / len(reached):.1f} s ({len(reached)}/{n})" if reached else f"never (0/{n})"
    )
    return dict(steps=steps, curve=curve, learned=sum(r["learned"] for r in rows) / n,
                caption=sum(r["caption"] for r in rows) / n,
                edit=sum(r["learned_edit"] for r in rows) / n,
                caption_edit=sum(r["caption_edit"] for r in rows) / n, to90=to90,
                wall=sum(r["ours_wall_seconds"] for r in rows) / n)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--concepts", nargs="+", default=CONCEPTS)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--save_steps", type=int, default=50)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--peer_results",
        type=Path,
        default=None,
        help="an experiment's results.json run with --peer_script on the same "
        "concepts, steps and save steps: adds the diffusers script's row",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name in args.only:
            run_variant(name, args.concepts, args.out, args.steps, args.save_steps)
    text = table(args.out, args.peer_results)
    print(text)
    (args.out / "options.md").write_text(text)


if __name__ == "__main__":
    main()
