"""Issue 19's claims on the concept world: captions that name the background make the token more
editable, and alpha masks stop the training background from leaking into the token. Each
condition is measured against the same run without it, in the same invocation.

    python examples/concepts_data.py --out /tmp/data-claims [--concepts yellow-square ...]

Per concept, 5 renders, the real invokeai-ti CLI (the experiment's settings, 150 steps), then
32 judged samples of "a photo of a <t>" and of "a photo of a <t> on a black background":
- captions: renders alternating white and gray backgrounds, and renders all on white; plain
  (built-in templates) against captioned (a `.txt` caption naming each image's background beside
  it, and a template file of the built-in templates with ` [filewords]` appended, A1111's
  spelling);
- masks: renders all on white; plain against `--alpha_mask` (alpha 255 on the shape, 0 on the
  background). Leakage is the share of "a photo of a <t>" samples drawn on the training
  background, next to the caption's own share for the same prompt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SAMPLES, STEPS = 32, 150  # --samples/--steps change them for a smoke run
CONCEPTS = ["yellow-square", "green-circle", "yellow-triangle", "red-square", "blue-circle"]
EDIT_BACKGROUND = "black"
# name -> (backgrounds: "varied" white and gray, or all "white"; alpha channel; caption files;
# trainer flags). Caption files come with the template file ("template") or the built-in
# templates, which gain ", {caption}" ("builtin"); CAPTION_FLAGS holds each mode's flags.
PRIOR = "--masked_prior_preservation_weight"
CONDITIONS = {
    "varied-plain": ("varied", False, False, []),
    "varied-captions": ("varied", False, "template", []),
    "white-captions": ("white", False, "template", []),
    "white-plain": ("white", False, False, []),
    "white-alpha": ("white", True, False, ["--alpha_mask"]),
    "white-alpha-prior0.3": ("white", True, False, ["--alpha_mask", f"{PRIOR}=0.3"]),
    "white-alpha-prior1": ("white", True, False, ["--alpha_mask", f"{PRIOR}=1"]),
    "white-alpha-prior3": ("white", True, False, ["--alpha_mask", f"{PRIOR}=3"]),
    "varied-captions-builtin": ("varied", False, "builtin", []),
}
FIRST_CONDITIONS = list(CONDITIONS)[:5]  # the 2026-12-05 run's


def render_set(concept: str, folder: Path, backgrounds: list[str], alpha: bool,
               captions: str | bool) -> None:  # fmt: skip
    import random

    from PIL import Image

    from invokeai_ti.concepts.experiment import TRAIN_CAPTION
    from invokeai_ti.concepts.world import BACKGROUNDS, random_scene, render

    folder.mkdir(parents=True, exist_ok=True)
    for i, background in enumerate(backgrounds):
        scene = random_scene(random.Random(1000 + i), concept, background)
        pixels = render(scene)
        image = Image.fromarray(pixels)
        if alpha:  # the shape, antialiased edges included, is the subject
            distance = np.abs(pixels.astype(int) - np.array(BACKGROUNDS[background])).max(axis=2)
            image.putalpha(Image.fromarray(np.where(distance > 8, 255, 0).astype(np.uint8)))
        image.save(folder / f"{i}.png")
        if captions:
            (folder / f"{i}.txt").write_text(TRAIN_CAPTION.format(background) + "\n")


def train(concept: str, images: Path, output: Path, flags: list[str], model: Path) -> Path:
    from invokeai_ti.concepts.experiment import ExperimentSettings, train_ours

    settings = ExperimentSettings([concept], model, output.parent, steps=STEPS, save_steps=STEPS,
                                  captions=False, lr_scheduler="constant",  # its own conditions
                                  extra_flags=flags)  # fmt: skip
    run = train_ours(settings, images, output, settings.steps)
    return run.step_files[-1][1]


def judge(pipe, prompt: str, concept: str, background: str | None = None) -> dict:
    from invokeai_ti.concepts.judge import judge_image
    from invokeai_ti.concepts.sampling import sample

    verdicts = [judge_image(i) for i in sample(pipe, prompt, SAMPLES, 0)]
    shares = {
        b: sum(v.background == b for v in verdicts) / SAMPLES for b in ("white", "gray", "black")
    }
    hit = sum(v.concept == concept and (background is None or v.background == background)
              for v in verdicts) / SAMPLES  # fmt: skip
    return dict(rate=hit, backgrounds=shares)


def measure_concept(pipe, concept: str, out: Path, model: Path, template_file: Path,
                    conditions: list[str]) -> dict:  # fmt: skip
    from invokeai_ti.concepts.experiment import EDIT, PROMPT, load_embedding_as
    from invokeai_ti.concepts.world import parse_concept

    colour, shape = parse_concept(concept)
    row: dict = {"concept": concept}
    row["caption"] = judge(pipe, PROMPT.format(f"{colour} {shape}"), concept)
    row["caption_edit"] = judge(pipe, EDIT.format(f"{colour} {shape}", EDIT_BACKGROUND), concept,
                                EDIT_BACKGROUND)  # fmt: skip
    caption_flags = {"template": ["--caption_extension=.txt", f"--template_file={template_file}"],
                     "builtin": ["--caption_extension=.txt"]}  # fmt: skip
    for name in conditions:
        kind, alpha, captions, flags = CONDITIONS[name]
        backgrounds = ["white", "gray"] * 2 + ["white"] if kind == "varied" else ["white"] * 5
        flags = flags + caption_flags[captions] if captions else flags
        images = out / concept / name / "images"
        render_set(concept, images, backgrounds, alpha, captions)
        started = time.time()
        embedding = train(concept, images, out / concept / name / "run", flags, model)
        words = load_embedding_as(pipe, embedding)
        row[name] = dict(learned=judge(pipe, PROMPT.format(words), concept),
                         edit=judge(pipe, EDIT.format(words, EDIT_BACKGROUND), concept,
                                    EDIT_BACKGROUND),
                         seconds=round(time.time() - started, 1), flags=flags)  # fmt: skip
        print(f"{concept} {name}: recovery {row[name]['learned']['rate']:.2f}, edit "
              f"{row[name]['edit']['rate']:.2f}, white share "
              f"{row[name]['learned']['backgrounds']['white']:.2f}", flush=True)  # fmt: skip
    return row


def table(rows: list[dict]) -> str:
    def mean(*keys: str) -> float:
        total = 0.0
        for r in rows:
            for key in keys:
                r = r[key]
            total += r
        return total / len(rows)

    measured = [name for name in CONDITIONS if all(name in r for r in rows)]
    # Two leaks: the token alone drawing white, and white drawn where the prompt asks for black.
    lines = ["| condition | recovery | edit to black (concept and black) | samples on white | "
             "edit samples on white |", "|---|---|---|---|---|"]  # fmt: skip
    lines.append(f"| caption (the ceiling) | {mean('caption', 'rate'):.2f} | "
                 f"{mean('caption_edit', 'rate'):.2f} | "
                 f"{mean('caption', 'backgrounds', 'white'):.2f} | "
                 f"{mean('caption_edit', 'backgrounds', 'white'):.2f} |")  # fmt: skip
    for name in measured:
        lines.append(f"| {name} | {mean(name, 'learned', 'rate'):.2f} | "
                     f"{mean(name, 'edit', 'rate'):.2f} | "
                     f"{mean(name, 'learned', 'backgrounds', 'white'):.2f} | "
                     f"{mean(name, 'edit', 'backgrounds', 'white'):.2f} |")  # fmt: skip
    lines += [
        "",
        "Per concept: recovery / edit to black / samples on white.",
        "",
        "| concept | " + " | ".join(measured) + " |",
        "|---" * (1 + len(measured)) + "|",
    ]
    for r in rows:
        cells = [
            f"{r[n]['learned']['rate']:.2f} / {r[n]['edit']['rate']:.2f} / "
            f"{r[n]['learned']['backgrounds']['white']:.2f}"
            for n in measured
        ]
        lines.append(f"| {r['concept']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    global SAMPLES, STEPS
    from invokeai_ti.concepts.experiment import write_caption_templates
    from invokeai_ti.concepts.sampling import MODEL_DIR, load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concepts", nargs="+", default=CONCEPTS)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS),
                        default=FIRST_CONDITIONS)  # fmt: skip
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="print the tables of OUT/results.json (the concepts measured so far)",
    )
    args = parser.parse_args()
    if args.table_only:
        print(table(json.loads((args.out / "results.json").read_text())))
        return
    SAMPLES, STEPS = args.samples, args.steps
    args.out.mkdir(parents=True, exist_ok=True)
    template_file = args.out / "templates.txt"
    write_caption_templates(template_file)
    pipe = load_pipeline(args.model)
    rows = []
    for concept in args.concepts:
        rows.append(measure_concept(pipe, concept, args.out, args.model, template_file,
                                    args.conditions))  # fmt: skip
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    (args.out / "results.md").write_text(text)


if __name__ == "__main__":
    main()
