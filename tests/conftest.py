"""Test-wide settings: one thread per process, no hub, deterministic torch."""
import os
import sys
from pathlib import Path

# This checkout first: the cached environment is shared between clones (see scripts/setup_env.sh).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_flush_denormal(True)
