"""Tests of the Inception-ResNet v2 extractor: weights loading, preprocessing and features."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pretrainedmodels
import pytest
import torch

from extractors.base import VideoInput
from extractors.errors import BadVideoError, WeightsNotFoundError
from extractors.irv2 import (
    WEIGHTS_FILE_NAME,
    Irv2Extractor,
    Irv2Settings,
    build_irv2_network,
    rebatch,
)
from extractors.registry import build_extractor
from extractors.weights import InvalidWeightsError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CPU = torch.device("cpu")
IMAGENET = pretrainedmodels.pretrained_settings["inceptionresnetv2"]["imagenet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint in the key layout of the released file: the 1001-class network's state dict."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "irv2-custom.pth"
    torch.save(build_irv2_network().state_dict(), path)
    return path


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def random_build() -> tuple[Irv2Extractor, list[logging.LogRecord]]:
    """A random-init extractor at 0.5 fps (few frames per test video) and its warnings."""
    torch.manual_seed(0)
    handler = RecordingHandler()
    logging.getLogger("extractors").addHandler(handler)
    try:
        built = build_extractor(
            "irv2", {"pretrained": False, "fps": 0.5, "batch_size": 2}, CPU, frame_chunk=4
        )
    finally:
        logging.getLogger("extractors").removeHandler(handler)
    assert isinstance(built, Irv2Extractor)
    return built, handler.records


@pytest.fixture(scope="module")
def random_extractor(random_build: tuple[Irv2Extractor, list[logging.LogRecord]]) -> Irv2Extractor:
    return random_build[0]


def frames(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 299, 299, 3), dtype=np.uint8)


def chunk(pixels: np.ndarray, times: list[float]) -> SimpleNamespace:
    return SimpleNamespace(frames=pixels, times=np.asarray(times, dtype=np.float64))


def test_default_file_prefix_mismatch(torch_home: Path, checkpoint: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(checkpoint, folder / WEIGHTS_FILE_NAME)
    with pytest.raises(InvalidWeightsError) as caught:
        Irv2Extractor(Irv2Settings(), CPU)
    message = str(caught.value)
    assert str(folder / WEIGHTS_FILE_NAME) in message
    assert "starting with 520b38e4" in message


def test_configured_checkpoint_loads(torch_home: Path, checkpoint: Path) -> None:
    extractor = Irv2Extractor(Irv2Settings(weights=str(checkpoint), batch_size=2), CPU)
    attributes = extractor.attributes()
    assert attributes["weights"] == "irv2-custom.pth"
    assert attributes["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert torch.equal(extractor.model.network.last_linear.weight, saved["last_linear.weight"])
    assert extractor.model.network.last_linear.weight.shape == (1001, 1536)


def test_wrong_keys_name_file(torch_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "data-parallel.pth"
    torch.save({"module.conv2d_1a.conv.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(InvalidWeightsError) as caught:
        Irv2Extractor(Irv2Settings(weights=str(path)), CPU)
    message = str(caught.value)
    assert str(path) in message
    assert "unexpected keys: module.conv2d_1a.conv.weight" in message
    assert "missing keys: " in message


def test_missing_file_message(torch_home: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        build_extractor("irv2", {"pretrained": True}, CPU, frame_chunk=4)
    message = str(caught.value)
    assert WEIGHTS_FILE_NAME in message
    assert "520b38e4" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "extractors.irv2.weights" in message


def test_random_init_recorded(random_build: tuple[Irv2Extractor, list[logging.LogRecord]]) -> None:
    extractor, records = random_build
    assert extractor.attributes()["weights"] == "random-init"
    assert extractor.attributes()["weights_sha256"] == "random-init"
    assert any("irv2" in record.getMessage() for record in records)


def test_preprocessing_matches_pretrained_settings(random_extractor: Irv2Extractor) -> None:
    recipe = json.loads(random_extractor.attributes()["preprocessing"])
    assert recipe["mean"] == IMAGENET["mean"]
    assert recipe["std"] == IMAGENET["std"]
    assert recipe["input_range"] == [0, 1]
    assert recipe["input_space"] == "RGB"
    assert recipe["short_side"] == 342
    assert recipe["crop"] == 299

    pixels = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # one RGB pixel
    normalized = random_extractor.model.normalize(pixels).flatten()
    mean = torch.tensor(IMAGENET["mean"])
    std = torch.tensor(IMAGENET["std"])
    expected = (torch.tensor([0, 128, 255]) / 255.0 - mean) / std
    torch.testing.assert_close(normalized, expected)
    assert normalized[0].item() == pytest.approx(-1.0)
    assert normalized[2].item() == pytest.approx(1.0)


def test_attributes(random_extractor: Irv2Extractor) -> None:
    attributes = random_extractor.attributes()
    assert attributes["extractor"] == "irv2"
    assert attributes["fps"] == 0.5
    assert attributes["clip_length"] == 1
    assert attributes["sample_rate"] == 0
    assert random_extractor.dim == 1536


def test_rebatch_keeps_order() -> None:
    pixels = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    chunks = [chunk(pixels[:1], [0.0]), chunk(pixels[1:4], [0.5, 1.0, 1.5]), chunk(pixels[4:], [2.0])]
    batches = list(rebatch(chunks, 2))
    assert [len(batch_frames) for batch_frames, _ in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([batch[0] for batch in batches]).ravel(), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(np.concatenate([batch[1] for batch in batches]), [0.0, 0.5, 1.0, 1.5, 2.0])


def test_forward_two_frames(random_extractor: Irv2Extractor) -> None:
    pixels = frames(2, seed=1)
    chunks = [chunk(pixels[:1], [0.0]), chunk(pixels[1:], [0.5])]
    sequence = random_extractor.extract_chunks(chunks, "clip.mp4")
    assert sequence.features.shape == (2, 1536)
    assert sequence.features.dtype == np.float32
    assert np.all(np.isfinite(sequence.features))
    np.testing.assert_array_equal(sequence.times, [0.0, 0.5])

    # The feature is the classifier's input (avgpool_1a over the 8x8 map), and a frame's
    # feature does not depend on the other frames of its batch.
    model = random_extractor.model
    second = torch.from_numpy(pixels[1:])
    with torch.inference_mode():
        pooled = model.network.avgpool_1a(model.network.features(model.normalize(second))).flatten(1)
    np.testing.assert_allclose(sequence.features[1], pooled[0].numpy(), rtol=1e-4, atol=1e-5)


def test_wrong_frame_size(random_extractor: Irv2Extractor) -> None:
    wrong = np.zeros((1, 224, 224, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="299, 299, 3"):
        random_extractor.extract_chunks([chunk(wrong, [0.0])], "clip.mp4")


def test_no_frames(random_extractor: Irv2Extractor) -> None:
    with pytest.raises(BadVideoError, match="clip.mp4"):
        random_extractor.extract_chunks([], "clip.mp4")


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        Irv2Settings.from_config({"fsp": 2.0}, frame_chunk=8)
    with pytest.raises(ValueError, match="fps"):
        Irv2Settings.from_config({"fps": 0}, frame_chunk=8)
    with pytest.raises(ValueError, match="precision"):
        Irv2Settings.from_config({"precision": "half"}, frame_chunk=8)


def run_on_video(extractor: Irv2Extractor, name: str) -> tuple[VideoInput, np.ndarray, np.ndarray]:
    from extractors.probe import probe_video

    path = DATA / "videos" / name
    probe = probe_video(path)
    video = VideoInput(video_id=path.stem, path=path, probe=probe, audio=None, sample_rate=22050)
    sequence = extractor.extract(video)
    return video, sequence.features, sequence.times


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video(random_extractor: Irv2Extractor) -> None:
    video, features, times = run_on_video(random_extractor, "fire2.mp4")  # 2.38 s at 0.5 fps
    assert features.shape == (2, 1536)
    assert np.all(np.isfinite(features))
    np.testing.assert_allclose(times, [0.0, 2.0])
    assert times[-1] <= video.probe.duration


@pytest.mark.skipif(not (DATA / "videos").is_dir(), reason="shared test videos not found")
def test_real_video_without_audio(random_extractor: Irv2Extractor) -> None:
    _, features, times = run_on_video(random_extractor, "videochat_dancing_example_4.mp4")  # 3.96 s
    assert features.shape == (2, 1536)
    assert np.all(np.isfinite(features))
    np.testing.assert_allclose(times, [0.0, 2.0])
