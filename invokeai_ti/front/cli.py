"""`invokeai-ti`: InvokeAI 2.3's flags parsed into a TrainingConfig, then train / --gui / --inspect.

This is the only place a UserError becomes one line on stderr and an exit code. No torch here, so
`invokeai-ti --help` is instant; heavy modules are imported inside the actions that need them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from invokeai_ti import __version__, ranges
from invokeai_ti.config import (
    EMBEDDING_NORMS,
    EXPORT_FORMATS,
    LATEST,
    LEARNABLE_PROPERTIES,
    LOG_FORMATS,
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    OPTIMIZERS,
    REPORT_TO,
    TrainingConfig,
)
from invokeai_ti.errors import UserError
from invokeai_ti.front import config_file
from invokeai_ti.invokeai.root import absolute_path

PROG = "invokeai-ti"
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # only a write fails so
log = logging.getLogger("invokeai_ti")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and suggests the closest valid one."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            flag = next((arg for arg in unknown if arg.startswith("-")), unknown[0])
            name = flag.split("=", 1)[0]
            options = [opt for action in self._actions for opt in action.option_strings]
            close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]}?" if close else f" See `{PROG} --help`."
            kind = "flag" if name.startswith("-") else "argument"
            plain = name and name.isprintable() and not any(c.isspace() for c in name)
            self.error(f"unknown {kind} {name if plain else repr(name)}.{hint}")
        return parsed

    def _get_values(self, action, arg_strings):  # type: ignore[override]
        # argparse drops a '--' given as `--flag=--` and stores an empty list; it is the value.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            return self._get_value(action, "--")
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):
            # argparse reads `--learning_rate -1e-4` as two flags; only `=` keeps the value attached.
            message += ": give a value after the flag (one that starts with '-' as --flag=-1e-4)."
        where, _, rest = message.partition(": ")
        if where.startswith("argument ") and rest.startswith("--"):
            message = rest  # the ranges' messages name the flag themselves
        print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def one_line(text: str) -> str:
    """An error message as one printable line: control characters, line separators and bytes
    that are not text (surrogates) escaped, so a typed value cannot break the line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _number(group: argparse._ArgumentGroup, flag: str, help: str) -> None:
    """A numeric flag whose type, default and accepted range come from ranges.RANGES."""
    name = flag[2:]

    def parse(text: str) -> int | float | None:
        try:
            return ranges.parse(name, text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "integer" if ranges.RANGES[name].integer else "number"
    group.add_argument(flag, type=parse, default=getattr(TrainingConfig, name),
                       help=f"{help} [{ranges.RANGES[name].interval()}]")  # fmt: skip


def _resume_value(text: str) -> str:
    """2.3 compat: 2.3 parsed this as a Path and compared it with "latest", so latest never worked."""
    if text.strip().lower() == LATEST:
        return LATEST
    return str(absolute_path(text))


def build_parser() -> argparse.ArgumentParser:
    d = TrainingConfig()
    on_off = argparse.BooleanOptionalAction
    p = _Parser(
        prog=PROG,
        description="Textual inversion training for Stable Diffusion (InvokeAI 2.3 compatible).",
        allow_abbrev=False,  # a script's typo must never silently match another flag
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # fmt: off
    # The flag table keeps one flag to a line or two, aligned under its call, so the 2.3 flags read
    # as a table; ruff's one argument a line would make it twice as long.
    g = p.add_argument_group("General")
    g.add_argument("--front_end", "--gui", dest="front_end", action="store_true",
                   help="open the terminal front end instead of training from flags")
    g.add_argument("--root_dir", "--root", dest="root_dir", type=Path,
                   help="InvokeAI root (default: INVOKEAI_ROOT, $VIRTUAL_ENV/.., ~/invokeai)")
    g.add_argument("--logging_dir", type=Path, default=d.logging_dir,
                   help="TensorBoard log folder, relative to --output_dir")
    g.add_argument("--output_dir", type=Path,
                   help="checkpoints and embeddings (default: ROOT/text-inversion-output/<trigger>)")
    g.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")

    g = p.add_argument_group("Models")
    g.add_argument("--model", default=d.model,
                   help="models.yaml name, diffusers folder, .safetensors/.ckpt file or cached hub id")
    g.add_argument("--revision", help="model revision, for a hub id in the local cache")
    g.add_argument("--tokenizer_name", help="tokenizer folder or name, if not the model's own")

    g = p.add_argument_group("Data")
    g.add_argument("--train_data_dir", type=Path,
                   help="training images (default: ROOT/text-inversion-training-data/<trigger>); "
                   "relative paths are relative to the current folder")
    _number(g, "--resolution", help="training image size (px)")
    g.add_argument("--center_crop", action=on_off, default=d.center_crop,
                   help="crop images to a centred square before resizing")
    _number(g, "--repeats", help="times each image is used per epoch")
    _number(g, "--dataloader_num_workers", help="threads that decode images")
    g.add_argument("--cache_latents", action=on_off, default=d.cache_latents,
                   help="encode each image once with the VAE, then free the VAE")

    _add_caption_mask_config_flags(p, d)

    g = p.add_argument_group("Trigger term")
    g.add_argument("--placeholder_token", "--trigger_term", dest="placeholder_token",
                   help="the new word, e.g. '<my-cat>'")
    g.add_argument("--learnable_property", choices=LEARNABLE_PROPERTIES, default=d.learnable_property,
                   help="what the word stands for: object or style prompt templates")
    g.add_argument("--initializer_token", default=d.initializer_token,
                   help="one existing token the new vectors start from")
    _number(g, "--num_vectors", help="vectors per trigger term")
    g.add_argument("--init_embedding", type=Path,
                   help="start from an existing embedding file instead of --initializer_token")

    g = p.add_argument_group("Training")
    _number(g, "--seed", help="random seed (default: drawn once, stored in checkpoints)")
    _number(g, "--train_batch_size", help="images per step")
    _number(g, "--num_train_epochs",
            help="upper bound on epochs; training stops at whichever limit comes first")
    _number(g, "--max_train_steps", help="optimizer steps")
    _number(g, "--gradient_accumulation_steps", help="batches accumulated per optimizer step")
    g.add_argument("--gradient_checkpointing", action=on_off, default=d.gradient_checkpointing,
                   help="trade compute for memory in the UNet and text encoder")
    g.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default=d.mixed_precision,
                   help="frozen weights and activations in half precision (fp16 needs a GPU)")
    g.add_argument("--allow_tf32", action=on_off, default=d.allow_tf32,
                   help="allow TF32 matmuls on Ampere and newer GPUs")
    g.add_argument("--enable_xformers_memory_efficient_attention", action=on_off,
                   default=d.enable_xformers_memory_efficient_attention,
                   help="use xformers attention (must be installed; default is PyTorch SDPA)")
    _number(g, "--local_rank", help="kept for 2.3 compatibility; accelerate launch sets the rank")

    g = p.add_argument_group("Optimizer and schedule")
    _number(g, "--learning_rate", help="base learning rate")
    g.add_argument("--scale_lr", action=on_off, default=d.scale_lr,
                   help="multiply the lr by batch size x accumulation x processes")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=d.lr_scheduler, help="lr schedule")
    _number(g, "--lr_warmup_steps", help="warmup steps (schedules with warmup)")
    _number(g, "--lr_num_cycles", help="restarts for cosine_with_restarts")
    _number(g, "--adam_beta1", help="AdamW beta1")
    _number(g, "--adam_beta2", help="AdamW beta2")
    _number(g, "--adam_weight_decay", help="AdamW weight decay")
    _number(g, "--adam_epsilon", help="AdamW epsilon")

    g = p.add_argument_group("Optimizers and loss")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adamw; lion (use a 3-10x lower lr); prodigy (estimates the step size: "
                   "--learning_rate 1 --no-scale_lr); schedulefree_adamw (no decay schedule)")
    _number(g, "--max_grad_norm", help="clip the vectors' gradient to this norm (0: no clipping)")
    _number(g, "--min_snr_gamma", help="min-SNR loss weighting (0: off, as in 2.3)")
    _number(g, "--noise_offset",
            help="offset noise, e.g. 0.05, for very dark or light images (0: off)")
    g.add_argument("--embedding_norm", choices=EMBEDDING_NORMS, default=d.embedding_norm,
                   help="keep each vector at the vocabulary's mean norm and learn its direction "
                   "only, or free (2.3)")

    g = p.add_argument_group("Checkpoints and outputs")
    _number(g, "--checkpointing_steps", help="save a resumable checkpoint every N steps")
    _number(g, "--checkpoints_total_limit", help="keep only the newest N checkpoints")
    g.add_argument("--resume_from_checkpoint", type=_resume_value,
                   help="'latest' or a checkpoint folder; latest with none starts fresh")
    _number(g, "--save_steps", help="write learned_embeds-steps-N.bin every N steps")
    g.add_argument("--only_save_embeds", action=on_off, default=d.only_save_embeds,
                   help="do not save the full pipeline, only the embedding files")
    g.add_argument("--copy", dest="copy_to_embeddings", action=on_off, default=d.copy_to_embeddings,
                   help="copy the embedding into ROOT/embeddings/<trigger>/")
    g.add_argument("--export_format", action="append", choices=EXPORT_FORMATS,
                   help="output formats, repeatable (default: diffusers)")
    g.add_argument("--comfyui_embeddings_dir", type=Path,
                   help="ComfyUI's embeddings folder for --export_format comfyui")

    g = p.add_argument_group("Observability")
    g.add_argument("--report_to", choices=REPORT_TO, default=d.report_to, help="experiment tracker")
    g.add_argument("--log_format", choices=LOG_FORMATS, default=d.log_format,
                   help="progress: tqdm bar on a terminal, plain lines or JSON lines otherwise")
    _number(g, "--log_every_steps", help="steps between plain/json progress lines")
    g.add_argument("--validation_prompt", help="prompt for validation images (default: a template)")
    _number(g, "--num_validation_images", help="images per validation grid")
    _number(g, "--validation_steps", help="validate every N steps (default: --save_steps; 0: off)")
    _number(g, "--evaluation_budget",
            help="fraction of the training time the grids and the quality report may take; what "
                 "does not fit is skipped and said ('none': no limit)")
    _number(g, "--validation_loss_draws",
            help="a deterministic validation loss at every validation step, on this many fixed "
                 "(noise, timestep) draws per image (0: off)")
    g.add_argument("--save_best", action=on_off, default=d.save_best,
                   help="keep learned_embeds-best.bin, the step with the lowest validation loss")
    _number(g, "--early_stop_patience",
            help="stop after this many validations without a new best validation loss (0: off)")
    g.add_argument("--quality_report", action=on_off, default=d.quality_report,
                   help="write report.json (initializer vs learned loss) at the end")

    g = p.add_argument_group("Hub")
    g.add_argument("--push_to_hub", action=on_off, default=d.push_to_hub,
                   help="upload the output folder to the Hugging Face hub at the end")
    g.add_argument("--hub_model_id", help="hub repository for --push_to_hub")
    g.add_argument("--hub_token", help="hub token for --push_to_hub")

    g = p.add_argument_group("Actions")
    g.add_argument("--dry_run", action="store_true",
                   help="check root, model, tokens, images and outputs, print the plan, exit")
    g.add_argument("--eval_only", action="store_true",
                   help="write the quality report of a finished output folder, no training")
    g.add_argument("--inspect", type=Path, metavar="FILE", help="describe an embedding file and exit")
    # fmt: on
    return p


