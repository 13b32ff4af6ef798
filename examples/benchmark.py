"""Speed and memory of a textual-inversion step: our trainer against the hardware limit and the
upstream recipe, on an SD1.5-shaped random model built offline.

    python examples/benchmark.py --sizes 128 256 512 --precisions fp32 bf16 --steps 3 --out results.md

Variants, each measured in its own process (so peak RSS is that variant's alone), interleaved
per (resolution, precision) so that machine load hits them alike:

- limit:    text encoder + UNet forward and backward to one trainable vector; nothing else.
- ours:     invokeai-ti's own setup() and optimizer_step() (latent cache, leaf vectors).
- baseline: the upstream recipe (diffusers' textual_inversion.py, InvokeAI 2.3): the whole token
            embedding matrix in AdamW, the VAE encoding every step, the other rows restored.
- peer:     with --peer SCRIPT, also the real diffusers script, unmodified (see
            ../shared/tools/README.md for its torchvision overlay), timed as the difference of a
            short and a long run, so that its model loading is not counted.
- ours-nocache / ours-gc / ours-cl: ours with --no-cache_latents, --gradient_checkpointing, or the
            UNet in channels_last (opt-in with --variants, to measure those choices).
- limit-compile: the limit with the UNet under torch.compile (inductor; it compiles during the
            warm-up steps), to see whether compiling would lower the floor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKEN, INITIALIZER = "<bench>", "toy"
DEFAULT_VARIANTS = ("limit", "ours", "baseline")
EXTRA_VARIANTS = ("ours-nocache", "ours-gc", "ours-cl", "limit-compile", "peer")


# --- parent: build the model once, run each variant in a child, print the table ---------------


def ensure_model(cache: Path) -> Path:
    """The SD1.5-shaped random pipeline, built once into `cache` (atomically: partial, rename)."""
    folder = cache / "sd15-sd1"
    if (folder / "model_index.json").is_file():
        return folder
    from invokeai_ti.models.tiny import save_tiny_model

    partial = cache / "sd15-sd1.partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"Building the SD1.5-shaped random model in {folder} (once) ...", flush=True)
    save_tiny_model(partial, family="sd1", shape="sd15")
    partial.rename(folder)
    return folder


def ensure_images(cache: Path, count: int) -> Path:
    folder = cache / f"images-{count}"
    if not folder.is_dir():
        partial = cache / f"images-{count}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for path in sorted((HERE / "images").glob("*.png"))[:count]:
            shutil.copy(path, partial / path.name)
        partial.rename(folder)
    return folder


def measure(args: argparse.Namespace, variant: str, px: int, precision: str, model: Path,
            images: Path) -> dict:  # fmt: skip
    """Run one variant in a fresh process; its peak RSS comes from wait4, like getrusage there."""
    row = dict(variant=variant, px=px, precision=precision)
    if variant == "peer":
        return dict(row, **_measure_peer(args, px, precision, model, images))
    cmd = [sys.executable, __file__, "--child", variant, "--sizes", str(px),
           "--precisions", precision, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--model_cache", str(args.model_cache), "--num_images", str(args.num_images)]  # fmt: skip
    result, peak_rss = _run(cmd, {}, f"{variant} {px}px {precision}")
    return dict(row, peak_rss=peak_rss, **(result or {"error": True}))


def _run(cmd: list, env: dict, what: str) -> tuple[dict | None, int]:
    """Run cmd in a temporary folder (its cwd); (the JSON it wrote to $RESULT_JSON, or None when it
    failed; its peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        # Our child writes RESULT_JSON; the peer launcher writes the same file as TIMING_JSON.
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                        RESULT_JSON=str(result_path), TIMING_JSON=str(result_path), **env)  # fmt: skip
        log = Path(tmp) / "log.txt"
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp
            )
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not result_path.is_file():
            tail = log.read_text(errors="replace")[-1500:]
            print(f"  {what} FAILED:\n{tail}", file=sys.stderr)
            return None, usage.ru_maxrss * 1024
        return json.loads(result_path.read_text()), usage.ru_maxrss * 1024


