"""Shared start of every workflow script: import path, logging, seed and device."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

from models import runtime  # noqa: E402


def start_job(snakemake, *, seed: int | None = None, uses_device: bool = False):
    """Configure logging into the rule's log file, apply the seed and pick the device.

    Returns the torch device when `uses_device` is set, else None.
    """
    log_path = snakemake.log[0] if snakemake.log else None
    runtime.configure_logging(log_path, snakemake.config.get("log_level", "INFO"))
    sys.excepthook = _log_uncaught
    runtime.limit_threads(snakemake.threads)
    if seed is not None:
        runtime.seed_everything(seed)
    if uses_device:
        return runtime.select_device(snakemake.config.get("device", "auto"))
    return None


def _log_uncaught(kind, error, trace) -> None:
    """Write an exception that ends the job into the rule's log, not only to stderr."""
    logging.getLogger("workflow").critical("job failed: %s", error, exc_info=(kind, error, trace))
