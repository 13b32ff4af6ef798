"""Frozen weights converted tensor by tensor: the same numbers as from_pretrained, a fallback for
files that do not map one to one, and a lower peak memory (the point of it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from invokeai_ti.models import weights


def test_read_tensors_matches_safetensors_for_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 2, 2, generator=g).bfloat16(),
        "i64": torch.arange(-3, 9),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    read = dict(weights.read_tensors(path))
    expected = load_file(str(path))
    assert read.keys() == expected.keys()
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape, name
        assert torch.equal(read[name], tensor), name


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    assert not a.training and not b.training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_streamed_unet_equals_from_pretrained(tiny_sd1, dtype):
    folder = tiny_sd1 / "unet"
    streamed = weights.load_diffusers_model(UNet2DConditionModel, folder, dtype)
    assert streamed is not None
    reference = UNet2DConditionModel.from_pretrained(folder, torch_dtype=dtype)
    _assert_same_model(streamed, reference)
    cfg = streamed.config
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    hidden = torch.randn(1, 77, cfg.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = [m(x.to(dtype), 10, hidden.to(dtype)).sample for m in (streamed, reference)]
    assert torch.equal(out[0], out[1])


def test_sharded_unet_streams_from_its_index(tiny_sd1, tmp_path):
    model = UNet2DConditionModel.from_pretrained(tiny_sd1 / "unet")
    model.save_pretrained(tmp_path / "unet", max_shard_size="200KB")
    index = tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    streamed = weights.load_diffusers_model(UNet2DConditionModel, tmp_path / "unet", torch.bfloat16)
    assert streamed is not None
    _assert_same_model(streamed, model.to(torch.bfloat16).eval())


def test_files_that_do_not_map_onto_the_model_are_left_to_from_pretrained(tiny_sd1, tmp_path):
    folder = shutil.copytree(tiny_sd1 / "unet", tmp_path / "unet")
    file = folder / "diffusion_pytorch_model.safetensors"
    # Stored in the training dtype already: nothing to convert, the mapped file is cheapest.
    assert weights.load_diffusers_model(UNet2DConditionModel, folder, torch.float32) is None
    tensors = load_file(str(file))
    save_file({**tensors, "old.attention.query.weight": torch.zeros(2)}, str(file))
    assert weights.load_diffusers_model(UNet2DConditionModel, folder, torch.bfloat16) is None
    missing = dict(tensors)
    missing.pop(next(iter(missing)))
    save_file(missing, str(file))
    assert weights.load_diffusers_model(UNet2DConditionModel, folder, torch.bfloat16) is None
    file.unlink()  # only a pickle .bin (or nothing): not read here
    assert weights.load_diffusers_model(UNet2DConditionModel, folder, torch.bfloat16) is None


def test_bf16_setup_streams_the_unet(root, monkeypatch):
    from test_speed import _setup

    def refuse(*args, **kwargs):
        raise AssertionError("the UNet should have been streamed, not loaded by from_pretrained")

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", refuse)
    run = _setup(root, "--max_train_steps", "1", "--mixed_precision", "bf16")
    assert next(run.components.unet.parameters()).dtype == torch.bfloat16


PEAK_SCRIPT = """
import sys, torch
from pathlib import Path
from diffusers import UNet2DConditionModel
from invokeai_ti.models import weights

def status(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(ln for ln in lines if ln.startswith(field)).split()[1]) * 1024

Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS:")
folder = Path(sys.argv[2])
if sys.argv[1] == "stream":
    model = weights.load_diffusers_model(UNet2DConditionModel, folder, torch.bfloat16)
else:
    model = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
assert model is not None and model.dtype == torch.bfloat16
print(status("VmHWM:") - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc/self")
def test_streaming_saves_the_fp32_copy_in_peak_memory(tmp_path):
    """A 150 MB fp32 UNet loaded as bf16: the peak growth of from_pretrained holds the file's fp32
    copy as well as the bf16 model; the streamed load's must be below that by most of the file."""
    model = UNet2DConditionModel(
        block_out_channels=(64, 128, 256, 256), cross_attention_dim=768, attention_head_dim=8
    )
    model.save_pretrained(tmp_path / "unet")
    file_bytes = (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert file_bytes > 100e6
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    peaks = {}
    for how in ("stream", "from_pretrained"):
        proc = subprocess.run([sys.executable, str(script), how, str(tmp_path / "unet")], cwd=root,
                              capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
        peaks[how] = int(proc.stdout.split()[-1])
    assert peaks["stream"] < peaks["from_pretrained"] - 0.6 * file_bytes, (peaks, file_bytes)
