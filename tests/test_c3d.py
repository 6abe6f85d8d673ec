"""Tests of the C3D extractor: clip assembly, weights loading and fc6 features."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from extractors.base import VideoInput
from extractors.c3d import (
    C3D,
    WEIGHTS_FILE_NAME,
    C3dExtractor,
    C3dSettings,
    ClipAssembler,
)
from extractors.errors import BadVideoError, WeightsNotFoundError
from extractors.registry import build_extractor
from extractors.weights import InvalidWeightsError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CPU = torch.device("cpu")
# Parameter names of the PyTorch port's c3d.pickle, in its order.
PORT_KEYS = [
    f"{layer}.{kind}"
    for layer in (
        "conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b",
        "fc6", "fc7", "fc8",
    )
    for kind in ("weight", "bias")
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def random_extractor() -> C3dExtractor:
    torch.manual_seed(0)
    built = build_extractor(
        "c3d", {"pretrained": False, "fps": 4.0, "stride": 16}, CPU, frame_chunk=8
    )
    assert isinstance(built, C3dExtractor)
    return built


def frame_stream(count: int, height: int = 4, width: int = 4) -> np.ndarray:
    """Frames whose every pixel holds the frame index, so clips can be read back."""
    return np.broadcast_to(
        np.arange(count, dtype=np.uint8)[:, None, None, None], (count, height, width, 3)
    ).copy()


def first_pixels(clip: np.ndarray) -> list[int]:
    return [int(frame[0, 0, 0]) for frame in clip]


def test_port_layer_names(random_extractor: C3dExtractor) -> None:
    model = random_extractor.model
    assert isinstance(model, C3D)
    assert list(model.state_dict()) == PORT_KEYS
    assert model.fc6.in_features == 8192
    assert model.fc8.out_features == 487


def test_clips_overlap() -> None:
    assembler = ClipAssembler(clip_length=16, stride=8)
    pixels = frame_stream(40)
    times = np.arange(40) / 10.0
    clips = list(assembler.push(pixels[:13], times[:13])) + list(assembler.push(pixels[13:], times[13:]))
    assert [first_pixels(clip)[0] for clip, _ in clips] == [0, 8, 16, 24]
    assert first_pixels(clips[1][0]) == list(range(8, 24))
    assert clips[0][1] == pytest.approx(np.mean(times[:16]))
    assert clips[3][1] == pytest.approx(np.mean(times[24:40]))
    assert assembler.finish() is None
    assert len(assembler.window) <= 16


def test_clips_with_gaps() -> None:
    assembler = ClipAssembler(clip_length=16, stride=20)
    clips = list(assembler.push(frame_stream(40), np.arange(40, dtype=np.float64)))
    assert [first_pixels(clip) for clip, _ in clips] == [list(range(0, 16)), list(range(20, 36))]


def test_window_bounded() -> None:
    assembler = ClipAssembler(clip_length=16, stride=8)
    largest = 0
    for index in range(200):
        list(assembler.push(frame_stream(1) + index % 200, np.array([index / 25.0])))
        largest = max(largest, len(assembler.window))
    assert largest <= 16
    assert assembler.clips_emitted == 24  # starts 0, 8, ..., 184


def test_short_stream_padded() -> None:
    assembler = ClipAssembler(clip_length=16, stride=8)
    assert list(assembler.push(frame_stream(10), np.arange(10) / 10.0)) == []
    clip, clip_time = assembler.finish()
    assert first_pixels(clip) == list(range(10)) + [9] * 6
    assert clip_time == pytest.approx(np.mean(np.arange(10) / 10.0))


def chunk(pixels: np.ndarray, times: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(frames=pixels, times=times)


def test_ten_frames_one_padded_clip(
    random_extractor: C3dExtractor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs: list[torch.Tensor] = []

    def recording_fc6(clips: torch.Tensor) -> torch.Tensor:
        # Records the network input; the real forward pass runs in the video tests.
        inputs.append(clips.clone())
        return torch.ones(clips.shape[0], 4096)

    monkeypatch.setattr(random_extractor.model, "fc6_features", recording_fc6)
    pixels = np.random.default_rng(1).integers(0, 256, (10, 128, 171, 3), dtype=np.uint8)
    times = np.arange(10) / 25.0
    with caplog.at_level(logging.INFO, logger="extractors.c3d"):
        sequence = random_extractor.extract_chunks(
            [chunk(pixels[:4], times[:4]), chunk(pixels[4:], times[4:])], "ten.mp4"
        )
    assert sequence.features.shape == (1, 4096)
    assert sequence.times == pytest.approx([np.mean(times)])
    assert any("padded" in record.getMessage() for record in caplog.records)

    # The network input built by hand: centre crop, BGR, mean subtracted, last frame repeated.
    cropped = pixels[:, 8:120, 29:141, ::-1].astype(np.float32)
    clip = np.concatenate([cropped, np.repeat(cropped[-1:], 6, axis=0)])
    clip -= np.array([90.25, 97.66, 101.41], dtype=np.float32)
    expected = torch.from_numpy(clip).permute(3, 0, 1, 2)[None]
    assert len(inputs) == 1
    assert inputs[0].shape == (1, 3, 16, 112, 112)
    torch.testing.assert_close(inputs[0], expected)


def test_no_frames(random_extractor: C3dExtractor) -> None:
    with pytest.raises(BadVideoError, match="empty.mp4"):
        random_extractor.extract_chunks([], "empty.mp4")


def test_wrong_frame_size(random_extractor: C3dExtractor) -> None:
    wrong = np.zeros((2, 112, 112, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="128, 171, 3"):
        random_extractor.extract_chunks([chunk(wrong, np.zeros(2))], "small.mp4")


def test_attributes(random_extractor: C3dExtractor) -> None:
    attributes = random_extractor.attributes()
    recipe = json.loads(attributes["preprocessing"])
    assert attributes["weights"] == "random-init"
    assert attributes["layer"] == "fc6"
    assert attributes["clip_length"] == 16
    assert attributes["stride"] == 16
    assert attributes["fps"] == 4.0
    assert recipe["mean_bgr"] == [90.25, 97.66, 101.41]
    assert recipe["input_space"] == "BGR"
    assert recipe["crop"] == 112
    assert recipe["frame_rate"] == 4.0


def test_default_settings() -> None:
    settings = C3dSettings.from_config({}, frame_chunk=8)
    assert settings.fps is None  # the native frame rate
    assert settings.geometry().height == 128
    assert settings.geometry().width == 171
    assert settings.geometry().crop is None


def test_checkpoint_in_port_layout(torch_home: Path, random_extractor: C3dExtractor) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    state = random_extractor.model.state_dict()
    path = folder / WEIGHTS_FILE_NAME
    torch.save(state, path)

    extractor = C3dExtractor(C3dSettings(), CPU)
    attributes = extractor.attributes()
    assert attributes["weights"] == "c3d.pickle"
    assert attributes["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(extractor.model.fc6.weight, state["fc6.weight"])


def test_wrong_keys_name_file(torch_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "c3d-renamed.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3, 3), "classifier.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(InvalidWeightsError) as caught:
        C3dExtractor(C3dSettings(weights=str(path)), CPU)
    message = str(caught.value)
    assert str(path) in message
    assert "unexpected keys: classifier.weight" in message
    assert "missing keys: conv1.bias" in message


def test_missing_file_message(torch_home: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        build_extractor("c3d", {"pretrained": True}, CPU, frame_chunk=8)
    message = str(caught.value)
    assert "c3d.pickle" in message
    assert "SHA-256 is not published" in message
    assert str(torch_home / "hub" / "checkpoints") in message


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="exactly 16"):
        C3dSettings.from_config({"clip_length": 8}, frame_chunk=8)
    with pytest.raises(ValueError, match="mean_bgr"):
        C3dSettings.from_config({"mean_bgr": [1.0, 2.0]}, frame_chunk=8)
    with pytest.raises(ValueError, match="stride"):
        C3dSettings.from_config({"stride": 0}, frame_chunk=8)
    with pytest.raises(ValueError, match="unknown keys"):
        C3dSettings.from_config({"clip": 16}, frame_chunk=8)


def run_on_video(extractor: C3dExtractor, name: str) -> tuple[VideoInput, np.ndarray, np.ndarray]:
    from extractors.probe import probe_video

    path = DATA / "videos" / name
    probe = probe_video(path)
    video = VideoInput(video_id=path.stem, path=path, probe=probe, audio=None, sample_rate=22050)
    sequence = extractor.extract(video)
    return video, sequence.features, sequence.times


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video(random_extractor: C3dExtractor) -> None:
    # fire2.mp4: 2.38 s, so 4 fps gives 10 frames at 0, 0.25, ..., 2.25 s: one padded clip.
    video, features, times = run_on_video(random_extractor, "fire2.mp4")
    assert features.shape == (1, 4096)
    assert np.all(np.isfinite(features))
    assert np.all(features >= 0)  # fc6 after ReLU
    assert np.any(features > 0)
    assert times == pytest.approx([np.mean(np.arange(10) * 0.25)])
    assert times[0] < video.probe.duration


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video_without_audio(random_extractor: C3dExtractor) -> None:
    # videochat_dancing_example_4.mp4: 3.96 s without audio; 4 fps gives 16 frames at
    # 0, 0.25, ..., 3.75 s, one clip whose time is their mean.
    _, features, times = run_on_video(random_extractor, "videochat_dancing_example_4.mp4")
    assert features.shape == (1, 4096)
    assert times == pytest.approx([np.mean(np.arange(16) * 0.25)])
