"""Align feature sequences to N equal time steps per video.

Each extractor emits vectors at its own times (2 fps frames, 8-frame C3D strides, SoundNet
conv7 windows). Subsampling averages, for each of N equal steps over [0, duration], the
vectors whose times fall in that step, so every modality of a video ends with exactly N rows
that cover the same spans of time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from extractors.artifacts import (
    FEATURE_DTYPES,
    artifact_attributes,
    atomic_output,
    write_video_group,
)

logger = logging.getLogger(__name__)


def step_edges(duration: float, steps: int) -> np.ndarray:
    """Return the `steps + 1` edges (s) of `steps` equal steps over [0, duration]."""
    return np.linspace(0.0, duration, steps + 1)


def align_to_steps(
    features: np.ndarray, times: np.ndarray, duration: float, steps: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Average `features` into `steps` equal time steps over [0, `duration`].

    `features` is `(T, D)` and `times` `(T,)` in seconds. Step k covers [k, k + 1) *
    duration / steps, so a time on an inner edge belongs to the later step. The last step
    also includes `duration`. Times beyond `duration` go to the last step and negative
    times to the first. A step that no time falls in takes the vector whose time is nearest to the
    step centre (the earlier one on a tie).

    Returns float32 `(steps, D)` features, float64 `(steps,)` step centres in seconds, and
    the number of steps filled from the nearest vector. Raises ValueError when T is 0, the
    shapes disagree, a time is not finite, or `duration` or `steps` is not positive.
    """
    features = np.asarray(features)
    times = np.asarray(times, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (T, D), got shape {features.shape}")
    if times.shape != (features.shape[0],):
        raise ValueError(f"times must have shape ({features.shape[0]},), got {times.shape}")
    if features.shape[0] == 0:
        raise ValueError("cannot align an empty feature sequence (T == 0)")
    if not np.all(np.isfinite(times)):
        raise ValueError("times must be finite")
    if not duration > 0:
        raise ValueError(f"duration must be positive, got {duration}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    edges = step_edges(duration, steps)
    centres = (edges[:-1] + edges[1:]) / 2
    # side="right" puts a time equal to edge k into step k, the later of the two steps.
    step_of = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, steps - 1)

    dim = features.shape[1]
    sums = np.zeros((steps, dim), dtype=np.float64)
    counts = np.bincount(step_of, minlength=steps)
    order = np.argsort(step_of, kind="stable")
    sorted_steps = step_of[order]
    starts = np.flatnonzero(np.r_[True, sorted_steps[1:] != sorted_steps[:-1]])
    if dim:
        sums[sorted_steps[starts]] = np.add.reduceat(
            features[order].astype(np.float64), starts, axis=0
        )

    aligned = np.empty((steps, dim), dtype=np.float64)
    filled_mask = counts > 0
    aligned[filled_mask] = sums[filled_mask] / counts[filled_mask, None]
    empty = np.flatnonzero(~filled_mask)
    if empty.size:
        # np.argmin returns the first minimum, the earliest vector when two are as near.
        distance = np.abs(times[None, :] - centres[empty, None])
        nearest = np.argmin(distance, axis=1)
        aligned[empty] = features[nearest]
    return aligned.astype(np.float32), centres, int(empty.size)


def _plain_value(value: object) -> object:
    """Convert an HDF5 attribute value (NumPy scalar, bytes) to a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_audio_group(attrs: h5py.AttributeManager) -> bool:
    """Tell an audio extractor's group (sample_rate > 0 Hz) from a frame extractor's (0)."""
    return float(attrs.get("sample_rate", 0)) > 0


def subsample_artifact(source: Path, output: Path, steps: int, dtype: str) -> None:
    """Write a subsampled copy of the feature artifact `source` to `output`.

    Every video group keeps its name and attributes and gains `steps` and `filled_steps`.
    `features` becomes `(steps, D)` stored as `dtype` (float16 or float32) and `times` the
    step centres. A group of an audio extractor for a video without audio (`has_audio`
    false or no rows) gets all-zero rows, `has_audio` false and a warning naming the
    video. `output` is written as `<output>.tmp` and renamed when complete.

    Raises ValueError naming the file and video when `source` is not a feature artifact, a
    video has no duration, or a frame extractor's group has no rows.
    """
    source = Path(source)
    output = Path(output)
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}: expected one of {sorted(FEATURE_DTYPES)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    filled_total = 0
    silent_videos = 0
    with h5py.File(source, "r") as reader:
        kind = reader.attrs.get("artifact")
        if isinstance(kind, bytes):
            kind = kind.decode("utf-8")
        if kind != "features":
            raise ValueError(f"{source} is a {kind!r} artifact, expected a features artifact")
        video_ids = sorted(reader.keys())

        with atomic_output(output) as tmp, h5py.File(tmp, "w") as writer:
            for key, value in artifact_attributes("subsampled").items():
                writer.attrs[key] = value
            writer.attrs["steps"] = steps

            for video_id in tqdm(video_ids, desc=f"subsample {source.name}", unit="video"):
                group = reader[video_id]
                attrs = {key: _plain_value(value) for key, value in group.attrs.items()}
                features = group["features"][()]
                times = group["times"][()]
                duration = float(attrs.get("duration", 0.0))
                if not duration > 0:
                    raise ValueError(
                        f"{source}: video {video_id!r} has duration {duration}, expected > 0"
                    )
                if features.ndim != 2:
                    raise ValueError(
                        f"{source}: video {video_id!r} has features of shape {features.shape}, "
                        "expected (T, D)"
                    )

                no_audio = not bool(attrs.get("has_audio", True)) or features.shape[0] == 0
                if _is_audio_group(group.attrs) and no_audio:
                    logger.warning(
                        "video %r has no audio (%s): its %d audio steps are zeros",
                        video_id,
                        "no rows" if features.shape[0] == 0 else "has_audio is false",
                        steps,
                    )
                    aligned = np.zeros((steps, features.shape[1]), dtype=np.float32)
                    edges = step_edges(duration, steps)
                    centres = (edges[:-1] + edges[1:]) / 2
                    filled = 0
                    attrs["has_audio"] = False
                    silent_videos += 1
                elif features.shape[0] == 0:
                    raise ValueError(f"{source}: video {video_id!r} has no feature rows")
                else:
                    aligned, centres, filled = align_to_steps(features, times, duration, steps)

                attrs["steps"] = steps
                attrs["filled_steps"] = filled
                filled_total += filled
                write_video_group(
                    writer, video_id, {"features": aligned, "times": centres}, attrs, dtype
                )

    logger.info(
        "wrote %s: %d videos x %d steps; %d steps took the nearest vector; "
        "%d videos without audio got zeros",
        output,
        len(video_ids),
        steps,
        filled_total,
        silent_videos,
    )


def read_subsampled(path: Path, video_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read the float32 `(steps, D)` features of `video_ids` (all videos when None).

    Raises ValueError when `path` is not a subsampled artifact and KeyError naming the file
    when a requested video is absent.
    """
    path = Path(path)
    result: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as reader:
        kind = reader.attrs.get("artifact")
        if isinstance(kind, bytes):
            kind = kind.decode("utf-8")
        if kind != "subsampled":
            raise ValueError(f"{path} is a {kind!r} artifact, expected a subsampled artifact")
        requested = sorted(reader.keys()) if video_ids is None else list(video_ids)
        for video_id in requested:
            if video_id not in reader:
                raise KeyError(f"video {video_id!r} not found in {path}")
            result[video_id] = reader[video_id]["features"][()].astype(np.float32)
    return result
