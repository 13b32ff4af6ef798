"""The trainer on a CUDA GPU, through the real CLI: fp32, fp16 and bf16, batch size and gradient
checkpointing, xformers, and peak GPU memory, on the SD1.5-shaped random model at 512 px.

    python examples/gpu_checks.py --out gpu-checks.json

Each variant is one `python -m invokeai_ti` run (its own process, so peak memory is its own).
Per variant: exit code, seconds per step (the training phase over the steps, first step
included, and the rate of the last progress line), peak GPU memory from the run's final JSON
object, whether the learned vector is finite, and its cosine with the fp32 run's vector (same
seed, same steps: how far reduced precision moves the result). Run by examples/gpu_session.sh
when a GPU is lent; examples/gpu-results-*.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TOKEN = "<gpu-check>"
VARIANTS = {  # name: (extra flags, train batch size)
    "fp32": (["--mixed_precision", "no"], 1),
    "fp16": (["--mixed_precision", "fp16"], 1),
    "bf16": (["--mixed_precision", "bf16"], 1),
    "fp32-no-tf32": (["--mixed_precision", "no", "--no-allow_tf32"], 1),
    "bf16-batch8": (["--mixed_precision", "bf16"], 8),
    "fp16-batch8-gc": (["--mixed_precision", "fp16", "--gradient_checkpointing"], 8),
    "bf16-xformers": (
        ["--mixed_precision", "bf16", "--enable_xformers_memory_efficient_attention"],
        1,
    ),  # fmt: skip
}


def run_variant(name: str, model: Path, work: Path, steps: int, resolution: int) -> dict:
    flags, batch = VARIANTS[name]
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "invokeai_ti", "--model", str(model),
           "--train_data_dir", str(HERE / "images"), "--root_dir", str(work / "root"),
           "--output_dir", str(out), "--placeholder_token", TOKEN, "--initializer_token", "toy",
           "--resolution", str(resolution), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
           "--seed", "0", "--lr_warmup_steps", "0", "--only_save_embeds", "--no-quality_report",
           "--validation_steps", "100000", "--checkpointing_steps", "100000", "--save_steps",
           "100000", "--log_format", "json", "--log_every_steps", "5", *flags]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = dict(variant=name, batch=batch, steps=steps, rc=done.returncode,
               wall_s=round(time.perf_counter() - started, 1), command=" ".join(cmd[1:]))  # fmt: skip
    events = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    final = next((e for e in reversed(events) if e.get("event") == "done"), None)
    rates = [e["steps_per_s"] for e in events if e.get("event") == "step" and e.get("steps_per_s")]
    if done.returncode or final is None:
        row["error"] = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        return row
    row.update(s_per_step=round(final["seconds"]["training"] / steps, 4),
               last_rate_s_per_step=round(1 / rates[-1], 4) if rates else None,
               loading_s=final["seconds"].get("loading"),
               peak_gpu_gib=round(final.get("peak_gpu_memory_bytes", 0) / 2**30, 2))  # fmt: skip
    vector = _learned_vector(out)
    row["finite"] = bool(torch.isfinite(vector).all())
    row["vector"] = vector.tolist()
    return row


def _learned_vector(out: Path) -> torch.Tensor:
    path = next(out.rglob("learned_embeds.bin"))
    data = torch.load(path, map_location="cpu", weights_only=True)
    return next(iter(data.values())).float().flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-checks"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--shape", default="sd15", help="tiny: a smoke test of this script on a CPU"
    )
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--deadline_s", type=float, default=1e9,
                        help="start no variant after this many seconds (the lease is short)")  # fmt: skip
    args = parser.parse_args()
    from invokeai_ti.models.tiny import save_tiny_model

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / args.shape
    started = time.perf_counter()
    if not (model / "model_index.json").is_file():
        save_tiny_model(model, family="sd1", shape=args.shape)
    result = dict(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  torch=torch.__version__, cuda=torch.version.cuda,
                  xformers_installed=_importable("xformers"),
                  model_build_s=round(time.perf_counter() - started, 1), rows=[])  # fmt: skip
    for name in args.variants:
        if time.perf_counter() - started > args.deadline_s:
            result["rows"].append(dict(variant=name, skipped="past --deadline_s"))
            continue
        row = run_variant(name, model, args.work, args.steps, args.resolution)
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("vector", "command")}),
              flush=True)  # fmt: skip
        args.out.write_text(json.dumps(result, indent=1))
    # Compared as moves away from the initializer: the vectors themselves agree to 1e-5 after
    # 40 steps whatever the precision, since the initializer dominates them.
    start = _initializer_vector(model)
    reference = next((r["vector"] for r in result["rows"] if r["variant"] == "fp32" and "vector" in r),
                     None)  # fmt: skip
    for row in result["rows"]:
        if reference and "vector" in row:
            a, b = torch.tensor(reference) - start, torch.tensor(row["vector"]) - start
            row["update_cosine_to_fp32"] = round(
                float(torch.nn.functional.cosine_similarity(a, b, 0)), 4
            )
            row["update_norm_ratio_to_fp32"] = round(float(b.norm() / a.norm()), 4)
        row.pop("vector", None)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _initializer_vector(model: Path) -> torch.Tensor:
    """The initializer's row of the token table, read alone from the safetensors file."""
    from safetensors import safe_open
    from transformers import CLIPTokenizer

    token_id = CLIPTokenizer.from_pretrained(model / "tokenizer").convert_tokens_to_ids("toy</w>")
    weights = next((model / "text_encoder").glob("*.safetensors"))
    with safe_open(str(weights), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("token_embedding.weight"))
        return f.get_slice(key)[token_id : token_id + 1].float().flatten()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