def _add_caption_mask_config_flags(p: argparse.ArgumentParser, d: TrainingConfig) -> None:
    """Issue 19's flags in one block, with kohya's names where kohya has the flag."""
    # fmt: off
    g = p.add_argument_group("Captions, masks, buckets and config files")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="read flags from a .toml or .yaml file (names without dashes); flags "
                   "given here win; every run writes its own into the output folder")
    g.add_argument("--caption_extension", metavar="EXT",
                   help="read each image's caption from a file beside it, e.g. .txt (cat.png -> cat.txt)")
    g.add_argument("--template_file", type=Path, metavar="FILE",
                   help="prompt templates, one a line, with {trigger}/[name] and {caption}/[filewords] "
                   "(none: the built-in object/style templates, then ', caption' with captions)")
    g.add_argument("--shuffle_caption", action=argparse.BooleanOptionalAction,
                   default=d.shuffle_caption, help="shuffle each caption's comma-separated tags")
    _number(g, "--keep_tokens", help="tags at the start of a caption that --shuffle_caption keeps "
                                    "in place")
    _number(g, "--caption_dropout_rate", help="share of samples trained without their caption")
    g.add_argument("--alpha_mask", action=argparse.BooleanOptionalAction, default=d.alpha_mask,
                   help="weight the loss by each image's alpha channel (transparent: not learned)")
    g.add_argument("--mask_extension", metavar="EXT",
                   help="weight the loss by a mask image beside each image, e.g. _mask.png "
                   "(cat.png -> cat_mask.png; white: learned, black: not)")
    _number(g, "--masked_prior_preservation_weight",
            help="outside the mask, keep the model's prediction as the initializer had it, with "
            "this weight, so the background does not leak into the token (0: off)")
    g.add_argument("--enable_bucket", action=argparse.BooleanOptionalAction, default=d.enable_bucket,
                   help="train each image at the aspect-ratio bucket closest to its own, "
                   "about --resolution squared in area, batches from one bucket")
    _number(g, "--min_bucket_reso", help="smallest bucket side (px)")
    _number(g, "--max_bucket_reso", help="largest bucket side (px)")
    _number(g, "--bucket_reso_steps", help="bucket sides are multiples of this (px)")
    # fmt: on


