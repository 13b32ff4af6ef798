"""Does the validation loss's best step agree with the judged recovery's best step? (issue 20)

    python -m invokeai_ti.concepts experiment --concept green-circle blue-square red-triangle \
        --out OUT --steps 300 --save_steps 50 --trainer_flag=--validation_steps=50 \
        --trainer_flag=--save_best --trainer_flag=--num_validation_images=0
    python examples/validation_agreement.py OUT

Reads the experiment's results.json (judged recovery of every saved embedding) and each run's last
checkpoint (the validation losses at the same steps) and prints, per concept, both series, their
best steps and how many validation intervals apart those are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the experiment's --out folder")
    out = parser.parse_args().out
    results = json.loads((out / "results.json").read_text())
    lines = ["| concept | step: recovery | step: validation loss | best recovery at | lowest "
             "validation loss at | intervals apart |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in results["rows"]:
        concept = row["concept"]
        recovery = {p["step"]: p["rate"] for p in row["ours_curve"]}
        checkpoints = sorted((out / concept / "ours").glob("checkpoint-*"),
                             key=lambda p: int(p.name.split("-")[1]))  # fmt: skip
        state = json.loads((checkpoints[-1] / "state.json").read_text())
        losses = {int(step): loss for step, loss in state["progress"]["validation_losses"]}
        best_recovery = max(recovery, key=lambda s: (recovery[s], -s))
        best_loss = min(losses, key=lambda s: (losses[s], s))
        interval = min(b - a for a, b in zip(sorted(losses), sorted(losses)[1:]))
        lines.append(
            f"| {concept} | {', '.join(f'{s}: {r:.2f}' for s, r in sorted(recovery.items()))} | "
            f"{', '.join(f'{s}: {v:.5f}' for s, v in sorted(losses.items()))} | {best_recovery} | "
            f"{best_loss} | {abs(best_recovery - best_loss) / interval:g} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