def _measure_peer(args, px: int, precision: str, model: Path, images: Path) -> dict:
    """The real diffusers script, run twice: with warmup + 1 and with warmup + 1 + steps steps.
    The launcher stamps every tqdm update, the model-loading bars of transformers too, so its own
    steps/s mixes loading into training; the difference between the two runs' last-step times
    is `steps` training steps alone."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [args.peer_pythonpath,
                                                       os.environ.get("PYTHONPATH")]))}  # fmt: skip
    short_steps = args.warmup + 1
    runs = []
    for steps in (short_steps, short_steps + args.steps):
        result, peak_rss = _run(_peer_command(args, px, precision, model, images, steps), env,
                                f"peer {px}px {precision} ({steps} steps)")  # fmt: skip
        if result is None:
            return dict(peak_rss=peak_rss, error=True)
        runs.append((result["process_s"] - result["after_last_step_s"], peak_rss))
    s_per_step = (runs[1][0] - runs[0][0]) / args.steps
    return dict(s_per_step=s_per_step, setup_s=runs[0][0] - short_steps * s_per_step,
                peak_rss=max(rss for _, rss in runs), optimizer_bytes=None)  # fmt: skip


def _peer_command(args, px: int, precision: str, model: Path, images: Path, steps: int) -> list:
    return [sys.executable, str(Path(args.peer_launcher)), str(args.peer),
            f"--pretrained_model_name_or_path={model}", f"--train_data_dir={images}",
            f"--placeholder_token={TOKEN}", f"--initializer_token={INITIALIZER}",
            f"--resolution={px}", "--train_batch_size=1", f"--max_train_steps={steps}",
            "--lr_scheduler=constant", "--lr_warmup_steps=0", "--save_steps=100000",
            "--checkpointing_steps=100000", "--validation_steps=100000",
            f"--mixed_precision={'bf16' if precision == 'bf16' else 'no'}", "--output_dir=out"]  # fmt: skip


def format_tables(rows: list[dict], meta: str) -> str:
    gib = 1024**3
    lines = [meta, "", "| px | precision | variant | s/step | steps/s | setup s | peak RSS GiB | "
             "of which setup | optimizer state |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['px']} | {r['precision']} | {r['variant']} | failed | | | | | |")
            continue
        state = "n/a" if r["optimizer_bytes"] is None else _bytes(r["optimizer_bytes"])
        setup_rss = f"{r['setup_rss'] / gib:.2f}" if r.get("setup_rss") else "n/a"
        lines.append(f"| {r['px']} | {r['precision']} | {r['variant']} | {r['s_per_step']:.3f} | "
                     f"{1 / r['s_per_step']:.3f} | {r['setup_s']:.1f} | {r['peak_rss'] / gib:.2f} | "
                     f"{setup_rss} | {state} |")  # fmt: skip
    lines += ["", "| px | precision | ours / limit | baseline / ours (speed-up) | "
              "RSS ours / baseline | peer / ours (speed-up) | RSS ours / peer | "
              "ours fp32 / ours bf16 (speed-up) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    best = _best_by_key(rows)
    for px, precision in dict.fromkeys((r["px"], r["precision"]) for r in rows):
        ours, limit = best.get((px, precision, "ours")), best.get((px, precision, "limit"))
        base, peer = best.get((px, precision, "baseline")), best.get((px, precision, "peer"))
        fp32, bf16 = best.get((px, "fp32", "ours")), best.get((px, "bf16", "ours"))
        lines.append(
            f"| {px} | {precision} | {_ratio(ours, limit, 's_per_step')} | "
            f"{_ratio(base, ours, 's_per_step')} | {_ratio(ours, base, 'peak_rss')} | "
            f"{_ratio(peer, ours, 's_per_step')} | {_ratio(ours, peer, 'peak_rss')} | "
            f"{_ratio(fp32, bf16, 's_per_step') if precision == 'bf16' else ''} |"
        )
    return "\n".join(lines) + "\n"


def _best_by_key(rows: list[dict]) -> dict:
    """Over several rounds keep each variant's fastest step and its largest peak RSS."""
    best: dict = {}
    for r in rows:
        if r.get("error"):
            continue
        key = (r["px"], r["precision"], r["variant"])
        if key in best:
            old = best[key]
            r = dict(r, s_per_step=min(r["s_per_step"], old["s_per_step"]),
                     peak_rss=max(r["peak_rss"], old["peak_rss"]))  # fmt: skip
        best[key] = r
    return best


def _ratio(a: dict | None, b: dict | None, field: str) -> str:
    return f"{a[field] / b[field]:.2f}" if a and b else "n/a"


def _bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"


