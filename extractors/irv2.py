"""Inception-ResNet v2 visual features: one 1536-d vector per sampled frame.

The network is `pretrainedmodels.inceptionresnetv2` with its 1001-class head (ImageNet plus a
background class), the layout of the released file `inceptionresnetv2-520b38e4.pth`. The
feature of a frame is `model.features(x)` averaged over its 8x8 spatial grid, the input of the
classifier. Frames are sampled at `fps` by presentation time, resized so the short side is
299 / 0.875 = 342 pixels and centre-cropped to 299x299 by ffmpeg, then scaled to [0, 1] RGB and
normalised with the mean and std that pretrainedmodels publishes for these weights (0.5, 0.5).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pretrainedmodels
import torch
from torch import nn

from extractors.base import FeatureExtractor, FeatureSequence, VideoInput
from extractors.decode import FrameChunk, FrameGeometry, prefetched_frames
from extractors.errors import BadVideoError
from extractors.weights import (
    WeightsIdentity,
    autocast_for,
    effective_precision,
    load_checked_weights,
    locate_verified_weights,
    parse_precision,
    parse_pretrained,
    use_pretrained,
    warn_random_init,
)

logger = logging.getLogger(__name__)

WEIGHTS_FILE_NAME = "inceptionresnetv2-520b38e4.pth"
# Torch hub file names end in the first 8 hex digits of the file's SHA-256.
WEIGHTS_SHA256_PREFIX = "520b38e4"
# The released file keeps the background class of the TF-slim checkpoint it came from.
NUM_CLASSES = 1001
FEATURE_DIM = 1536
SETTINGS_KEY = "imagenet"


def imagenet_settings() -> dict[str, Any]:
    """Return pretrainedmodels' preprocessing settings for the ImageNet IRV2 weights.

    Keys used here: input_space ("RGB"), input_size ([3, 299, 299]), input_range ([0, 1]),
    mean and std (3 floats each).
    """
    return dict(pretrainedmodels.pretrained_settings["inceptionresnetv2"][SETTINGS_KEY])


@dataclass(frozen=True)
class Irv2Settings:
    """Settings of the IRV2 extractor, from the `extractors.irv2` config section.

    `fps` is the frame sampling rate (frames per second, None = every native frame);
    `batch_size` is frames per forward pass; `frame_chunk` is frames decoded ahead at once
    (`decode.frame_chunk`); `crop_fraction` is the share of the resized short side kept by
    the centre crop (0.875, the usual ImageNet evaluation crop).
    """

    pretrained: bool | str = True
    weights: str | None = None
    fps: float | None = 2.0
    batch_size: int = 16
    precision: str = "float32"
    frame_chunk: int = 32
    prefetch_depth: int = 2
    crop_fraction: float = 0.875

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, frame_chunk: int) -> Irv2Settings:
        """Build settings from the config section; raise ValueError on unknown keys or values."""
        known = {"pretrained", "weights", "fps", "batch_size", "precision"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown keys in extractors.irv2: {', '.join(unknown)}")

        defaults = cls()
        fps = config.get("fps", defaults.fps)
        settings = cls(
            pretrained=parse_pretrained(config.get("pretrained", defaults.pretrained)),
            weights=config.get("weights", defaults.weights),
            fps=None if fps is None else float(fps),
            batch_size=int(config.get("batch_size", defaults.batch_size)),
            precision=parse_precision(
                config.get("precision", defaults.precision), "extractors.irv2.precision"
            ),
            frame_chunk=int(frame_chunk),
        )
        if settings.fps is not None and settings.fps <= 0:
            raise ValueError(f"invalid extractors.irv2.fps {settings.fps}: must be > 0 or null")
        if settings.batch_size < 1:
            raise ValueError(
                f"invalid extractors.irv2.batch_size {settings.batch_size}: must be >= 1"
            )
        if settings.frame_chunk < 1:
            raise ValueError(f"invalid decode.frame_chunk {settings.frame_chunk}: must be >= 1")
        return settings

    def geometry(self) -> FrameGeometry:
        """Return the ffmpeg resize and crop: short side crop / crop_fraction, centre crop."""
        crop = int(imagenet_settings()["input_size"][-1])
        return FrameGeometry(short_side=round(crop / self.crop_fraction), crop=crop)


class Irv2Features(nn.Module):
    """IRV2 trunk with its input normalisation and a global average pool.

    Input: uint8 RGB frames `(B, 299, 299, 3)`. Output: float `(B, 1536)`.
    """

    def __init__(self, network: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """Map uint8 `(B, H, W, 3)` RGB to float `(B, 3, H, W)` in [0, 1], minus mean, over std."""
        pixels = frames.permute(0, 3, 1, 2).float() / 255.0
        return (pixels - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        feature_map = self.network.features(self.normalize(frames))
        return feature_map.mean(dim=(2, 3))


def build_irv2_network() -> nn.Module:
    """Return an Inception-ResNet v2 with random weights and the 1001-class head."""
    return pretrainedmodels.inceptionresnetv2(num_classes=NUM_CLASSES, pretrained=None)


def load_irv2(settings: Irv2Settings, device: torch.device) -> tuple[Irv2Features, WeightsIdentity]:
    """Build the feature network, load its weights (or random ones) and move it to `device`."""
    if use_pretrained(settings.pretrained, settings.weights, WEIGHTS_FILE_NAME):
        path, sha256 = locate_verified_weights(
            settings.weights,
            default_file_name=WEIGHTS_FILE_NAME,
            expected_sha256=None,
            sha256_prefix=WEIGHTS_SHA256_PREFIX,
            where="extractors.irv2.weights",
        )
        network = build_irv2_network()
        identity = load_checked_weights(network, path, sha256)
    else:
        network = build_irv2_network()
        identity = warn_random_init("irv2")

    preprocessing = imagenet_settings()
    model = Irv2Features(network, preprocessing["mean"], preprocessing["std"])
    return model.to(device).eval(), identity


def rebatch(
    chunks: Iterable[FrameChunk], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Regroup decoded chunks into batches of `batch_size` frames (the last may be shorter).

    Yields `(frames (B, H, W, 3) uint8, times (B,) float64)`.
    """
    frames_buffer: list[np.ndarray] = []
    times_buffer: list[np.ndarray] = []
    buffered = 0
    for chunk in chunks:
        frames_buffer.append(chunk.frames)
        times_buffer.append(np.asarray(chunk.times, dtype=np.float64))
        buffered += len(chunk.frames)
        while buffered >= batch_size:
            frames = np.concatenate(frames_buffer)
            times = np.concatenate(times_buffer)
            yield frames[:batch_size], times[:batch_size]
            frames_buffer, times_buffer = [frames[batch_size:]], [times[batch_size:]]
            buffered -= batch_size
    if buffered:
        yield np.concatenate(frames_buffer), np.concatenate(times_buffer)


