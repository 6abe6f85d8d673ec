"""Tests of the MFCC extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from extractors.base import VideoInput
from extractors.mfcc import MfccExtractor, MfccSettings
from extractors.registry import build_extractor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RATE = 22050


def tone(seconds: float, frequency: float = 440.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def video_input(audio: np.ndarray | None, rate: int = RATE) -> VideoInput:
    # Audio extractors never read the probe, so a test input can go without one.
    return VideoInput(
        video_id="clip", path=Path("clip.mp4"), probe=None, audio=audio, sample_rate=rate  # type: ignore[arg-type]
    )


@pytest.fixture
def extractor() -> MfccExtractor:
    built = build_extractor(
        "mfcc",
        {"n_mfcc": 40, "window_seconds": 0.025, "hop_seconds": 0.010},
        torch.device("cpu"),
        frame_chunk=8,
    )
    assert isinstance(built, MfccExtractor)
    return built


def test_window_and_hop_samples() -> None:
    settings = MfccSettings.from_config({"window_seconds": 0.025, "hop_seconds": 0.010})
    assert settings.n_fft == 551  # 0.025 s * 22,050 Hz = 551.25
    assert settings.hop_length == 220  # 0.010 s * 22,050 Hz = 220.5, rounded to even


def test_tone_is_stable(extractor: MfccExtractor) -> None:
    features = extractor.extract(video_input(tone(1.0))).features
    interior = features[5:-5]  # frames away from the padded ends
    spread = interior.std(axis=0).max()
    assert spread < 0.05 * np.abs(interior).max()


def test_tones_differ(extractor: MfccExtractor) -> None:
    low = extractor.extract(video_input(tone(0.5, 300.0))).features[10]
    high = extractor.extract(video_input(tone(0.5, 3000.0))).features[10]
    assert np.abs(low - high).max() > 1.0


def test_shape_and_times(extractor: MfccExtractor) -> None:
    samples = RATE  # 1 s
    sequence = extractor.extract(video_input(tone(1.0)))
    hop = 220
    assert sequence.features.shape == (1 + samples // hop, 40)
    assert sequence.features.dtype == np.float32
    assert sequence.times[0] == 0.0
    assert sequence.times[1] == pytest.approx(hop / RATE)
    np.testing.assert_allclose(np.diff(sequence.times), hop / RATE)


def test_no_audio(extractor: MfccExtractor) -> None:
    sequence = extractor.extract(video_input(None))
    assert sequence.features.shape == (0, 40)
    assert sequence.times.shape == (0,)


def test_very_short_audio(extractor: MfccExtractor) -> None:
    sequence = extractor.extract(video_input(tone(0.005)))  # 110 samples, shorter than a window
    assert sequence.features.shape == (1, 40)
    assert np.all(np.isfinite(sequence.features))


def test_other_rate_resampled(extractor: MfccExtractor) -> None:
    sequence = extractor.extract(video_input(tone(1.0, rate=44100), rate=44100))
    assert sequence.features.shape == (1 + RATE // 220, 40)


def test_attributes_record_recipe(extractor: MfccExtractor) -> None:
    attributes = extractor.attributes()
    recipe = json.loads(attributes["preprocessing"])
    assert attributes["extractor"] == "mfcc"
    assert attributes["sample_rate"] == RATE
    assert recipe["n_mfcc"] == 40
    assert recipe["n_fft"] == 551
    assert recipe["hop_length"] == 220
    assert recipe["window_seconds"] == 0.025


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        MfccSettings.from_config({"n_mfccs": 13})
    with pytest.raises(ValueError, match="n_mfcc"):
        MfccSettings.from_config({"n_mfcc": 0})
    with pytest.raises(ValueError, match="hop"):
        MfccSettings.from_config({"hop_seconds": 0.00001})


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video(extractor: MfccExtractor) -> None:
    from extractors.decode import decode_audio
    from extractors.probe import probe_video

    path = DATA / "videos" / "fire2.mp4"
    probe = probe_video(path)
    audio = decode_audio(path, probe, RATE)
    assert audio is not None
    sequence = extractor.extract(
        VideoInput(video_id="fire2", path=path, probe=probe, audio=audio, sample_rate=RATE)
    )
    assert sequence.features.shape == (1 + len(audio) // 220, 40)
    assert np.all(np.isfinite(sequence.features))
    assert sequence.times[-1] <= len(audio) / RATE


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video_without_audio(extractor: MfccExtractor) -> None:
    from extractors.decode import decode_audio
    from extractors.probe import probe_video

    path = DATA / "videos" / "videochat_dancing_example_4.mp4"
    probe = probe_video(path)
    audio = decode_audio(path, probe, RATE)
    sequence = extractor.extract(
        VideoInput(video_id=path.stem, path=path, probe=probe, audio=audio, sample_rate=RATE)
    )
    assert audio is None
    assert sequence.features.shape == (0, 40)


def test_registry_unknown_name() -> None:
    with pytest.raises(ValueError, match="irv2, c3d, soundnet, mfcc"):
        build_extractor("vggish", {}, torch.device("cpu"), frame_chunk=8)


def test_blockwise_equals_single_pass() -> None:
    from extractors.mfcc import MfccExtractor, MfccSettings

    rng = np.random.default_rng(0)
    seconds = 7.3
    time = np.arange(int(seconds * 22050)) / 22050
    audio = (0.3 * np.sin(2 * np.pi * 440 * time) + 0.05 * rng.standard_normal(time.size)).astype(np.float32)
    single = MfccExtractor(MfccSettings(block_frames=10**9)).extract_waveform(audio)
    blocked = MfccExtractor(MfccSettings(block_frames=97)).extract_waveform(audio)

    assert blocked.features.shape == single.features.shape
    np.testing.assert_allclose(blocked.features, single.features, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(blocked.times, single.times)
