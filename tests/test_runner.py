"""Tests of the shard jobs on real videos made with ffmpeg: values, bad input, kill and resume."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import pytest
import torch

from extractors import registry
from extractors.artifacts import (
    list_videos,
    read_failed_tsv,
    read_file_attributes,
    read_video_group,
)
from extractors.base import FeatureExtractor, FeatureSequence, VideoInput
from extractors.errors import BadVideoError
from extractors.mfcc import MfccExtractor, MfccSettings
from extractors.probe import VideoProbe
from extractors.runner import decode_shard, extract_shard
from extractors.video_index import write_video_index

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 22050
SECONDS = 2.0
# ffmpeg's sine source has amplitude 1/8, so its RMS is (1/8) / sqrt(2).
SINE_RMS = 0.125 / np.sqrt(2.0)

# Video ids of the good videos, with the tone frequency (Hz) of each, or None for no audio.
GOOD_VIDEOS = {
    "-leading dash": 330.0,
    "clip one": 440.0,
    "it's \"quoted\"": 550.0,
    "vidéo 動画": 660.0,
    "plain": 770.0,
    "silent": None,
}

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg and ffprobe are needed to make and read the test videos",
)


def make_video(path: Path, frequency: float | None, faststart: bool = True) -> Path:
    """Encode a 2 s, 64x48, 8 fps testsrc video with a sine tone (AAC) unless `frequency` is None."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    command += ["-f", "lavfi", "-i", f"testsrc=size=64x48:rate=8:duration={SECONDS}"]
    if frequency is not None:
        command += ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate={SAMPLE_RATE}:duration={SECONDS}"]
    command += ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    if frequency is not None:
        command += ["-c:a", "aac"]
    if faststart:
        command += ["-movflags", "+faststart"]
    command.append(f"file:{path}")
    subprocess.run(command, check=True, capture_output=True)
    return path


def write_index(folder: Path, videos: dict[str, Path], shard_size: int = 16) -> Path:
    index = folder / "videos.tsv"
    write_video_index(index, videos, [], shard_size)
    return index


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        video_id: make_video(folder / f"{video_id}.mp4", frequency)
        for video_id, frequency in GOOD_VIDEOS.items()
    }


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, good_videos) -> dict[str, Path]:
    """Three unusable files: empty, truncated before its index (moov atom), and text."""
    folder = tmp_path_factory.mktemp("bad")
    empty = folder / "empty file.mp4"
    empty.write_bytes(b"")

    # Without +faststart the moov atom sits at the end, so the first 4 KiB hold none of it.
    whole = make_video(folder / "whole.mp4", 440.0, faststart=False)
    truncated = folder / "-trunc'ated.mp4"
    truncated.write_bytes(whole.read_bytes()[:4096])
    whole.unlink()

    text = folder / "notes ü.mp4"
    text.write_text("this is a text file, not a video\n", encoding="utf-8")
    return {"empty file": empty, "-trunc'ated": truncated, "notes ü": text}


@pytest.fixture(scope="module")
def decoded_shard(tmp_path_factory, good_videos) -> tuple[Path, Path]:
    """Decode the good videos once; returns the artifact and its failed.tsv."""
    folder = tmp_path_factory.mktemp("decoded")
    index = write_index(folder, good_videos)
    output, failed = folder / "shard0.h5", folder / "shard0.failed.tsv"
    decode_shard(index, 0, output, failed, **decode_options("skip"))
    return output, failed


def decode_options(on_bad_video: str) -> dict[str, Any]:
    return {"sample_rate": SAMPLE_RATE, "video_stream": 0, "audio_stream": 0, "on_bad_video": on_bad_video}


def extract_options(decode_failed: Path, on_bad_video: str = "skip") -> dict[str, Any]:
    return {
        "decode_failed": decode_failed,
        "device": torch.device("cpu"),
        "frame_chunk": 8,
        "on_bad_video": on_bad_video,
        "feature_dtype": "float16",
    }


