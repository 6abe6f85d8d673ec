"""Decode frames and audio of a video with one ffmpeg process per call.

Frames come out of ffmpeg as raw RGB24 on a pipe and are read a fixed number at a time, so
memory stays bounded by the chunk size whatever the length of the video. Each frame carries
its presentation time, parsed from a `showinfo` filter placed last in the filter graph.

Requires FFmpeg 5.1 or newer (`-fps_mode`, `showinfo=checksum=0`). ffmpeg applies the
rotation metadata of the stream (its default autorotation), so frames come out upright and
at the display size of the probe.
"""

from __future__ import annotations

import contextlib

import logging
import queue
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from extractors.errors import BadVideoError
from extractors.probe import VideoProbe

logger = logging.getLogger(__name__)

FFMPEG = "ffmpeg"

# Name of the showinfo filter instance, which distinguishes its log lines from those of any
# other filter.
_SHOWINFO_NAME = "showinfo@pmi_frames"
_SHOWINFO_PREFIX = r"^\[[^\]]*showinfo@pmi_frames[^\]]* @ 0x[0-9a-fA-F]+\] \[info\] "
_FRAME_LINE = re.compile(
    _SHOWINFO_PREFIX + r"n:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:\S+.*?\ss:(\d+)x(\d+)\s"
)
_TIME_BASE_LINE = re.compile(_SHOWINFO_PREFIX + r"config in time_base: (\d+)/(\d+)")
# With `-loglevel level+...` every line carries its level in brackets.
_LEVEL = re.compile(r"^(?:\[[^\]]* @ 0x[0-9a-fA-F]+\] )?\[(warning|error|fatal|panic)\] ")

# Error and warning lines of ffmpeg's log kept for messages, each.
_LINES_KEPT = 20

T = TypeVar("T")


@dataclass(frozen=True)
class FrameGeometry:
    """Size of the frames that come out of ffmpeg.

    `short_side` scales the frame so its shorter side has that many pixels and keeps the
    aspect ratio. `height` and `width` resize to exactly that size and ignore the aspect
    ratio. `crop` then cuts a centred `crop` x `crop` square. Give `short_side`, or `height`
    and `width` together, or neither (frames keep the display size). Resizing uses bilinear
    interpolation (swscale `flags=bilinear`). Pixels are treated as square, so a stream
    with a non-square sample aspect ratio is not stretched.
    """

    short_side: int | None = None
    height: int | None = None
    width: int | None = None
    crop: int | None = None

    def __post_init__(self) -> None:
        for name in ("short_side", "height", "width", "crop"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"FrameGeometry.{name} must be positive, got {value}")
        if (self.height is None) != (self.width is None):
            raise ValueError("FrameGeometry needs height and width together, or neither")
        if self.short_side is not None and self.height is not None:
            raise ValueError("FrameGeometry takes short_side or height and width, not both")
        if self.crop is not None:
            smallest = self.short_side or min(self.height or self.crop, self.width or self.crop)
            if self.crop > smallest:
                raise ValueError(
                    f"FrameGeometry.crop {self.crop} is larger than the resized frame "
                    f"({smallest} pixels on its shorter side)"
                )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """Return (width, height) of a `width` x `height` frame after resizing, before crop."""
        if self.height is not None and self.width is not None:
            return self.width, self.height
        if self.short_side is None:
            return width, height
        if width <= height:
            return self.short_side, max(1, round(height * self.short_side / width))
        return max(1, round(width * self.short_side / height)), self.short_side

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Return (width, height) of a `width` x `height` frame after resizing and cropping."""
        if self.crop is not None:
            return self.crop, self.crop
        return self.resized_size(width, height)


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive decoded frames.

    `frames` is uint8 `(B, H, W, 3)` in RGB order. `times` is float64 `(B,)`, the
    presentation time of each frame in seconds from the start of the video stream.
    """

    frames: np.ndarray
    times: np.ndarray


@dataclass(frozen=True)
class _FrameRecord:
    """One frame as showinfo reported it: time in seconds and size in pixels."""

    time: float
    width: int
    height: int