def describe_machine(args: argparse.Namespace) -> str:
    import torch

    cpu = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{datetime.date.today().isoformat()}: {cpu}, {os.cpu_count()} cores, {gpu}; torch "
            f"{torch.__version__}; SD1.5-shaped random weights, batch 1, {args.num_images} images, "
            f"{args.warmup} warm-up + {args.steps} measured steps (median), {args.rounds} round(s)")  # fmt: skip


def run_all(args: argparse.Namespace) -> None:
    args.model_cache.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.model_cache)
    images = ensure_images(args.model_cache, args.num_images)
    variants = args.variants + (["peer"] if args.peer and "peer" not in args.variants else [])
    if "peer" in variants and not args.peer:
        raise SystemExit("--variants peer needs --peer PATH/textual_inversion.py")
    rows, start = [], time.perf_counter()
    for _ in range(args.rounds):
        for px in args.sizes:
            for precision in args.precisions:
                for variant in variants:
                    row = measure(args, variant, px, precision, model, images)
                    rows.append(row)
                    took = time.perf_counter() - start
                    speed = "failed" if row.get("error") else f"{row['s_per_step']:.3f} s/step"
                    print(f"[{took:6.0f} s] {px} px {precision} {variant}: {speed}, peak RSS "
                          f"{row['peak_rss'] / 1024**3:.2f} GiB", flush=True)  # fmt: skip
    text = format_tables(rows, describe_machine(args))
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
        print(f"Written to {args.out}")


# --- child: one variant at one size and precision ------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import torch

    started = time.perf_counter()
    px, precision = args.sizes[0], args.precisions[0]
    model = args.model_cache / "sd15-sd1"
    images = args.model_cache / f"images-{args.num_images}"
    if args.child in ("limit", "limit-compile"):
        step, optimizer = limit_step(model, px, precision, compiled=args.child == "limit-compile")
    elif args.child == "baseline":
        step, optimizer = baseline_step(model, images, px, precision)
    else:
        step, optimizer = ours_step(args.child, model, images, px, precision)
    setup_s = time.perf_counter() - started
    setup_rss = _peak_rss_so_far()
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    state = 0 if optimizer is None else sum(
        t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))  # fmt: skip
    result = dict(s_per_step=statistics.median(times), setup_s=setup_s, optimizer_bytes=state,
                  setup_rss=setup_rss, times=times)  # fmt: skip
    if torch.cuda.is_available():
        result["peak_vram"] = torch.cuda.max_memory_allocated()
    Path(os.environ["RESULT_JSON"]).write_text(json.dumps(result))


def _peak_rss_so_far() -> int | None:
    """VmHWM: the peak RSS up to now (Linux), to tell a setup peak from a training peak."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    line = next((ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else None


def ours_step(variant: str, model: Path, images: Path, px: int, precision: str):
    """invokeai-ti's own path: the CLI's config, setup(), optimizer_step() as the loop calls it."""
    import torch

    from invokeai_ti.data import dataset
    from invokeai_ti.front.cli import parse_config
    from invokeai_ti.invokeai.root import apply_root_defaults
    from invokeai_ti.train.setup import setup
    from invokeai_ti.train.step import optimizer_step

    argv = ["--model", str(model), "--train_data_dir", str(images), "--root_dir", ".",
            "--output_dir", "out", "--placeholder_token", TOKEN, "--initializer_token", INITIALIZER,
            "--resolution", str(px), "--train_batch_size", "1", "--seed", "0",
            "--lr_warmup_steps", "0", "--report_to", "none", "--only_save_embeds",
            "--mixed_precision", "bf16" if precision == "bf16" else "no"]  # fmt: skip
    argv += {"ours-nocache": ["--no-cache_latents"], "ours-gc": ["--gradient_checkpointing"]}.get(
        variant, []
    )
    config, _ = parse_config(argv)
    config.validate()
    run = setup(apply_root_defaults(config))
    if variant == "ours-cl":
        run.components.unet.to(memory_format=torch.channels_last)
    p, epoch = run.progress, {}

    def step() -> None:  # as train()'s loop: the sample order is drawn once per epoch
        if p.epoch not in epoch:
            epoch.clear()
            epoch[p.epoch] = dataset.epoch_samples(len(run.images.paths), run.config.repeats,
                                                   run.prompts.num_templates, p.seed, p.epoch)  # fmt: skip
        optimizer_step(run, epoch[p.epoch])

    return step, run.optimizer


def _frozen(model: Path, px: int, precision: str, text_dtype=None):
    """Tokenizer, text encoder, UNet, VAE (fp32 unless bf16), scheduler; all frozen, eval mode."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(model / "text_encoder", torch_dtype=text_dtype or dtype)
    unet = UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=dtype)
    scheduler = DDPMScheduler.from_pretrained(model / "scheduler")
    for module in (encoder, unet):
        module.requires_grad_(False)
    return tokenizer, encoder, unet, scheduler, dtype


