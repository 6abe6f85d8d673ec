"""C3D motion features: one 4096-d fc6 vector per clip of 16 frames.

C3D is the 3D ConvNet of Tran et al., "Learning Spatiotemporal Features with 3D Convolutional
Networks" (ICCV 2015), trained on Sports-1M. The layer names and shapes follow the common
PyTorch port of the released Caffe weights (DavideA/c3d-pytorch, file `c3d.pickle`, a state
dict with keys conv1.weight ... fc8.bias), so that file loads as it is.

Input recipe of the released weights: BGR channel order, pixel range 0-255, frames resized to
128x171 (done by ffmpeg), the Sports-1M mean pixel subtracted, centre crop 112x112. The
default of `extractors.c3d.mean_bgr`, [90.25, 97.66, 101.41], is the per-channel Sports-1M
mean that kenshohara/3D-ResNets-PyTorch (mean.py, `get_mean('sports1m')`) lists in RGB
order as [101.41, 97.66, 90.25], here reversed to B, G, R. The feature is fc6 after ReLU.

NOTE: the port's own demo (predict.py) feeds RGB frames without mean subtraction. The BGR
order and mean used here follow the Caffe model the weights were converted from. They have not
been checked by running c3d.pickle, because the test suite has no copy of it.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
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

WEIGHTS_FILE_NAME = "c3d.pickle"
# NOTE: no SHA-256 of c3d.pickle is published by the port, so the file is accepted as found
# and its own SHA-256 is recorded in the artifact.
WEIGHTS_SHA256: str | None = None
NUM_CLASSES = 487
FEATURE_DIM = 4096
# fc6 takes 512 x 1 x 4 x 4 = 8192 inputs, which only a 16-frame 112x112 clip produces.
RELEASED_CLIP_LENGTH = 16


class C3D(nn.Module):
    """C3D network: 8 conv layers (3x3x3), 5 max pools, fc6, fc7 and a 487-way fc8.

    Input: float `(B, 3, 16, 112, 112)` BGR, mean-subtracted, 0-255 scale. `forward` returns
    the Sports-1M logits `(B, 487)`; `fc6_features` returns fc6 after ReLU `(B, 4096)`.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))

        self.conv2 = nn.Conv3d(64, 128, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)

        self.conv3a = nn.Conv3d(128, 256, kernel_size=3, padding=1)
        self.conv3b = nn.Conv3d(256, 256, kernel_size=3, padding=1)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)

        self.conv4a = nn.Conv3d(256, 512, kernel_size=3, padding=1)
        self.conv4b = nn.Conv3d(512, 512, kernel_size=3, padding=1)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)

        self.conv5a = nn.Conv3d(512, 512, kernel_size=3, padding=1)
        self.conv5b = nn.Conv3d(512, 512, kernel_size=3, padding=1)
        # The spatial padding turns the 7x7 map into 4x4, as in the Caffe model.
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))

        self.fc6 = nn.Linear(8192, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)

        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=0.5)

    def fc6_features(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu(self.conv1(clips)))
        x = self.pool2(self.relu(self.conv2(x)))
        x = self.pool3(self.relu(self.conv3b(self.relu(self.conv3a(x)))))
        x = self.pool4(self.relu(self.conv4b(self.relu(self.conv4a(x)))))
        x = self.pool5(self.relu(self.conv5b(self.relu(self.conv5a(x)))))
        return self.relu(self.fc6(x.flatten(1)))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.fc6_features(clips))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