class RmsExtractor(FeatureExtractor):
    """Root mean square of the waveform over 0.5 s windows; rejects videos without audio."""

    name: ClassVar[str] = "rms"
    input_kind: ClassVar[str] = "audio"

    @property
    def dim(self) -> int:
        return 1

    def attributes(self) -> dict[str, Any]:
        return {
            "extractor": self.name,
            "weights": "none",
            "weights_sha256": "none",
            "layer": "rms",
            "fps": 0.0,
            "clip_length": 0,
            "stride": 0,
            "sample_rate": SAMPLE_RATE,
            "preprocessing": json.dumps({"window_seconds": 0.5}),
        }

    def extract(self, video: VideoInput) -> FeatureSequence:
        if video.audio is None:
            raise BadVideoError(video.path, "no audio stream")
        window = video.sample_rate // 2
        steps = len(video.audio) // window
        blocks = video.audio[: steps * window].reshape(steps, window).astype(np.float64)
        return FeatureSequence(
            features=np.sqrt(np.mean(blocks**2, axis=1, keepdims=True)).astype(np.float32),
            times=np.arange(steps) * 0.5 + 0.25,
        )


@pytest.fixture
def rms_registry(monkeypatch):
    """Make `build_extractor("rms", ...)` return an RmsExtractor; other names build as usual."""
    build = registry.build_extractor

    def build_with_rms(name, settings, device, *, frame_chunk):
        if name == "rms":
            return RmsExtractor()
        return build(name, settings, device, frame_chunk=frame_chunk)

    monkeypatch.setattr(registry, "build_extractor", build_with_rms)


def artifact_contents(path: Path) -> tuple[dict[str, Any], dict[str, tuple[dict, dict]]]:
    """Return the file attributes (without created_at) and every group's arrays and attributes."""
    file_attrs = read_file_attributes(path)
    file_attrs.pop("created_at")
    groups = {}
    with h5py.File(path, "r") as h5file:
        for video_id in h5file:
            group = read_video_group(h5file, video_id)
            groups[video_id] = (group.datasets, group.attrs)
    return file_attrs, groups


def assert_same_artifact(actual: Path, expected: Path) -> None:
    actual_attrs, actual_groups = artifact_contents(actual)
    expected_attrs, expected_groups = artifact_contents(expected)
    assert actual_attrs == expected_attrs
    assert sorted(actual_groups) == sorted(expected_groups)
    for video_id, (datasets, attrs) in expected_groups.items():
        actual_datasets, actual_group_attrs = actual_groups[video_id]
        assert actual_group_attrs == attrs, video_id
        assert sorted(actual_datasets) == sorted(datasets), video_id
        for name, array in datasets.items():
            assert actual_datasets[name].dtype == array.dtype, (video_id, name)
            np.testing.assert_array_equal(actual_datasets[name], array, err_msg=f"{video_id}/{name}")


# ---------------------------------------------------------------------------------------------
# decode_shard


def test_decode_values(decoded_shard, good_videos):
    output, failed = decoded_shard
    assert read_file_attributes(output)["artifact"] == "decoded"
    assert read_failed_tsv(failed) == []

    for video_id, frequency in GOOD_VIDEOS.items():
        group = read_video_group(output, video_id)
        audio = group.datasets["audio"]
        assert group.attrs["path"] == str(good_videos[video_id])
        assert group.attrs["sample_rate"] == SAMPLE_RATE
        assert group.attrs["duration"] == pytest.approx(SECONDS, abs=0.15)
        assert VideoProbe.from_json(group.attrs["probe"]).width == 64
        assert audio.dtype == np.float32
        if frequency is None:
            assert group.attrs["has_audio"] is False
            assert audio.shape == (0,)
        else:
            assert group.attrs["has_audio"] is True
            assert len(audio) == pytest.approx(SECONDS * SAMPLE_RATE, rel=0.03)
            # Skip the AAC encoder's fade-in at the start.
            rms = np.sqrt(np.mean(audio[2048:-2048].astype(np.float64) ** 2))
            assert rms == pytest.approx(SINE_RMS, rel=0.05)


def test_decode_second_shard(tmp_path, good_videos):
    index = write_index(tmp_path, good_videos, shard_size=4)
    output, failed = tmp_path / "shard1.h5", tmp_path / "shard1.failed.tsv"
    decode_shard(index, 1, output, failed, **decode_options("skip"))
    # Sorted ids: the last two of the six fall in shard 1.
    assert list_videos(output) == sorted(GOOD_VIDEOS)[4:]


