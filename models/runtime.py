"""Process-wide settings of a job: compute device, random seed and logging.

Every workflow script calls these once at its start, so the device is chosen, the seed is
applied and the log format is set in exactly one place.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """Return the torch device for `preference`: auto (CUDA when present), cpu or cuda.

    Raises RuntimeError when `cuda` is requested and no GPU is visible.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"invalid device {preference!r}: expected auto, cpu or cuda")

    cuda_available = torch.cuda.is_available()
    if preference == "cuda" and not cuda_available:
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device")

    if preference == "cpu" or not cuda_available:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda")
    logger.info("using device %s", device)
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    logger.info("seed %d applied", seed)


def configure_logging(log_path: Path | str | None = None, level: str = "INFO") -> None:
    """Send log records of every library module to stderr and, when given, to `log_path`."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=handlers, force=True)


def limit_threads(threads: int) -> None:
    """Cap torch's intra-op threads at the cores Snakemake granted the job."""
    torch.set_num_threads(max(1, threads))