def limit_step(model: Path, px: int, precision: str, compiled: bool = False):
    """The floor: text encoder and UNet forward and backward down to one vector in the lookup."""
    import torch
    import torch.nn.functional as F

    tokenizer, encoder, unet, scheduler, dtype = _frozen(model, px, precision)
    if compiled:
        unet = torch.compile(unet)
    ids = tokenizer(["a photo of a toy"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids  # fmt: skip
    vector = torch.zeros(encoder.config.hidden_size, requires_grad=True)
    where = (ids == ids[0, 5]).unsqueeze(-1)
    encoder.get_input_embeddings().register_forward_hook(
        lambda _m, _i, out: torch.where(where, out + vector.to(out.dtype), out)
    )
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((1, 4, px // 8, px // 8), generator=g)

    def step() -> None:
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        x_t = scheduler.add_noise(x0, noise, t)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            hidden = encoder(ids)[0]
            pred = unet(x_t.to(dtype), t, hidden.to(dtype)).sample
        F.mse_loss(pred.float(), noise).backward()
        vector.grad = None

    return step, None


def baseline_step(model: Path, images: Path, px: int, precision: str):
    """The upstream recipe: a row added to the full embedding matrix, AdamW over all of it, the
    VAE encoding every step, every other row restored after the update."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    from invokeai_ti.data import dataset

    # The trained text encoder stays fp32 (its embedding matrix is the parameter); UNet and VAE
    # take the weight dtype, as in diffusers' script.
    tokenizer, encoder, unet, scheduler, dtype = _frozen(model, px, precision, torch.float32)
    vae = AutoencoderKL.from_pretrained(model / "vae", torch_dtype=dtype).requires_grad_(False)
    tokenizer.add_tokens([TOKEN])
    token_id = tokenizer.convert_tokens_to_ids(TOKEN)
    init_id = tokenizer.encode(INITIALIZER, add_special_tokens=False)[0]
    encoder.resize_token_embeddings(len(tokenizer))
    table = encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[init_id]
    table.requires_grad_(True)
    optimizer = torch.optim.AdamW([table], lr=5e-4, weight_decay=1e-2)
    original = table.detach().clone()
    keep = torch.ones(table.shape[0], dtype=torch.bool)
    keep[token_id] = False
    pixels = dataset.load_training_images(images, px, False).pixels  # [N, 2, 3, px, px]
    ids = tokenizer([f"a photo of a {TOKEN}"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids  # fmt: skip
    g = torch.Generator().manual_seed(0)
    count = [0]

    def step() -> None:
        image = pixels[count[0] % pixels.shape[0], count[0] % 2][None]
        count[0] += 1
        x0 = vae.encode(image.to(dtype)).latent_dist.sample(g).detach() * vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        x_t = scheduler.add_noise(x0.float(), noise, t)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            hidden = encoder(ids)[0]
            pred = unet(x_t.to(dtype), t, hidden.to(dtype)).sample
        F.mse_loss(pred.float(), noise).backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            table[keep] = original[keep]

    return step, optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument(
        "--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"]
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole interleaved set")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=DEFAULT_VARIANTS + EXTRA_VARIANTS)  # fmt: skip
    parser.add_argument(
        "--num_images", type=int, default=2, help="training images (each cached twice)"
    )
    parser.add_argument("--model_cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "invokeai-ti-bench",
                        help="where the random SD1.5-shaped model is built once")  # fmt: skip
    parser.add_argument(
        "--peer", type=Path, help="diffusers' textual_inversion.py: adds the `peer` variant"
    )
    parser.add_argument("--peer_launcher", type=Path,
                        default=HERE.parent.parent / "shared" / "tools" / "peer_launch.py")  # fmt: skip
    parser.add_argument("--peer_pythonpath", default="/tmp/peer/tvoverlay",
                        help="torchvision overlay for the peer script")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the tables as markdown here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.model_cache = args.model_cache.resolve()
    if args.child:
        child(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
