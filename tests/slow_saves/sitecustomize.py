"""Put on PYTHONPATH by the kill tests (with SLOW_SAVE_SECONDS): every checkpoint save pauses
between its two files, so a test can land a signal or a kill inside a save. The package knows
nothing of it: the pause wraps safetensors' writer from outside."""

import os
import time
from pathlib import Path

import safetensors.torch

_pause = float(os.environ.get("SLOW_SAVE_SECONDS", "0"))
_save_file = safetensors.torch.save_file


def _save_file_slowly(tensors, filename, metadata=None):
    _save_file(tensors, filename, metadata=metadata)
    if Path(filename).name == "vectors.safetensors":  # a checkpoint's first file; state.json next
        time.sleep(_pause)


safetensors.torch.save_file = _save_file_slowly