@dataclass(frozen=True)
class C3dSettings:
    """Settings of the C3D extractor, from the `extractors.c3d` config section.

    `fps` resamples the video before clipping (None keeps the native rate). `clip_length`
    and `stride` are in frames, and `batch_size` counts clips per forward pass. `mean_bgr`
    is the mean pixel (B, G, R, 0-255 scale) subtracted from every frame. `frame_chunk` is
    the number of frames decoded ahead at once (`decode.frame_chunk`).
    """

    pretrained: bool | str = True
    weights: str | None = None
    fps: float | None = None
    clip_length: int = RELEASED_CLIP_LENGTH
    stride: int = 8
    batch_size: int = 8
    mean_bgr: tuple[float, float, float] = (90.25, 97.66, 101.41)
    precision: str = "float32"
    frame_chunk: int = 32
    prefetch_depth: int = 2
    resize_height: int = 128
    resize_width: int = 171
    crop: int = 112

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, frame_chunk: int) -> C3dSettings:
        """Build settings from the config section; raise ValueError on unknown keys or values."""
        known = {
            "pretrained", "weights", "fps", "clip_length", "stride", "batch_size", "mean_bgr",
            "precision",
        }
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown keys in extractors.c3d: {', '.join(unknown)}")

        defaults = cls()
        fps = config.get("fps", defaults.fps)
        mean_bgr = tuple(float(value) for value in config.get("mean_bgr", defaults.mean_bgr))
        if len(mean_bgr) != 3:
            raise ValueError(f"invalid extractors.c3d.mean_bgr {list(mean_bgr)}: expected 3 values")
        settings = cls(
            pretrained=parse_pretrained(config.get("pretrained", defaults.pretrained)),
            weights=config.get("weights", defaults.weights),
            fps=None if fps is None else float(fps),
            clip_length=int(config.get("clip_length", defaults.clip_length)),
            stride=int(config.get("stride", defaults.stride)),
            batch_size=int(config.get("batch_size", defaults.batch_size)),
            mean_bgr=mean_bgr,  # type: ignore[arg-type]
            precision=parse_precision(
                config.get("precision", defaults.precision), "extractors.c3d.precision"
            ),
            frame_chunk=int(frame_chunk),
        )
        if settings.clip_length != RELEASED_CLIP_LENGTH:
            raise ValueError(
                f"invalid extractors.c3d.clip_length {settings.clip_length}: the C3D fc6 layer "
                f"takes clips of exactly {RELEASED_CLIP_LENGTH} frames"
            )
        if settings.fps is not None and settings.fps <= 0:
            raise ValueError(f"invalid extractors.c3d.fps {settings.fps}: must be > 0 or null")
        for key in ("stride", "batch_size"):
            if getattr(settings, key) < 1:
                value = getattr(settings, key)
                raise ValueError(f"invalid extractors.c3d.{key} {value}: must be >= 1")
        if settings.frame_chunk < 1:
            raise ValueError(f"invalid decode.frame_chunk {settings.frame_chunk}: must be >= 1")
        return settings

    def geometry(self) -> FrameGeometry:
        """Return the ffmpeg resize to 128x171 (no crop: the centre crop happens per clip)."""
        return FrameGeometry(height=self.resize_height, width=self.resize_width)


def load_c3d(settings: C3dSettings, device: torch.device) -> tuple[C3D, WeightsIdentity]:
    """Build C3D, load its weights (or random ones) and move it to `device`."""
    if use_pretrained(settings.pretrained, settings.weights, WEIGHTS_FILE_NAME):
        path, sha256 = locate_verified_weights(
            settings.weights,
            default_file_name=WEIGHTS_FILE_NAME,
            expected_sha256=WEIGHTS_SHA256,
            sha256_prefix=None,
            where="extractors.c3d.weights",
        )
        model = C3D()
        identity = load_checked_weights(model, path, sha256)
    else:
        model = C3D()
        identity = warn_random_init("c3d")
    return model.to(device).eval(), identity