def test_decode_warns_no_audio(tmp_path, good_videos, caplog):
    index = write_index(tmp_path, {"silent": good_videos["silent"]})
    with caplog.at_level(logging.WARNING):
        decode_shard(index, 0, tmp_path / "s.h5", tmp_path / "s.failed.tsv", **decode_options("skip"))
    assert "'silent'" in caplog.text
    assert "no audio stream" in caplog.text


def test_decode_skip_bad_videos(tmp_path, good_videos, bad_videos, caplog):
    videos = {**good_videos, **bad_videos}
    index = write_index(tmp_path, videos)
    output, failed = tmp_path / "shard0.h5", tmp_path / "shard0.failed.tsv"
    with caplog.at_level(logging.WARNING):
        decode_shard(index, 0, output, failed, **decode_options("skip"))

    rows = {row.video_id: row for row in read_failed_tsv(failed)}
    assert sorted(rows) == sorted(bad_videos)
    for video_id, path in bad_videos.items():
        assert rows[video_id].path == str(path)
        assert rows[video_id].stage == "decode"
        assert rows[video_id].reason != ""
    assert rows["empty file"].reason == "file is empty (0 bytes)"
    assert "ffprobe failed" in rows["notes ü"].reason
    assert "ffprobe failed" in rows["-trunc'ated"].reason

    assert list_videos(output) == sorted(good_videos)
    for video_id in good_videos:
        assert read_video_group(output, video_id).attrs["duration"] == pytest.approx(SECONDS, abs=0.15)
    assert f"3 of 9 videos failed, listed in {failed}" in caplog.text


def test_decode_fail_names_file(tmp_path, good_videos, bad_videos):
    index = write_index(tmp_path, {**good_videos, **bad_videos})
    output = tmp_path / "shard0.h5"
    # "-trunc'ated" sorts first among the bad ids, so it stops the job.
    with pytest.raises(RuntimeError, match="-trunc'ated.mp4") as raised:
        decode_shard(index, 0, output, tmp_path / "shard0.failed.tsv", **decode_options("fail"))
    assert "ffprobe failed" in str(raised.value)
    assert isinstance(raised.value.__cause__, BadVideoError)
    assert not output.exists()


def test_decode_resumes_after_failure(tmp_path, good_videos, bad_videos, decoded_shard, caplog):
    reference, _ = decoded_shard
    videos = {"clip one": good_videos["clip one"], "notes ü": bad_videos["notes ü"]}
    index = write_index(tmp_path, videos)
    output, failed = tmp_path / "shard0.h5", tmp_path / "shard0.failed.tsv"
    with pytest.raises(RuntimeError, match="notes ü.mp4"):
        decode_shard(index, 0, output, failed, **decode_options("fail"))
    assert not output.exists()

    with caplog.at_level(logging.INFO):
        decode_shard(index, 0, output, failed, **decode_options("skip"))
    assert f"resuming {output}: 1 of 2 videos already done" in caplog.text
    assert list_videos(output) == ["clip one"]
    np.testing.assert_array_equal(
        read_video_group(output, "clip one").datasets["audio"],
        read_video_group(reference, "clip one").datasets["audio"],
    )
    assert [row.video_id for row in read_failed_tsv(failed)] == ["notes ü"]


def test_decode_drops_parts_of_old_index(tmp_path, good_videos, bad_videos):
    output, failed = tmp_path / "shard0.h5", tmp_path / "shard0.failed.tsv"
    old_index = write_index(tmp_path, {"clip one": good_videos["clip one"], "notes ü": bad_videos["notes ü"]})
    with pytest.raises(RuntimeError, match="notes ü.mp4"):
        decode_shard(old_index, 0, output, failed, **decode_options("fail"))

    new_index = write_index(tmp_path, {"plain": good_videos["plain"]})
    decode_shard(new_index, 0, output, failed, **decode_options("skip"))
    assert list_videos(output) == ["plain"]


def test_decode_invalid_policy(tmp_path, good_videos):
    index = write_index(tmp_path, good_videos)
    with pytest.raises(ValueError, match="invalid on_bad_video 'ignore'"):
        decode_shard(index, 0, tmp_path / "s.h5", tmp_path / "s.tsv", **decode_options("ignore"))


# ---------------------------------------------------------------------------------------------
# extract_shard


