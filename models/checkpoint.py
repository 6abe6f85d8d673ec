"""Checkpoint files of the trained models: provenance entries, atomic saves, rounding for JSON.

PMI-LOC and PMI-CAP checkpoints carry the same provenance, so a checkpoint found on disk
records which data, features, code and software made it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def git_commit() -> str:
    """Return the commit of the repository holding this file, or "unknown"."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()


def provenance(
    *,
    dataset: str,
    modalities: Sequence[str],
    modality_dims: Sequence[int],
    steps: int,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Return the checkpoint entries that record the training data, code and software.

    modality_dims: feature size of each modality, in the order of `modalities`; a model is
    rebuilt from them at load time. steps: feature steps N per video.
    """
    return {
        "modalities": list(modalities),
        "modality_dims": [int(dim) for dim in modality_dims],
        "steps": int(steps),
        "dataset": dataset,
        "git_commit": git_commit(),
        "device": str(device),
        "seed": int(seed),
        "torch_version": str(torch.__version__),
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` with torch.save so that `path` never contains a partly written file.

    The state goes to a temporary file beside `path` first and is then renamed over it. A
    killed job leaves at most the temporary file, which no rule takes as an output.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def rounded(array: np.ndarray | None, digits: int = 4) -> list[Any] | None:
    """Return `array` as nested lists of floats rounded to `digits`, for JSON; None stays None."""
    return None if array is None else np.round(array.astype(np.float64), digits).tolist()
