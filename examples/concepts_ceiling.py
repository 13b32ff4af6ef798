"""How often the concept world's model draws each caption (issue 17's ">= 90 % from its own
captions"), against a baseline model in the same invocation.

    python examples/concepts_ceiling.py --baseline /tmp/old-model --out ceiling.md
    # the CPU-pretrained model of 7df4db8, as a baseline:
    mkdir -p /tmp/old-model && git archive 7df4db8 invokeai_ti/concepts/model | tar -x -C /tmp/old-model

32 samples per prompt "a photo of a {colour} {shape}" (the unnamed ring: "round {colour} shape",
its nearest caption after --round_share pretraining, and "{colour} shape"), seeds 0-31, the
shipped sampler (DDIM 20 steps, guidance 2 unless --guidance), each judged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def rates(model: Path, samples: int, guidance: float) -> dict[str, dict[str, float]]:
    import torch

    from invokeai_ti.concepts import sampling
    from invokeai_ti.concepts.experiment import PROMPT
    from invokeai_ti.concepts.judge import judge_image
    from invokeai_ti.concepts.world import CONCEPTS, is_named, nearest_caption, parse_concept

    torch.set_num_threads(1)
    sampling.GUIDANCE_SCALE = guidance
    pipe = sampling.load_pipeline(model)
    out = {}

    def judged(concept: str, subject: str) -> dict[str, float]:
        verdicts = [judge_image(i) for i in sampling.sample(pipe, PROMPT.format(subject), samples)]
        colour = parse_concept(concept)[0]
        return dict(concept=sum(v.concept == concept for v in verdicts) / samples,
                    colour=sum(v.colour == colour for v in verdicts) / samples)  # fmt: skip

    for concept in CONCEPTS:
        out[concept] = judged(concept, nearest_caption(concept, round_word=True))
        if not is_named(concept):  # the bare words too, the only caption the shipped model knows
            out[f"{concept} ('{nearest_caption(concept)}')"] = judged(
                concept, nearest_caption(concept)
            )
    return out


def table(models: dict[str, dict], concepts: list[str]) -> str:
    names = list(models)
    head = " | ".join(f"{n}: concept | {n}: colour" for n in names)
    lines = [f"| caption subject | {head} |", "|---" * (1 + 2 * len(names)) + "|"]
    for c in concepts:
        cells = " | ".join(
            f"{models[n][c]['concept']:.2f} | {models[n][c]['colour']:.2f}" for n in names
        )
        lines.append(f"| {c} | {cells} |")
    from invokeai_ti.concepts.world import CONCEPTS, is_named

    # Rows are concepts or "{concept} ('{words}')" variants; only plain named concepts count.
    named = [c for c in concepts if c in CONCEPTS and is_named(c)]
    means = " | ".join(f"**{sum(models[n][c]['concept'] for c in named) / len(named):.2f}** | "
                       for n in names)  # fmt: skip
    lines.append(f"| **mean of the named** | {means}")
    if len(names) == 2:
        a, b = (sum(models[n][c]["concept"] for c in named) for n in names)
        lines.append(f"\nRatio {names[0]} / {names[1]} (named concepts): {a / max(b, 1e-9):.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    from invokeai_ti.concepts.sampling import GUIDANCE_SCALE, MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    models = {"model": rates(args.model, args.samples, args.guidance)}
    if args.baseline:
        models["baseline"] = rates(args.baseline, args.samples, args.guidance)
    text = table(models, list(models["model"]))
    text += f"\n{args.samples} samples per prompt, guidance {args.guidance}, {time.time() - started:.0f} s.\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(models, indent=1))


if __name__ == "__main__":
    main()