def test_extract_mfcc_values(tmp_path, decoded_shard):
    decoded, decode_failed = decoded_shard
    output, failed = tmp_path / "mfcc.h5", tmp_path / "mfcc.failed.tsv"
    extract_shard("mfcc", {}, decoded, output, failed, **extract_options(decode_failed))

    assert read_file_attributes(output)["artifact"] == "features"
    assert read_failed_tsv(failed) == []
    reference = MfccExtractor(MfccSettings())
    for video_id, frequency in GOOD_VIDEOS.items():
        group = read_video_group(output, video_id)
        features, times = group.datasets["features"], group.datasets["times"]
        assert features.dtype == np.float16
        assert times.dtype == np.float64
        assert group.attrs["extractor"] == "mfcc"
        assert group.attrs["has_audio"] is (frequency is not None)
        assert group.attrs["duration"] == pytest.approx(SECONDS, abs=0.15)
        audio = read_video_group(decoded, video_id).datasets["audio"]
        expected = reference.extract_waveform(audio)
        np.testing.assert_allclose(features, expected.features, rtol=2e-3, atol=2e-2)
        np.testing.assert_array_equal(times, expected.times)


def test_extract_skip_lists_all_stages(tmp_path, good_videos, bad_videos, rms_registry, caplog):
    index = write_index(tmp_path, {**good_videos, **bad_videos})
    decoded, decode_failed = tmp_path / "shard0.h5", tmp_path / "shard0.failed.tsv"
    decode_shard(index, 0, decoded, decode_failed, **decode_options("skip"))
    output, failed = tmp_path / "rms.h5", tmp_path / "rms.failed.tsv"
    with caplog.at_level(logging.WARNING):
        extract_shard("rms", {}, decoded, output, failed, **extract_options(decode_failed))

    rows = read_failed_tsv(failed)
    stages = {row.video_id: row.stage for row in rows}
    assert stages == {**{video_id: "decode" for video_id in bad_videos}, "silent": "extract_rms"}
    assert [row.reason for row in rows if row.video_id == "silent"] == ["no audio stream"]
    assert f"4 of 9 videos failed, listed in {failed}" in caplog.text

    with_audio = [video_id for video_id, frequency in GOOD_VIDEOS.items() if frequency is not None]
    assert list_videos(output) == sorted(with_audio)
    for video_id in with_audio:
        group = read_video_group(output, video_id)
        assert group.datasets["features"].shape == (4, 1)
        # Skip the first window, which contains the AAC encoder's fade-in.
        np.testing.assert_allclose(group.datasets["features"][1:, 0], SINE_RMS, rtol=0.05)
        np.testing.assert_array_equal(group.datasets["times"], [0.25, 0.75, 1.25, 1.75])
        assert group.attrs["extractor"] == "rms"
        assert group.attrs["has_audio"] is True


def test_extract_fail_names_file(tmp_path, decoded_shard, good_videos, rms_registry):
    decoded, decode_failed = decoded_shard
    output = tmp_path / "rms.h5"
    with pytest.raises(RuntimeError, match="silent.mp4") as raised:
        extract_shard("rms", {}, decoded, output, tmp_path / "f.tsv", **extract_options(decode_failed, "fail"))
    assert "no audio stream" in str(raised.value)
    assert not output.exists()


def test_extract_rejects_features_artifact(tmp_path, decoded_shard):
    decoded, decode_failed = decoded_shard
    features = tmp_path / "mfcc.h5"
    extract_shard("mfcc", {}, decoded, features, tmp_path / "mfcc.failed.tsv", **extract_options(decode_failed))
    with pytest.raises(ValueError, match="expected a decoded artifact"):
        extract_shard("mfcc", {}, features, tmp_path / "x.h5", tmp_path / "x.tsv", **extract_options(decode_failed))


def test_extract_invalid_dtype(tmp_path, decoded_shard):
    decoded, decode_failed = decoded_shard
    options = {**extract_options(decode_failed), "feature_dtype": "int8"}
    with pytest.raises(ValueError, match="invalid feature_dtype 'int8'"):
        extract_shard("mfcc", {}, decoded, tmp_path / "x.h5", tmp_path / "x.tsv", **options)


# ---------------------------------------------------------------------------------------------
# Kill and resume


# Runs one job in a fresh interpreter. Each video first sleeps `delay` seconds, so that the
# SIGKILL sent after the first part appears lands while later videos are still pending.
CHILD_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from models.runtime import configure_logging
from extractors import registry, runner

