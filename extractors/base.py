"""The interface every feature extractor implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from extractors.probe import VideoProbe


@dataclass(frozen=True)
class VideoInput:
    """One video as an extractor receives it.

    `audio` is the mono waveform (float32, `(samples,)`, nominally in [-1, 1] but not clipped,
    since decoded AAC can pass full scale) at `sample_rate` Hz from the decode artifact, or
    None when the file has no audio stream.
    """

    video_id: str
    path: Path
    probe: VideoProbe
    audio: np.ndarray | None
    sample_rate: int


@dataclass(frozen=True)
class FeatureSequence:
    """Feature vectors of one video with the time of each vector.

    `features` is float32 `(T, D)`; `times` is float64 `(T,)` in seconds from the start of
    the video, non-decreasing.
    """

    features: np.ndarray
    times: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"features must be 2-D (T, D), got shape {self.features.shape}")
        if self.times.shape != (self.features.shape[0],):
            raise ValueError(
                f"times must have shape ({self.features.shape[0]},), got {self.times.shape}"
            )


class FeatureExtractor(abc.ABC):
    """A network or signal-processing recipe that turns one video into a feature sequence.

    Subclasses set `name` (the config key, e.g. "irv2"), `input_kind` ("frames" when they
    decode frames from `VideoInput.path`, "audio" when they read `VideoInput.audio`) and
    `dim` (feature size D).
    """

    name: ClassVar[str]
    input_kind: ClassVar[str]

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Size D of each feature vector."""

    @abc.abstractmethod
    def attributes(self) -> dict[str, Any]:
        """Return the provenance attributes written on every video group of the artifact.

        Keys: extractor, weights, weights_sha256, layer, fps, clip_length, stride,
        sample_rate, preprocessing (a JSON string).
        """

    @abc.abstractmethod
    def extract(self, video: VideoInput) -> FeatureSequence:
        """Compute the feature sequence of one video.

        Raises `extractors.errors.BadVideoError` naming the file and the reason when the video
        cannot be used (no frames, undecodable).
        """
