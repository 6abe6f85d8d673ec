"""MFCC audio features computed with librosa on the decoded mono waveform.

The recipe, all of it recorded in the artifact, is `librosa.feature.mfcc` with `n_mfcc`
coefficients. The FFT window is `window_seconds * sample_rate` samples (rounded, Hann) and
the hop `hop_seconds * sample_rate` samples (rounded). The power spectrum goes through
`n_mels` mel bands (librosa's default 128, Slaney mel scale and area normalisation), log
power in dB (top_db 80) and a DCT-II with orthonormal scaling. Frames are centred
(`center=True`, zero padding), so frame t covers the window centred on sample `t * hop` and
its time is `t * hop / sample_rate` seconds.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import librosa
import scipy.fftpack
import numpy as np

from extractors.base import FeatureExtractor, FeatureSequence, VideoInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MfccSettings:
    """Settings of the MFCC extractor, from the `extractors.mfcc` config section.

    `window_seconds` and `hop_seconds` are the analysis window and hop (s); `sample_rate`
    (Hz) is the rate the recipe runs at (audio decoded at another rate is resampled);
    `n_mels` is the number of mel bands before the DCT. Audio longer than `block_frames`
    frames (6,000 frames = 60 s at a 10 ms hop) has its spectrum computed block by block,
    which bounds memory and gives the same coefficients.
    """

    n_mfcc: int = 40
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    sample_rate: int = 22050
    n_mels: int = 128
    block_frames: int = 6000

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MfccSettings:
        """Build settings from the config section; raise ValueError on unknown keys or values."""
        known = {"n_mfcc", "window_seconds", "hop_seconds", "sample_rate", "n_mels"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown keys in extractors.mfcc: {', '.join(unknown)}")
        defaults = cls()
        settings = cls(
            n_mfcc=int(config.get("n_mfcc", defaults.n_mfcc)),
            window_seconds=float(config.get("window_seconds", defaults.window_seconds)),
            hop_seconds=float(config.get("hop_seconds", defaults.hop_seconds)),
            sample_rate=int(config.get("sample_rate", defaults.sample_rate)),
            n_mels=int(config.get("n_mels", defaults.n_mels)),
        )
        for key in ("n_mfcc", "sample_rate", "n_mels"):
            if getattr(settings, key) < 1:
                value = getattr(settings, key)
                raise ValueError(f"invalid extractors.mfcc.{key} {value}: must be >= 1")
        if settings.n_mfcc > settings.n_mels:
            raise ValueError(
                f"invalid extractors.mfcc.n_mfcc {settings.n_mfcc}: "
                f"must be at most n_mels ({settings.n_mels})"
            )
        if settings.n_fft < 2 or settings.hop_length < 1:
            raise ValueError(
                f"invalid extractors.mfcc window {settings.window_seconds} s / hop "
                f"{settings.hop_seconds} s: they give {settings.n_fft} and "
                f"{settings.hop_length} samples at {settings.sample_rate} Hz"
            )
        return settings

    @property
    def n_fft(self) -> int:
        """Analysis window length in samples."""
        return round(self.window_seconds * self.sample_rate)

    @property
    def hop_length(self) -> int:
        """Hop between frames in samples."""
        return round(self.hop_seconds * self.sample_rate)


class MfccExtractor(FeatureExtractor):
    """MFCC frames of the whole soundtrack, `(T, n_mfcc)`, one every `hop_seconds`."""

    name: ClassVar[str] = "mfcc"
    input_kind: ClassVar[str] = "audio"

    def __init__(self, settings: MfccSettings) -> None:
        self.settings = settings

    @property
    def dim(self) -> int:
        return self.settings.n_mfcc

    def preprocessing(self) -> dict[str, Any]:
        """Return the MFCC recipe recorded in the artifact."""
        settings = self.settings
        return {
            "library": f"librosa {librosa.__version__}",
            "n_mfcc": settings.n_mfcc,
            "sample_rate": settings.sample_rate,
            "window_seconds": settings.window_seconds,
            "hop_seconds": settings.hop_seconds,
            "n_fft": settings.n_fft,
            "hop_length": settings.hop_length,
            "window": "hann",
            "center": True,
            "pad_mode": "constant",
            "n_mels": settings.n_mels,
            "mel_scale": "slaney",
            "log": "power_to_db, top_db 80",
            "dct": "type 2, ortho",
            "time": "t * hop_length / sample_rate",
        }

    def attributes(self) -> dict[str, Any]:
        """Return provenance attributes; there are no weights and no frames for MFCC."""
        return {
            "extractor": self.name,
            "weights": "none",
            "weights_sha256": "none",
            "layer": "mfcc",
            "fps": 0.0,
            "clip_length": 0,
            "stride": 0,
            "sample_rate": self.settings.sample_rate,
            "preprocessing": json.dumps(self.preprocessing(), sort_keys=True),
        }

    def extract(self, video: VideoInput) -> FeatureSequence:
        """Return the `(T, n_mfcc)` MFCC frames with their times; `(0, n_mfcc)` without audio."""
        if video.audio is None:
            return FeatureSequence(
                features=np.zeros((0, self.dim), dtype=np.float32),
                times=np.zeros(0, dtype=np.float64),
            )
        audio = np.asarray(video.audio, dtype=np.float32)
        if video.sample_rate != self.settings.sample_rate:
            logger.info(
                "%s: resampling audio from %d Hz to the %d Hz of the MFCC recipe",
                video.path,
                video.sample_rate,
                self.settings.sample_rate,
            )
            audio = librosa.resample(
                audio, orig_sr=video.sample_rate, target_sr=self.settings.sample_rate
            )
        return self.extract_waveform(audio)

    def extract_waveform(self, audio: np.ndarray) -> FeatureSequence:
        """Compute MFCC frames of a mono waveform `(samples,)` at `sample_rate` Hz."""
        settings = self.settings
        if len(audio) == 0:
            return FeatureSequence(
                features=np.zeros((0, self.dim), dtype=np.float32),
                times=np.zeros(0, dtype=np.float64),
            )
        with warnings.catch_warnings():
            if len(audio) < settings.n_fft:
                # The zero padding of the centred frames still gives one full window.
                logger.info(
                    "%d audio samples, fewer than one %d-sample window", len(audio), settings.n_fft
                )
                warnings.filterwarnings(
                    "ignore", message="n_fft=.* is too large", category=UserWarning
                )
            if len(audio) > settings.block_frames * settings.hop_length:
                coefficients = self._blockwise_mfcc(np.asarray(audio, dtype=np.float32))
            else:
                coefficients = self._single_pass_mfcc(np.asarray(audio, dtype=np.float32))
        frames = coefficients.T.astype(np.float32)
        frame_indices = np.arange(len(frames), dtype=np.float64)
        times = frame_indices * settings.hop_length / settings.sample_rate
        return FeatureSequence(features=frames, times=times)

    def _single_pass_mfcc(self, audio: np.ndarray) -> np.ndarray:
        settings = self.settings
        return librosa.feature.mfcc(
                y=np.ascontiguousarray(audio, dtype=np.float32),
                sr=settings.sample_rate,
                n_mfcc=settings.n_mfcc,
                n_fft=settings.n_fft,
                hop_length=settings.hop_length,
                n_mels=settings.n_mels,
                window="hann",
                center=True,
                pad_mode="constant",
            )

    def _blockwise_mfcc(self, audio: np.ndarray) -> np.ndarray:
        """Compute the same coefficients as `_single_pass_mfcc`, `block_frames` at a time.

        The short-time spectrum of a long file is the largest array of the recipe (about
        130 MB for 10 minutes), so it is built per block. Only the log-mel array stays whole,
        because librosa clips it at 80 dB below its maximum over the whole file before the DCT.
        """
        settings = self.settings
        n_fft, hop = settings.n_fft, settings.hop_length
        pad = n_fft // 2
        total_frames = 1 + len(audio) // hop
        blocks = []
        for first in range(0, total_frames, settings.block_frames):
            last = min(first + settings.block_frames, total_frames)
            start = first * hop - pad
            stop = (last - 1) * hop - pad + n_fft
            segment = audio[max(start, 0) : min(stop, len(audio))]
            segment = np.pad(segment, (max(0, -start), max(0, stop - len(audio))))
            mel = librosa.feature.melspectrogram(
                y=segment,
                sr=settings.sample_rate,
                n_fft=n_fft,
                hop_length=hop,
                n_mels=settings.n_mels,
                window="hann",
                center=False,
            )
            blocks.append(librosa.power_to_db(mel, top_db=None))
        log_mel = np.concatenate(blocks, axis=1)
        np.maximum(log_mel, log_mel.max() - 80.0, out=log_mel)
        return scipy.fftpack.dct(log_mel, axis=0, type=2, norm="ortho")[: settings.n_mfcc]