configure_logging(None, "INFO")
job = json.loads(sys.argv[2])
delay = job.pop("delay")
kind = job.pop("kind")

def slowed(function):
    def call(*args, **kwargs):
        time.sleep(delay)
        return function(*args, **kwargs)
    return call

if kind == "decode":
    runner.decode_audio = slowed(runner.decode_audio)
    runner.decode_shard(job.pop("index"), job.pop("shard"), job.pop("output"), job.pop("failed"), **job)
else:
    build = registry.build_extractor
    def build_slowed(*args, **kwargs):
        extractor = build(*args, **kwargs)
        extractor.extract = slowed(extractor.extract)
        return extractor
    registry.build_extractor = build_slowed
    job["device"] = torch.device(job["device"])
    runner.extract_shard(
        job.pop("name"), job.pop("settings"), job.pop("decoded"), job.pop("output"), job.pop("failed"), **job
    )
"""


def kill_after_first_part(job: dict[str, Any], output: Path, timeout: float = 60.0) -> None:
    """Run `job` in a child process and SIGKILL it once a finished part file exists."""
    parts = output.with_name(output.name + ".parts")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(REPOSITORY_ROOT), json.dumps(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while not list(parts.glob("*.h5")):
            if child.poll() is not None:
                pytest.fail(f"job ended before any part was written:\n{child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no part appeared in {parts} within {timeout} s")
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def assert_parts_complete(output: Path, expected: Path) -> int:
    """Check that every part under `<output>.parts/` is one complete video; return their count."""
    parts = sorted(output.with_name(output.name + ".parts").glob("*.h5"))
    for part in parts:
        with h5py.File(part, "r") as h5file:
            (video_id,) = h5file.keys()
            group = read_video_group(h5file, video_id)
        reference = read_video_group(expected, video_id)
        assert group.attrs == reference.attrs, part
        for name, array in reference.datasets.items():
            np.testing.assert_array_equal(group.datasets[name], array, err_msg=f"{part}/{name}")
    return len(parts)


def test_decode_killed_then_resumed(tmp_path, good_videos, decoded_shard, caplog):
    reference, _ = decoded_shard
    index = write_index(tmp_path, good_videos)
    output, failed = tmp_path / "shard0.h5", tmp_path / "shard0.failed.tsv"
    job = {"kind": "decode", "delay": 0.4, "index": str(index), "shard": 0, "output": str(output),
           "failed": str(failed), **decode_options("skip")}

    kill_after_first_part(job, output)

    assert not output.exists()
    assert not failed.exists()
    finished = assert_parts_complete(output, reference)
    assert 1 <= finished < len(GOOD_VIDEOS)

    with caplog.at_level(logging.INFO):
        decode_shard(index, 0, output, failed, **decode_options("skip"))
    assert f"resuming {output}: {finished} of {len(GOOD_VIDEOS)} videos already done" in caplog.text
    assert_same_artifact(output, reference)
    assert read_failed_tsv(failed) == []
    assert not output.with_name("shard0.h5.parts").exists()


def test_extract_killed_then_resumed(tmp_path, decoded_shard, caplog):
    decoded, decode_failed = decoded_shard
    reference = tmp_path / "reference.h5"
    extract_shard("mfcc", {}, decoded, reference, tmp_path / "reference.failed.tsv", **extract_options(decode_failed))

    output, failed = tmp_path / "mfcc.h5", tmp_path / "mfcc.failed.tsv"
    options = {**extract_options(decode_failed), "decode_failed": str(decode_failed), "device": "cpu"}
    job = {"kind": "extract", "delay": 0.4, "name": "mfcc", "settings": {}, "decoded": str(decoded),
           "output": str(output), "failed": str(failed), **options}

    kill_after_first_part(job, output)

    assert not output.exists()
    assert not failed.exists()
    finished = assert_parts_complete(output, reference)
    assert 1 <= finished < len(GOOD_VIDEOS)

    with caplog.at_level(logging.INFO):
        extract_shard("mfcc", {}, decoded, output, failed, **extract_options(decode_failed))
    assert f"resuming {output}: {finished} of {len(GOOD_VIDEOS)} videos already done" in caplog.text
    assert_same_artifact(output, reference)
    assert read_failed_tsv(failed) == []