class ClipAssembler:
    """Cut a stream of frames into clips of `clip_length` frames starting every `stride` frames.

    Only the frames of the clip being filled are kept, so memory stays at `clip_length`
    frames. Frames after the last full clip are dropped. A stream shorter than one clip gives
    one clip padded by repeating its last frame. A clip's time is the mean of its real
    frames' times (s).
    """

    def __init__(self, clip_length: int, stride: int) -> None:
        self.clip_length = clip_length
        self.stride = stride
        self.window: deque[tuple[int, np.ndarray, float]] = deque()
        self.next_start = 0
        self.frames_seen = 0
        self.clips_emitted = 0

    def push(self, frames: np.ndarray, times: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """Add frames `(B, H, W, 3)` with times `(B,)`; yield each clip `(L, H, W, 3)` completed."""
        for frame, time in zip(frames, times):
            index = self.frames_seen
            self.frames_seen += 1
            if index < self.next_start:
                continue  # a gap frame between clips when stride > clip_length
            self.window.append((index, frame, float(time)))
            if len(self.window) < self.clip_length:
                continue

            clip = np.stack([item[1] for item in self.window])
            clip_time = float(np.mean([item[2] for item in self.window]))
            self.clips_emitted += 1
            self.next_start += self.stride
            while self.window and self.window[0][0] < self.next_start:
                self.window.popleft()
            yield clip, clip_time

    def finish(self) -> tuple[np.ndarray, float] | None:
        """Return the padded clip of a stream shorter than one clip, else None."""
        if self.clips_emitted or not self.window:
            return None
        real = [item[1] for item in self.window]
        padding = [real[-1]] * (self.clip_length - len(real))
        clip_time = float(np.mean([item[2] for item in self.window]))
        return np.stack(real + padding), clip_time


class C3dExtractor(FeatureExtractor):
    """C3D fc6 (after ReLU) features, one per clip of `clip_length` frames every `stride` frames."""

    name: ClassVar[str] = "c3d"
    input_kind: ClassVar[str] = "frames"

    def __init__(self, settings: C3dSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.model, self.identity = load_c3d(settings, device)
        self.precision = effective_precision(settings.precision, device)
        self.mean = torch.tensor(settings.mean_bgr, dtype=torch.float32, device=device)

    @property
    def dim(self) -> int:
        return FEATURE_DIM

    def preprocessing(self) -> dict[str, Any]:
        """Return the input recipe recorded in the artifact."""
        return {
            "input_space": "BGR",
            "input_range": [0, 255],
            "mean_bgr": list(self.settings.mean_bgr),
            "resize": [self.settings.resize_height, self.settings.resize_width],
            "crop": self.settings.crop,
            "frame_rate": "native" if self.settings.fps is None else self.settings.fps,
            "short_video": "one clip padded by repeating the last frame",
            "activation": "relu",
            "precision": self.precision,
        }

    def attributes(self) -> dict[str, Any]:
        """Return provenance attributes; `fps` is 0 when the native frame rate is kept."""
        return {
            "extractor": self.name,
            "weights": self.identity.file_name,
            "weights_sha256": self.identity.sha256,
            "layer": "fc6",
            "fps": float(self.settings.fps or 0.0),
            "clip_length": self.settings.clip_length,
            "stride": self.settings.stride,
            "sample_rate": 0,
            "preprocessing": json.dumps(self.preprocessing(), sort_keys=True),
        }

    def extract(self, video: VideoInput) -> FeatureSequence:
        """Decode 128x171 frames and return `(clips, 4096)` features with each clip's time."""
        with prefetched_frames(
            video.path,
            video.probe,
            fps=self.settings.fps,
            geometry=self.settings.geometry(),
            chunk_size=self.settings.frame_chunk,
            depth=self.settings.prefetch_depth,
        ) as stream:
            return self.extract_chunks(stream, video.path)

    def center_crop_bgr(self, frames: np.ndarray) -> np.ndarray:
        """Crop RGB frames `(B, 128, 171, 3)` to their centre `(B, 112, 112, 3)` in BGR order."""
        height, width = frames.shape[1:3]
        crop = self.settings.crop
        top = (height - crop) // 2
        left = (width - crop) // 2
        return frames[:, top : top + crop, left : left + crop, ::-1]

    def forward_clips(self, clips: list[np.ndarray]) -> np.ndarray:
        """Run fc6 on uint8 BGR clips, each `(L, 112, 112, 3)`; return `(len(clips), 4096)`."""
        batch = torch.from_numpy(np.stack(clips)).to(self.device)
        pixels = (batch.float() - self.mean).permute(0, 4, 1, 2, 3)  # (B, 3, L, H, W)
        with autocast_for(self.precision, self.device):
            output = self.model.fc6_features(pixels.contiguous())
        return output.float().cpu().numpy()

    def extract_chunks(self, chunks: Iterable[FrameChunk], source: Path | str) -> FeatureSequence:
        """Run C3D on decoded 128x171 RGB chunks; `source` names the file in errors and logs."""
        expected_shape = (self.settings.resize_height, self.settings.resize_width, 3)
        assembler = ClipAssembler(self.settings.clip_length, self.settings.stride)
        features: list[np.ndarray] = []
        times: list[float] = []
        pending: list[np.ndarray] = []

        with torch.inference_mode():
            for chunk in chunks:
                if chunk.frames.shape[1:] != expected_shape:
                    raise ValueError(
                        f"{source}: expected decoded frames of shape {expected_shape}, "
                        f"got {chunk.frames.shape[1:]}"
                    )
                cropped = self.center_crop_bgr(chunk.frames)
                for clip, clip_time in assembler.push(cropped, chunk.times):
                    pending.append(clip)
                    times.append(clip_time)
                    if len(pending) == self.settings.batch_size:
                        features.append(self.forward_clips(pending))
                        pending = []

            padded = assembler.finish()
            if padded is not None:
                logger.info(
                    "%s: %d frames, fewer than one clip of %d; using one clip padded by "
                    "repeating the last frame",
                    source,
                    assembler.frames_seen,
                    self.settings.clip_length,
                )
                pending.append(padded[0])
                times.append(padded[1])
            if pending:
                features.append(self.forward_clips(pending))

        if assembler.frames_seen == 0:
            raise BadVideoError(source, "no video frames decoded")
        return FeatureSequence(
            features=np.concatenate(features).astype(np.float32, copy=False),
            times=np.asarray(times, dtype=np.float64),
        )