class _FfmpegLog:
    """Read ffmpeg's stderr in a thread: frame records from showinfo, errors and warnings.

    ffmpeg logs a frame in showinfo before it writes the frame to stdout, so the reader of
    stdout can wait for the record of the next frame before it reads the frame's bytes.
    """

    def __init__(self, stream: IO[bytes], parse_frames: bool) -> None:
        self._stream = stream
        self._parse_frames = parse_frames
        self._records: queue.Queue[_FrameRecord | None] = queue.Queue()
        self._time_base: Fraction | None = None
        self.errors: list[str] = []
        self.error_count = 0
        self.warnings: list[str] = []
        self._thread = threading.Thread(target=self._run, name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw_line in self._stream:
                line = raw_line.decode("utf-8", errors="replace").rstrip()
                if self._parse_frames and self._parse_showinfo(line):
                    continue
                level = _LEVEL.match(line)
                if level is None:
                    continue
                if level.group(1) == "warning":
                    if len(self.warnings) < _LINES_KEPT:
                        self.warnings.append(line)
                else:
                    self.error_count += 1
                    if len(self.errors) < _LINES_KEPT:
                        self.errors.append(line)
        except (OSError, ValueError):
            # The stream was closed because the consumer stopped early.
            pass
        finally:
            self._records.put(None)

    def _parse_showinfo(self, line: str) -> bool:
        """Queue a frame record or store the time base when `line` comes from showinfo."""
        match = _FRAME_LINE.match(line)
        if match:
            pts_text, width, height = match.group(2), match.group(3), match.group(4)
            if self._time_base is None or not re.fullmatch(r"-?\d+", pts_text):
                time = float("nan")
            else:
                time = float(int(pts_text) * self._time_base)
            self._records.put(_FrameRecord(time, int(width), int(height)))
            return True
        match = _TIME_BASE_LINE.match(line)
        if match:
            numerator, denominator = int(match.group(1)), int(match.group(2))
            self._time_base = Fraction(numerator, denominator) if denominator else None
            return True
        return False

    def next_record(self) -> _FrameRecord | None:
        """Wait for the next frame record; None once stderr is closed."""
        return self._records.get()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def summary(self) -> str:
        """Return the first error lines, or the first warnings when ffmpeg logged no error."""
        lines = self.errors or self.warnings
        if not lines:
            return "ffmpeg logged no error or warning"
        return " | ".join(_strip_log_prefix(line) for line in lines[:5])


def _strip_log_prefix(line: str) -> str:
    """Remove ffmpeg's `[context @ 0x...] [level]` prefixes from a log line."""
    return re.sub(r"^(\[[^\]]*\] )+", "", line)


def _frame_filter_graph(probe: VideoProbe, fps: float | None, geometry: FrameGeometry) -> str:
    """Build the -vf filter graph: time shift, sampling, resize, RGB24, crop, showinfo."""
    # Times become relative to the start of the video stream. With -copyts the filter sees
    # the stream timestamps unchanged, whatever the container's own start time is. round()
    # matters because setpts truncates, and ffprobe prints start_time to 1 microsecond:
    # 2002 - 1001.01 ticks would truncate to 1000.
    filters = [f"setpts=round(PTS-({probe.start_time:.9f})/TB)"]
    if fps is not None:
        # round=up maps an input frame at time p to output tick ceil(p * fps); the filter
        # then emits at tick k the last frame with p <= k / fps, which is the frame on
        # screen at that time. start_time=0 starts the grid at time 0 and repeats the
        # first frame when the stream's first timestamp is slightly late.
        rate = Fraction(fps).limit_denominator(1_000_000)
        filters.append(f"fps=fps={rate.numerator}/{rate.denominator}:start_time=0:round=up")
    width, height = geometry.resized_size(probe.width, probe.height)
    if (width, height) == (probe.width, probe.height):
        filters.append("scale=flags=bilinear")
    else:
        filters.append(f"scale=w={width}:h={height}:flags=bilinear")
    # Conversion to RGB happens before the crop, so an odd crop offset is not rounded to
    # the chroma grid of a YUV format.
    filters.append("format=rgb24")
    if geometry.crop is not None:
        filters.append(f"crop=w={geometry.crop}:h={geometry.crop}")
    filters.append(f"{_SHOWINFO_NAME}=checksum=0")
    return ",".join(filters)


def _frame_command(
    path: Path, probe: VideoProbe, fps: float | None, geometry: FrameGeometry
) -> list[str]:
    return [
        FFMPEG,
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+verbose",
        "-copyts",
        # Applies the display matrix (ffmpeg's default, made explicit here).
        "-autorotate",
        "1",
        "-i",
        f"file:{Path(path).absolute()}",
        "-map",
        f"0:{probe.video_stream_index}",
        "-vf",
        _frame_filter_graph(probe, fps, geometry),
        # passthrough: every frame out of the filter graph is written once, never
        # duplicated or dropped to reach a constant rate.
        "-fps_mode",
        "passthrough",
        # The encoder time base must separate every pair of output frames, or the muxer
        # logs an error for each pair on one tick (it still writes both). 1 / fps does so
        # for sampled frames (0 selects it). For passthrough, the default 1 / frame rate
        # does not in a variable-rate stream, but the stream's own time base does (-1).
        "-enc_time_base",
        "0" if fps is not None else "-1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ]


def _start_ffmpeg(command: list[str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except FileNotFoundError as error:
        message = f"{FFMPEG} not found on PATH: install FFmpeg 5.1 or newer"
        raise FileNotFoundError(message) from error


def _stop_ffmpeg(process: subprocess.Popen[bytes], log: _FfmpegLog) -> None:
    """Kill ffmpeg if it still runs, then reap it and close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait()
    # The stderr thread sees end of file once ffmpeg is gone; join it before closing.
    log.join(timeout=5.0)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _read_exactly(stream: IO[bytes], buffer: memoryview) -> int:
    """Fill `buffer` from `stream`; return the bytes read (fewer only at end of stream)."""
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    return filled


def iter_frames(
    path: Path,
    probe: VideoProbe,
    *,
    fps: float | None,
    geometry: FrameGeometry,
    chunk_size: int,
) -> Iterator[FrameChunk]:
    """Decode the probe's video stream and yield frames `chunk_size` at a time.

    With `fps` given, frames are sampled by presentation time at times 0, 1/fps, 2/fps, ...
    up to the end of the stream: each is the frame on screen at that time, also in
    variable-frame-rate files. With `fps` None every decoded frame comes out once, at its
    own presentation time. Chunks hold at most `chunk_size` frames, so memory is bounded
    by `chunk_size * H * W * 3` bytes per chunk. A chunk is shorter at the end of the
    video, and when the frame size changes in the middle of the stream.

    Closing the generator early kills ffmpeg. Raises BadVideoError naming the file when
    ffmpeg fails or yields no frame. Error lines that ffmpeg logs while still exiting
    normally (a truncated file, a damaged packet) are logged as a warning.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive or None, got {fps}")

    process = _start_ffmpeg(_frame_command(path, probe, fps, geometry))
    assert process.stdout is not None and process.stderr is not None
    log = _FfmpegLog(process.stderr, parse_frames=True)
    frames_out = 0
    pending: _FrameRecord | None = None
    finished = False
    try:
        while not finished:
            record = pending or log.next_record()
            pending = None
            if record is None:
                break
            width, height = record.width, record.height
            frame_bytes = width * height * 3
            frames = np.empty((chunk_size, height, width, 3), dtype=np.uint8)
            times = np.empty(chunk_size, dtype=np.float64)
            count = 0
            while record is not None:
                if (record.width, record.height) != (width, height):
                    pending = record
                    break
                view = memoryview(frames[count].reshape(-1))
                if _read_exactly(process.stdout, view) < frame_bytes:
                    # ffmpeg stopped in the middle of a frame; its exit code gives the reason.
                    finished = True
                    break
                times[count] = record.time
                count += 1
                if count == chunk_size:
                    break
                record = log.next_record()
            if record is None:
                finished = True
            if count:
                if np.isnan(times[:count]).any():
                    raise BadVideoError(path, "ffmpeg output a frame without a timestamp")
                frames_out += count
                yield FrameChunk(frames=frames[:count], times=times[:count])

        return_code = process.wait()
        log.join(timeout=5.0)
        if return_code != 0:
            raise BadVideoError(path, f"ffmpeg failed (exit code {return_code}): {log.summary()}")
        if frames_out == 0:
            raise BadVideoError(path, f"ffmpeg decoded no frames: {log.summary()}")
        if log.error_count:
            logger.warning(
                "%s: ffmpeg logged %d error(s) while decoding %d frames; the frames may end "
                "early or be damaged: %s",
                path,
                log.error_count,
                frames_out,
                log.summary(),
            )
    finally:
        _stop_ffmpeg(process, log)


_DONE = object()


def prefetch(iterator: Iterable[T], depth: int) -> Iterator[T]:
    """Run `iterator` in a background thread, keeping up to `depth` items ready.

    Decoding of the next items then overlaps the consumer's work on the current one.
    An exception raised by `iterator` is re-raised in the consumer. Closing the returned
    generator stops the thread and closes `iterator`, which kills the ffmpeg process of an
    `iter_frames` generator. The thread stops after the item it is producing.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return _prefetch(iter(iterator), depth)


def _prefetch(source: Iterator[T], depth: int) -> Iterator[T]:
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Put `item` in the queue unless the consumer stopped; return False if it did."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    break
            else:
                put(_DONE)
        except BaseException as error:  # re-raised in the consumer thread
            put(error)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def decode_audio(path: Path, probe: VideoProbe, sample_rate: int) -> np.ndarray | None:
    """Decode the probe's audio stream to mono float32 at `sample_rate` Hz.

    Mono is the plain average of all channels (a tone in one channel of six comes out at a
    sixth of its amplitude), not a weighted downmix. Resampling uses ffmpeg's swresample
    default. The whole stream is kept, whether it is shorter or longer than the video.
    Returns `(samples,)` float32, nominally in [-1, 1] (lossy codecs such as AAC can decode
    a little beyond full scale, which is kept unclipped), or None when the probe found no
    audio stream.

    Raises BadVideoError naming the file when ffmpeg fails.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not probe.has_audio:
        return None
    channels = probe.audio_channels or 0
    if channels < 1:
        raise BadVideoError(path, f"audio stream {probe.audio_stream_index} has no channels")

    command = [
        FFMPEG,
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+warning",
        "-i",
        f"file:{Path(path).absolute()}",
        "-map",
        f"0:{probe.audio_stream_index}",
        # Keep every channel: averaging happens below, so no downmix matrix weights them.
        "-ac",
        str(channels),
        "-ar",
        str(sample_rate),
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "pipe:1",
    ]
    process = _start_ffmpeg(command)
    assert process.stdout is not None and process.stderr is not None
    log = _FfmpegLog(process.stderr, parse_frames=False)
    # One second of interleaved samples per read keeps the multichannel data small; only
    # the mono result grows with the length of the file.
    block_bytes = sample_rate * channels * 4
    pieces: list[np.ndarray] = []
    try:
        while True:
            block = process.stdout.read(block_bytes)
            if not block:
                break
            whole = len(block) - len(block) % (channels * 4)
            samples = np.frombuffer(block[:whole], dtype="<f4").reshape(-1, channels)
            pieces.append(samples.mean(axis=1, dtype=np.float64).astype(np.float32))
        return_code = process.wait()
        log.join(timeout=5.0)
        if return_code != 0:
            raise BadVideoError(
                path, f"ffmpeg failed to decode audio (exit code {return_code}): {log.summary()}"
            )
    finally:
        _stop_ffmpeg(process, log)

    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if audio.size == 0:
        logger.warning("%s: audio stream %d decoded to no samples", path, probe.audio_stream_index)
    if log.error_count:
        logger.warning(
            "%s: ffmpeg logged %d error(s) while decoding audio: %s",
            path,
            log.error_count,
            log.summary(),
        )
    return audio


@contextlib.contextmanager
def prefetched_frames(
    path: Path | str,
    probe: VideoProbe,
    *,
    fps: float | None,
    geometry: FrameGeometry,
    chunk_size: int,
    depth: int,
) -> Iterator[Iterator[FrameChunk]]:
    """Yield `iter_frames` chunks decoded ahead by `prefetch`, stopping both on exit.

    Closing on exit stops the decoding thread and its ffmpeg process also when the consumer
    fails midway.
    """
    chunks = iter_frames(path, probe, fps=fps, geometry=geometry, chunk_size=chunk_size)
    stream = prefetch(chunks, depth)
    try:
        yield stream
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
