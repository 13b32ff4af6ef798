"""`python -m invokeai_ti.concepts list | render | judge | model | experiment`: the concept world's
commands. Bad input is one line on stderr and exit code 2, as in the trainer's CLI."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from invokeai_ti.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m invokeai_ti.concepts",
                                     description="The concept world: render, judge, the "
                                     "pretrained miniature SD and the inversion experiment.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every concept name; the ones captions never name are marked")
    render = sub.add_parser("render", help="write N pictures of a concept")
    render.add_argument("concept")
    render.add_argument("dir", type=Path)
    render.add_argument("--count", type=int, default=5)
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--background", default=None, help="white, black or gray (default: drawn)")
    judge = sub.add_parser(
        "judge", help="print JSON: fraction of images per concept and background"
    )
    judge.add_argument("dir", type=Path)
    model = sub.add_parser("model", help="write the pretrained pipeline (a diffusers folder)")
    model.add_argument("dir", type=Path)
    model.add_argument(
        "--pretrain",
        action="store_true",
        help="train it again from --seed instead of copying the shipped weights",
    )
    # --pretrain's options default to None (not given); PretrainSettings holds their defaults.
    model.add_argument("--seed", type=int, help="(default 0)")
    model.add_argument("--vae_steps", type=int)
    model.add_argument("--unet_steps", type=int)
    model.add_argument("--batch_size", type=int)
    model.add_argument("--device", help="cpu (the default; reproducible on any machine) or cuda")
    model.add_argument("--pool_size", type=int,
                       help="render this many scenes once and draw batches from them (for a GPU)")  # fmt: skip
    model.add_argument("--unet_seconds", type=float,
                       help="stop the UNet at this wall time; pretrain.json says the step")  # fmt: skip
    model.add_argument("--snapshot_every", type=int)
    model.add_argument("--learning_rate", type=float)
    model.add_argument("--generic_share", type=float,
                       help="how often captions call a named shape 'shape' (default 1/3)")  # fmt: skip
    model.add_argument("--round_share", type=float,
                       help="how often a circle or ring called 'shape' is said to be round "
                       "(default 0, the shipped model)")  # fmt: skip
    model.add_argument("--round_named", action="store_true", default=None,
                       help="say 'round' of circles called by name too (with --round_share)")  # fmt: skip
    model.add_argument("--freeze_unet", action="store_true", default=None,
                       help="with --continue_from: train only the text encoder, keep the UNet")  # fmt: skip
    model.add_argument("--continue_from", type=Path,
                       help="a pipeline folder to train further (its VAE kept) instead of "
                       "starting from random weights")  # fmt: skip
    from invokeai_ti.concepts.experiment import add_arguments

    add_arguments(sub.add_parser("experiment", help="recover a concept with invokeai-ti, judged"))
    return parser


def _list() -> None:
    from invokeai_ti.concepts.world import CONCEPTS, is_named, nearest_caption

    for concept in CONCEPTS:
        note = (
            ""
            if is_named(concept)
            else f"  (unnamed: captions call it '{nearest_caption(concept)}')"
        )
        print(concept + note)


def _model(args: argparse.Namespace) -> None:
    from invokeai_ti.concepts.sampling import MODEL_DIR

    # Every option of `model` but the folder and --pretrain itself is a PretrainSettings field.
    given = {
        name: value
        for name, value in vars(args).items()
        if name not in ("command", "dir", "pretrain") and value is not None
    }
    if args.dir.exists() and any(args.dir.iterdir()):
        raise UserError(f"{args.dir} exists and is not empty: give a new folder.")
    if not args.pretrain:
        if given:
            flags = " ".join(f"--{name}" for name in given)
            raise UserError(f"{flags}: only with --pretrain; add it to train a model, or leave "
                            "them out to copy the shipped one.")  # fmt: skip
        shutil.copytree(MODEL_DIR, args.dir, dirs_exist_ok=True)
        print(f"Wrote the pretrained concept-world pipeline to {args.dir}")
        return
    from invokeai_ti.concepts.pretrain import PretrainSettings, pretrain

    source = given.pop("continue_from", None)
    settings = PretrainSettings(**given)
    if source is not None:
        if not (source / "unet").is_dir():
            raise UserError(f"--continue_from {source}: not a concept-world pipeline folder (no "
                            "unet/); give one that `model DIR` wrote.")  # fmt: skip
        settings.continue_from = str(source)
    elif settings.freeze_unet:
        raise UserError("--freeze_unet: a random UNet cannot stay frozen; give --continue_from.")
    if settings.round_named and not settings.round_share:
        raise UserError("--round_named says 'round' of named circles as often as --round_share "
                        "says it of any; give --round_share above 0 with it.")  # fmt: skip
    for name in ("generic_share", "round_share"):
        if not 0 <= getattr(settings, name) <= 1:
            raise UserError(f"--{name} {getattr(settings, name)}: a share of captions, 0 to 1.")
    import torch

    if settings.device == "cpu":
        torch.set_num_threads(1)  # one thread: the same seed gives the same weights on any CPU
    elif not torch.cuda.is_available():
        raise UserError(f"--device {settings.device}: no CUDA GPU is visible; use --device cpu.")
    pretrain(args.dir, settings)
    print(f"Pretrained the concept-world pipeline from seed {settings.seed} into {args.dir}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            _list()
        elif args.command == "render":
            from invokeai_ti.concepts.world import render_concept

            paths = render_concept(args.concept, args.dir, args.count, args.seed, args.background)
            print(f"Wrote {len(paths)} images of {args.concept} to {args.dir}")
        elif args.command == "judge":
            from invokeai_ti.concepts.judge import judge_folder, to_json

            print(to_json(judge_folder(args.dir)))
        elif args.command == "model":
            _model(args)
        else:
            from invokeai_ti.concepts.experiment import run_from_args

            paths = run_from_args(args)
            print(f"Results: {', '.join(str(p) for p in paths)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
