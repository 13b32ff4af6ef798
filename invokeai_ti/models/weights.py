"""Frozen weights read tensor by tensor into the training dtype, so converting never holds the file's
copy: peak memory is the converted model plus one tensor.

diffusers' from_pretrained maps the whole file and converts from that mapping; every page it reads
stays in the process's resident set until the mapping closes, so an fp32 SD1.5 UNet loaded as bf16
peaked at 5.2 GiB (the whole training run in bf16 needs less). Plain reads leave the file in the
page cache instead, which is not this process's memory: read this way it peaks at 2.0 GiB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# safetensors' dtype names (the format's spec); little-endian, as every platform torch runs on.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The tensor table of a .safetensors file and the offset its data starts at."""
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of a .safetensors file in file order, read into memory of its own."""
    header, data_start = read_header(path)
    with path.open("rb") as f:
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            if end == begin:
                yield name, torch.empty(info["shape"], dtype=dtype)
                continue
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != len(buffer):
                raise ValueError(f"{path}: truncated at tensor {name}")
            yield name, torch.frombuffer(buffer, dtype=dtype).reshape(info["shape"])


def weight_files(folder: Path, stem: str) -> list[Path] | None:
    """The safetensors file(s) from_pretrained would read in `folder` (one, or the shards of an
    index), or None when there are none (e.g. only a pickle .bin)."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    return None


def needs_conversion(files: list[Path], dtype: torch.dtype) -> bool:
    """Whether any floating-point tensor in the files is stored in another dtype than `dtype`."""
    for path in files:
        header, _ = read_header(path)
        for info in header.values():
            stored = SAFETENSORS_DTYPES.get(info["dtype"])
            if stored is None or (stored.is_floating_point and stored != dtype):
                return True
    return False


def load_diffusers_model(model_class: Any, folder: Path, dtype: torch.dtype) -> Any | None:
    """A diffusers model from `folder` (config.json + safetensors) with every floating weight cast
    to `dtype` as it is read; None when the files do not map one to one onto the model's weights
    (old key names, extra or missing tensors, unknown dtypes), for from_pretrained to handle."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    files = weight_files(folder, "diffusion_pytorch_model")
    if files is None or not needs_conversion(files, dtype):
        return None
    with init_empty_weights():  # parameters on the meta device: no memory until assigned
        model = model_class.from_config(model_class.load_config(folder))
    expected, assigned = set(model.state_dict()), set()
    try:
        for path in files:
            for name, tensor in read_tensors(path):
                if name not in expected:
                    return None
                cast = dtype if tensor.is_floating_point() else None
                set_module_tensor_to_device(model, name, "cpu", value=tensor, dtype=cast)
                assigned.add(name)
    except (KeyError, ValueError, OSError):
        return None
    if assigned != expected or any(p.is_meta for p in model.parameters()):
        return None
    for name, buffer in model.named_buffers():  # made by the constructor, in fp32
        if buffer.is_floating_point():
            set_module_tensor_to_device(model, name, "cpu", dtype=dtype)
    model.register_to_config(_name_or_path=str(folder.parent))
    return model.eval()
