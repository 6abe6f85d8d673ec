"""Read the stream facts of a video file with ffprobe.

ffprobe runs as a subprocess with an argument list, never through a shell. The file is
always passed as `file:<absolute path>`, so a name with a leading dash, a colon, spaces,
quotes or non-ASCII characters is never read as an option or a protocol.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from extractors.errors import BadVideoError

logger = logging.getLogger(__name__)

FFPROBE = "ffprobe"

# Entries requested from ffprobe. Asking only for these keeps container metadata (which may
# hold invalid UTF-8) out of the JSON output.
_SHOW_ENTRIES = (
    "format=duration,start_time"
    ":stream=index,codec_type,width,height,nb_frames,avg_frame_rate,r_frame_rate,"
    "duration,start_time,channels,sample_rate"
    ":stream_tags=rotate"
    ":stream_side_data=side_data_type,rotation"
    ":stream_disposition=attached_pic"
)


@dataclass(frozen=True)
class VideoProbe:
    """Stream facts of one video file.

    `width` and `height` are the display size in pixels, after the rotation metadata is
    applied; `coded_width` and `coded_height` are the size stored in the stream. `rotation`
    is the clockwise rotation in degrees (0, 90, 180 or 270) that turns a coded frame
    upright. `duration` and `start_time` are in seconds; `frame_count` counts the frames of
    the chosen video stream. Stream indices are absolute indices in the container.
    """

    path: str
    duration: float
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    avg_frame_rate: float
    real_frame_rate: float
    frame_count: int
    video_stream_index: int
    has_audio: bool
    audio_stream_index: int | None
    audio_channels: int | None
    audio_sample_rate: int | None
    start_time: float

    def to_json(self) -> str:
        """Serialise the probe as a JSON object with one key per field."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VideoProbe:
        """Build a probe from the JSON text written by `to_json`.

        Raises ValueError when a field is missing or unknown.
        """
        values = json.loads(text)
        expected = set(cls.__dataclass_fields__)
        if set(values) != expected:
            missing = sorted(expected - set(values))
            unknown = sorted(set(values) - expected)
            raise ValueError(f"invalid VideoProbe JSON: missing {missing}, unknown {unknown}")
        return cls(**values)