def parse_config(argv: Sequence[str] | None = None) -> tuple[TrainingConfig, argparse.Namespace]:
    """Flags -> TrainingConfig; a --config file's values stand in for the defaults, so every flag
    given on the command line wins over the file."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        args = config_file.apply_config_file(parser, argv, absolute_path(str(args.config)))
    # None means "not given", except where the flag's own default is a value ("none": no limit).
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainingConfig)
        if hasattr(args, f.name)
        and (getattr(args, f.name) is not None or parser.get_default(f.name) is not None)
    }
    return TrainingConfig(**values), args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, args = parse_config(argv)
    except UserError as exc:  # a bad --config file: one line, as argparse says a bad flag
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _setup_logging(config.debug)
    try:
        return _dispatch(config, args)
    except UserError as exc:
        if config.debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch, one copy of the line
            print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG and not config.debug:  # any typed path may be too long
            name = one_line(str(exc.filename or ""))
            print(f"{PROG}: error: {name[:100]}{'...' if len(name) > 100 else ''}: a file or "
                  "folder name is longer than this system allows: give a shorter one.",
                  file=sys.stderr)  # fmt: skip
            return 2
        if exc.errno not in WRITE_FAILURES or config.debug:
            raise
        # A write outside the checkpoint path (step embedding, plot, log) hit a full or read-only
        # disk: still one line, and checkpoints are written atomically, so none is damaged.
        print(f"{PROG}: error: could not write {exc.filename or 'an output file'}: {exc.strerror}. "
              "Free some space, then resume with "
              "--resume_from_checkpoint=latest.", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt as exc:  # a plain one: Ctrl-C before the trainer's handlers exist
        reason = str(exc) or "interrupted before the first optimizer step: nothing to save."
        print(f"{PROG}: {reason}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


def _dispatch(config: TrainingConfig, args: argparse.Namespace) -> int:
    if args.inspect is not None:
        from invokeai_ti.files.formats import describe_embedding_file

        print(describe_embedding_file(args.inspect))
        return 0
    if config.front_end:
        if importlib.util.find_spec("textual") is None:
            raise UserError("--gui needs the textual package, missing here: pip install textual.")
        from invokeai_ti.front.gui.app import CANCELLED_EXIT_CODE, run_gui

        config = run_gui(config)  # then trained exactly as if its flags had been typed
        if config is None:
            return CANCELLED_EXIT_CODE
    from invokeai_ti.invokeai.root import apply_root_defaults

    config.validate()
    config = apply_root_defaults(config)
    if config.eval_only:
        from invokeai_ti.train.evaluation import evaluate_output

        print(evaluate_output(config))
        return 0
    from invokeai_ti.train.loop import train

    result = train(config)
    for line in result.lines:
        print(line)
    return result.exit_code


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "filelock", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
