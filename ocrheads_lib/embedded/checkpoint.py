"""Reading training checkpoints (``torch.save`` files) without pickle's code execution.

``torch.load(weights_only=False)`` runs whatever a crafted file's pickle asks for; a checkpoint given on the
command line (``diagnose``, ``--resume``) is a user file, so every load here is ``weights_only=True``: tensors,
numbers, strings and containers only. NumPy scalars and dtypes (a history row may hold an ``np.float64``) are
allowed by name (``torch.serialization.safe_globals``); nothing else is unpickled.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

# numpy scalars inside a saved dict (history rows): reconstructed from their dtype and bytes, no code runs
_NUMPY_GLOBALS = [np.dtype, np._core.multiarray.scalar, *{type(np.dtype(t)) for t in "?bhilqBHILQefdgFD"}]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that needs any other Python object raises ValueError
    naming the file (it is never unpickled)."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[-1][:200] if str(error).strip() else ""
        raise ValueError(f"{path} is not a plain checkpoint (tensors, numbers, strings): loading it would run code "
                         f"from the file ({first}); it was not loaded. Use a checkpoint written by this package's "
                         "training, from a source you trust") from error