class Irv2Extractor(FeatureExtractor):
    """Inception-ResNet v2 global-average-pooled features, one per frame sampled at `fps`."""

    name: ClassVar[str] = "irv2"
    input_kind: ClassVar[str] = "frames"

    def __init__(self, settings: Irv2Settings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.model, self.identity = load_irv2(settings, device)
        self.precision = effective_precision(settings.precision, device)

    @property
    def dim(self) -> int:
        return FEATURE_DIM

    def preprocessing(self) -> dict[str, Any]:
        """Return the input recipe recorded in the artifact."""
        preprocessing = imagenet_settings()
        geometry = self.settings.geometry()
        return {
            "input_space": preprocessing["input_space"],
            "input_range": preprocessing["input_range"],
            "mean": preprocessing["mean"],
            "std": preprocessing["std"],
            "short_side": geometry.short_side,
            "crop": geometry.crop,
            "frame_rate": "native" if self.settings.fps is None else self.settings.fps,
            "pooling": "global average of features() over the 8x8 grid",
            "precision": self.precision,
        }

    def attributes(self) -> dict[str, Any]:
        """Return provenance attributes; `fps` is 0 when every native frame is used."""
        return {
            "extractor": self.name,
            "weights": self.identity.file_name,
            "weights_sha256": self.identity.sha256,
            "layer": "avgpool_1a",
            "fps": float(self.settings.fps or 0.0),
            "clip_length": 1,
            "stride": 1,
            "sample_rate": 0,
            "preprocessing": json.dumps(self.preprocessing(), sort_keys=True),
        }

    def extract(self, video: VideoInput) -> FeatureSequence:
        """Decode frames at `fps` and return `(T, 1536)` features with each frame's time."""
        with prefetched_frames(
            video.path,
            video.probe,
            fps=self.settings.fps,
            geometry=self.settings.geometry(),
            chunk_size=self.settings.frame_chunk,
            depth=self.settings.prefetch_depth,
        ) as stream:
            return self.extract_chunks(stream, video.path)

    def extract_chunks(self, chunks: Iterable[FrameChunk], source: Path | str) -> FeatureSequence:
        """Run the network on decoded 299x299 RGB chunks; `source` names the file in errors."""
        features: list[np.ndarray] = []
        times: list[np.ndarray] = []
        crop = self.settings.geometry().crop
        with torch.inference_mode():
            for frames, frame_times in rebatch(chunks, self.settings.batch_size):
                if frames.shape[1:] != (crop, crop, 3):
                    raise ValueError(
                        f"{source}: expected decoded frames of shape ({crop}, {crop}, 3), "
                        f"got {frames.shape[1:]}"
                    )
                batch = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
                with autocast_for(self.precision, self.device):
                    output = self.model(batch)
                features.append(output.float().cpu().numpy())
                times.append(frame_times)

        if not features:
            raise BadVideoError(source, "no video frames decoded")
        return FeatureSequence(
            features=np.concatenate(features).astype(np.float32, copy=False),
            times=np.concatenate(times),
        )