def probe_video(path: Path, video_stream: int = 0, audio_stream: int = 0) -> VideoProbe:
    """Probe `path` and describe its chosen video stream and audio stream.

    `video_stream` and `audio_stream` index the streams of that type (0 = first); streams
    that only hold cover art are not counted as video. A missing audio stream gives
    `has_audio=False` and a warning. The frame count is `nb_frames` from the container, or
    is counted by decoding the stream when the container does not store it (WebM, MKV).

    Raises BadVideoError naming the file when it is missing or empty, ffprobe fails, the
    requested video stream does not exist, or the video has no duration or no frames.
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise BadVideoError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadVideoError(path, "file is empty (0 bytes)")
    if video_stream < 0 or audio_stream < 0:
        raise ValueError(
            f"stream indices must be >= 0, got video_stream={video_stream}, "
            f"audio_stream={audio_stream}"
        )

    info = _run_ffprobe(path, ["-show_entries", _SHOW_ENTRIES])
    streams = info.get("streams", [])
    container = info.get("format", {})

    video_streams = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not video_streams:
        raise BadVideoError(path, "no video stream")
    if video_stream >= len(video_streams):
        raise BadVideoError(
            path,
            f"video stream {video_stream} requested but the file has "
            f"{len(video_streams)} video stream(s)",
        )
    video = video_streams[video_stream]
    video_index = int(video["index"])

    coded_width = int(video.get("width") or 0)
    coded_height = int(video.get("height") or 0)
    if coded_width <= 0 or coded_height <= 0:
        raise BadVideoError(path, f"video stream {video_index} has no frame size")
    rotation = _rotation_clockwise(video)
    if rotation in (90, 270):
        width, height = coded_height, coded_width
    else:
        width, height = coded_width, coded_height

    frame_count = _parse_int(video.get("nb_frames"))
    if not frame_count:
        frame_count = _count_frames(path, video_index)
    if frame_count <= 0:
        raise BadVideoError(path, f"video stream {video_index} has no frames")

    avg_frame_rate = _parse_rate(video.get("avg_frame_rate"))
    real_frame_rate = _parse_rate(video.get("r_frame_rate"))
    duration = _parse_float(container.get("duration")) or _parse_float(video.get("duration"))
    if not duration and avg_frame_rate > 0:
        # Raw elementary streams store no duration at all; the frame count at the average
        # rate is the best estimate left.
        duration = frame_count / avg_frame_rate
    if not duration or duration <= 0:
        raise BadVideoError(path, "duration is zero or unknown")
    start_time = _parse_float(video.get("start_time"))
    if start_time is None:
        start_time = _parse_float(container.get("start_time")) or 0.0

    audio_streams = [s for s in streams if s.get("codec_type") == "audio"]
    audio = None
    if audio_stream < len(audio_streams):
        audio = audio_streams[audio_stream]
    elif not audio_streams:
        logger.warning("%s: no audio stream, audio features will be zeros", path)
    else:
        logger.warning(
            "%s: audio stream %d requested but the file has %d audio stream(s); "
            "treating the video as having no audio",
            path,
            audio_stream,
            len(audio_streams),
        )

    return VideoProbe(
        path=str(path),
        duration=float(duration),
        width=width,
        height=height,
        coded_width=coded_width,
        coded_height=coded_height,
        rotation=rotation,
        avg_frame_rate=avg_frame_rate,
        real_frame_rate=real_frame_rate,
        frame_count=frame_count,
        video_stream_index=video_index,
        has_audio=audio is not None,
        audio_stream_index=int(audio["index"]) if audio is not None else None,
        audio_channels=_parse_int(audio.get("channels")) if audio is not None else None,
        audio_sample_rate=_parse_int(audio.get("sample_rate")) if audio is not None else None,
        start_time=float(start_time),
    )


def _run_ffprobe(path: Path, arguments: list[str]) -> dict[str, Any]:
    """Run ffprobe with `arguments` on `path` and return its parsed JSON output."""
    command = [FFPROBE, "-v", "error", "-of", "json", *arguments, f"file:{path}"]
    try:
        result = subprocess.run(command, capture_output=True, check=False)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{FFPROBE} not found on PATH: install FFmpeg (5.1 or newer)"
        ) from error
    stderr = result.stderr.decode("utf-8", errors="replace").strip()
    if result.returncode != 0:
        first_line = stderr.splitlines()[0] if stderr else "no error message"
        raise BadVideoError(path, f"ffprobe failed (exit code {result.returncode}): {first_line}")
    try:
        return json.loads(result.stdout.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        raise BadVideoError(path, f"ffprobe returned invalid JSON: {error}") from error


def _count_frames(path: Path, stream_index: int) -> int:
    """Count the frames of stream `stream_index` by decoding it (slow: a full decode)."""
    info = _run_ffprobe(
        path,
        [
            "-count_frames",
            "-select_streams",
            str(stream_index),
            "-show_entries",
            "stream=nb_read_frames",
        ],
    )
    streams = info.get("streams", [])
    if not streams:
        return 0
    return _parse_int(streams[0].get("nb_read_frames")) or 0


def _rotation_clockwise(stream: dict[str, Any]) -> int:
    """Return the clockwise display rotation of `stream`, rounded to 0, 90, 180 or 270.

    The display matrix side data stores a counter-clockwise angle, so ffprobe prints -90
    for a phone video that must turn 90 degrees clockwise. The legacy `rotate` tag stores
    the clockwise angle.
    """
    degrees = None
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            degrees = -float(side_data["rotation"])
            break
    if degrees is None:
        tag = stream.get("tags", {}).get("rotate")
        degrees = _parse_float(tag) or 0.0
    return int(round(degrees / 90.0)) % 4 * 90


def _parse_rate(text: str | None) -> float:
    """Parse an ffprobe rate such as "30000/1001"; "0/0" or a missing value gives 0.0."""
    if not text:
        return 0.0
    try:
        numerator, _, denominator = text.partition("/")
        if denominator and int(denominator) == 0:
            return 0.0
        return float(Fraction(int(numerator), int(denominator or 1)))
    except ValueError:
        return 0.0


def _parse_float(text: Any) -> float | None:
    """Parse a number printed by ffprobe; "N/A" or a missing value gives None."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _parse_int(text: Any) -> int | None:
    """Parse an integer printed by ffprobe; "N/A" or a missing value gives None."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
