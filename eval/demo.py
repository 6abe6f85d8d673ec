"""Generator of the offline `demo` localization dataset: synthetic videos with sound.

Every video is cut into `events_per_video` consecutive slots. Each slot shows one object
(a colour, a shape and a motion) and plays one sound (a low, middle or high pure tone, or a
noise burst). Inside its slot the object and the sound start or stop at different times
whenever the slot is longer than `min_overlap_seconds` plus two time steps. A video uses a
few objects of distinct colours and a few distinct sounds, and no two slots repeat an
(object, sound) pair. As far as the slot count allows, every object also appears in another
slot with another sound, and every sound also plays in another slot with another object.

Each slot gives one query that names its target by one visual attribute (the object's colour
and shape, for example "the red circle") and one audio attribute ("the low tone"). The target
span is the time when both hold. Matching only the object leaves the other slots that show
the same object as equally good predictions, and matching only the sound leaves the other
slots with the same sound, so a single-modality model cannot tell the right slot apart.

Files written under `output_dir`:

- `videos/demo_0000.mp4` ...: H.264 video (yuv420p) and mono AAC audio in MP4.
- `charades_sta_train.txt`, `charades_sta_test.txt`: Charades-STA lines
  `VIDEO START END##SENTENCE` (seconds), split by video.
- `durations.csv`: columns `id,length` (s).
- `captions.csv`: one caption per video in the MSR Video Description Corpus (MSVD) CSV
  format, with the columns VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,
  Description. A demo video is a whole clip, so VideoID is the file stem, Start is 0 and End
  is the duration (s).
- `youtube_mapping.txt`: MSVD mapping lines `<VideoID>_<Start>_<End> vidN` (N counts from 1
  in the order of the video ids). The clip `<VideoID>_<Start>_<End>` is the file
  `videos/<VideoID>.mp4`.
- `events.json`: ground truth of every event and query, and the settings and seed used.

The same settings and seed give byte-identical files, the videos included, as long as the
ffmpeg build stays the same (libx264 runs single-threaded and every bitexact flag is set).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

# Object colours (RGB, 0-255). They are far apart in RGB so that each survives H.264 with
# 4:2:0 chroma subsampling at 64x64 pixels.
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "yellow": (230, 200, 30),
}
BACKGROUND_RGB = (40, 40, 40)
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("static", "left-to-right", "bouncing")
# Tone names in pitch order; `DemoSettings.tone_frequencies` gives their frequencies.
TONES = ("low tone", "middle tone", "high tone")
NOISE = "noise burst"
SOUNDS = (*TONES, NOISE)

# Query sentences. Every template names the object by colour and shape and the sound by name.
QUERY_TEMPLATES = (
    "the {object} while the {sound} plays.",
    "the {sound} plays while the {object} is on screen.",
    "the {object} together with the {sound}.",
    "when the {object} is visible and the {sound} is heard.",
)
_MOTION_PHRASES = {
    "static": "stays still",
    "left-to-right": "moves from left to right",
    "bouncing": "bounces",
}
_SOUND_PHRASES = {
    "low tone": "a low tone plays",
    "middle tone": "a middle tone plays",
    "high tone": "a high tone plays",
    "noise burst": "a burst of noise plays",
}

VIDEO_DIR = "videos"
TRAIN_FILE = "charades_sta_train.txt"
TEST_FILE = "charades_sta_test.txt"
DURATIONS_FILE = "durations.csv"
CAPTIONS_FILE = "captions.csv"
MAPPING_FILE = "youtube_mapping.txt"
EVENTS_FILE = "events.json"
OUTPUT_NAMES = frozenset(
    {VIDEO_DIR, TRAIN_FILE, TEST_FILE, DURATIONS_FILE, CAPTIONS_FILE, MAPPING_FILE, EVENTS_FILE}
)
CAPTION_COLUMNS = (
    "VideoID",
    "Start",
    "End",
    "WorkerID",
    "Source",
    "AnnotationTime",
    "Language",
    "Description",
)
# Random draws of the slot pairs per video. The draw with the most slots that have
# distractors in both modalities wins, and the search stops once every slot has them. For
# each slot count from 2 to 16, 100 of 100 checked seeds reached the optimum that an
# exhaustive search finds.
_PAIR_DRAWS = 200


@dataclass(frozen=True)
class DemoSettings:
    """Settings of the demo generator (the `generator` block of the `demo` dataset).

    Times are seconds, sizes pixels, rates per second. Every event boundary falls on the
    `time_step` grid, so the annotation times are exact decimals and fall on video frames.
    """

    videos: int = 48
    test_fraction: float = 0.25
    seconds: float = 16.0
    fps: int = 8
    width: int = 64
    height: int = 64
    sample_rate: int = 22050
    # Slots per video. Each slot contains one visual event, one audio event and one query.
    # With 4 or with 6 to 16 slots every query has distractors in both modalities. With 2, 3
    # or 5 slots some queries cannot have them.
    events_per_video: int = 4
    time_step: float = 0.5
    min_slot_seconds: float = 3.0
    # Shortest target span (both attributes hold) and the largest delay of an event's start,
    # or advance of its end, from its slot's boundary.
    min_overlap_seconds: float = 1.0
    max_inset_seconds: float = 1.0
    # Side of a shape's bounding box as a fraction of the smaller frame side.
    object_size: float = 0.35
    # Time (s) of one bounce of a bouncing object, floor to floor.
    bounce_seconds: float = 1.0
    # Frequencies (Hz) of the low, middle and high tones.
    tone_frequencies: tuple[float, float, float] = (250.0, 1000.0, 4000.0)
    # Peak amplitude of tones and noise, full scale 1.
    amplitude: float = 0.3
    # Linear fade-in and fade-out (s) of every sound, against clicks at its boundaries.
    fade_seconds: float = 0.01
    # libx264 constant rate factor (0-51, lower is better quality) and AAC bit rate (bit/s).
    video_crf: int = 18
    audio_bitrate: int = 64000

    def __post_init__(self) -> None:
        _validate_settings(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DemoSettings:
        """Build settings from a config mapping; keys left out keep their defaults.

        Raises ValueError naming the key when a key is unknown or a value has the wrong type.
        """
        known = {field.name: field for field in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"unknown demo generator setting(s) {', '.join(unknown)}; "
                f"valid settings: {', '.join(known)}"
            )
        converted = {
            name: _convert_setting(name, value, known[name].default)
            for name, value in values.items()
        }
        return cls(**converted)

    @property
    def frame_count(self) -> int:
        """Frames per video."""
        return round(self.seconds * self.fps)

    @property
    def sample_count(self) -> int:
        """Audio samples per video."""
        return round(self.seconds * self.sample_rate)


def _convert_setting(name: str, value: Any, default: Any) -> Any:
    """Convert a config value to the type of the setting's default, or raise ValueError."""
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ValueError(
                f"demo setting {name} must be a list of {len(default)} numbers, got {value!r}"
            )
        return tuple(_convert_setting(name, item, default[0]) for item in value)

    # YAML reads true/false as bool, which Python counts as an int; reject it explicitly.
    is_integer = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, int):
        if not is_integer:
            raise ValueError(f"demo setting {name} must be an integer, got {value!r}")
        return value
    if not (is_integer or isinstance(value, float)):
        raise ValueError(f"demo setting {name} must be a number, got {value!r}")
    return float(value)


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return abs(ratio - round(ratio)) < 1e-6


def _validate_settings(settings: DemoSettings) -> None:
    """Raise ValueError listing every setting that cannot make a valid dataset."""
    problems = _dataset_problems(settings) + _media_problems(settings)
    if problems:
        raise ValueError("invalid demo generator settings: " + "; ".join(problems))


def _dataset_problems(settings: DemoSettings) -> list[str]:
    """Check the counts, the time grid and the slot layout."""
    problems: list[str] = []
    if settings.videos < 2:
        problems.append(f"videos must be at least 2 (one train, one test), got {settings.videos}")
    if not 0.0 < settings.test_fraction < 1.0:
        problems.append(f"test_fraction must be in (0, 1), got {settings.test_fraction}")
    if settings.fps <= 0:
        problems.append(f"fps must be positive, got {settings.fps}")
    elif settings.time_step <= 0 or not _is_multiple(settings.time_step * settings.fps, 1.0):
        problems.append(
            f"time_step ({settings.time_step} s) must be a positive multiple of one frame "
            f"(1/{settings.fps} s)"
        )
    elif not _is_multiple(settings.time_step, 0.001):
        # Annotation files give times with at most 3 decimals, which must be exact.
        problems.append(f"time_step ({settings.time_step} s) must be a multiple of 0.001 s")
    elif settings.seconds <= 0 or not _is_multiple(settings.seconds, settings.time_step):
        problems.append(
            f"seconds ({settings.seconds}) must be a positive multiple of time_step "
            f"({settings.time_step})"
        )

    slots = settings.events_per_video
    if slots < 2:
        problems.append(f"events_per_video must be at least 2, got {slots}")
        return problems
    objects, sounds = _pair_grid(slots)
    if objects > len(COLOURS) or sounds > len(SOUNDS):
        problems.append(
            f"events_per_video ({slots}) needs {objects} colours and {sounds} sounds, "
            f"but only {len(COLOURS)} colours and {len(SOUNDS)} sounds exist"
        )
    if slots * settings.min_slot_seconds > settings.seconds + 1e-9:
        problems.append(
            f"{slots} slots of at least {settings.min_slot_seconds} s do not fit in "
            f"{settings.seconds} s; lower events_per_video or min_slot_seconds, or raise seconds"
        )
    if not 0 < settings.min_overlap_seconds <= settings.min_slot_seconds:
        problems.append(
            f"min_overlap_seconds ({settings.min_overlap_seconds}) must be positive and at most "
            f"min_slot_seconds ({settings.min_slot_seconds})"
        )
    if settings.max_inset_seconds < 0:
        problems.append(f"max_inset_seconds must not be negative, got {settings.max_inset_seconds}")
    return problems


def _media_problems(settings: DemoSettings) -> list[str]:
    """Check the frame, drawing, sound and encoder settings."""
    problems: list[str] = []
    # yuv420p stores chroma at half resolution, so libx264 needs even frame sides.
    for side_name, side in (("width", settings.width), ("height", settings.height)):
        if side < 16 or side % 2:
            problems.append(f"{side_name} must be an even number of at least 16 pixels, got {side}")
    if not 0.0 < settings.object_size < 1.0:
        problems.append(f"object_size must be in (0, 1), got {settings.object_size}")
    if settings.bounce_seconds <= 0:
        problems.append(f"bounce_seconds must be positive, got {settings.bounce_seconds}")

    if settings.sample_rate <= 0:
        problems.append(f"sample_rate must be positive, got {settings.sample_rate}")
    nyquist = settings.sample_rate / 2
    if any(not 0 < frequency < nyquist for frequency in settings.tone_frequencies):
        problems.append(
            f"tone_frequencies {settings.tone_frequencies} must lie in (0, {nyquist}) Hz"
        )
    if list(settings.tone_frequencies) != sorted(set(settings.tone_frequencies)):
        problems.append(
            f"tone_frequencies {settings.tone_frequencies} must rise strictly (low, middle, high)"
        )
    if not 0.0 < settings.amplitude <= 1.0:
        problems.append(f"amplitude must be in (0, 1], got {settings.amplitude}")
    if settings.fade_seconds < 0:
        problems.append(f"fade_seconds must not be negative, got {settings.fade_seconds}")

    if not 0 <= settings.video_crf <= 51:
        problems.append(f"video_crf must be in [0, 51], got {settings.video_crf}")
    if settings.audio_bitrate <= 0:
        problems.append(f"audio_bitrate must be positive, got {settings.audio_bitrate}")
    return problems


def _pair_grid(slots: int) -> tuple[int, int]:
    """Return (objects, sounds) per video for `slots` slots: the smallest near-square grid.

    Four slots give a 2 x 2 grid, where every (object, sound) pair occurs once, so every
    object and every sound occurs twice.
    """
    objects = max(2, math.ceil(math.sqrt(slots)))
    sounds = max(2, math.ceil(slots / objects))
    return objects, sounds


@dataclass(frozen=True)
class DemoEvent:
    """One visual or audio event of a demo video.

    `kind` is "visual" (attributes colour, shape, motion) or "audio" (attribute sound, plus
    frequency_hz for tones). The event lasts from `start` to `end` seconds, end excluded.
    """

    video: str
    kind: str
    attributes: dict[str, Any]
    start: float
    end: float


@dataclass(frozen=True)
class DemoQuery:
    """One query: the span (s) of a video where the named object and sound both hold."""

    video: str
    split: str
    start: float
    end: float
    sentence: str
    colour: str
    shape: str
    sound: str


@dataclass(frozen=True)
class _Appearance:
    """A visual event with its start position (pixels) for rendering.

    A static object stays at (centre_x, centre_y); a left-to-right one keeps centre_y and a
    bouncing one keeps centre_x.
    """

    event: DemoEvent
    centre_x: float
    centre_y: float


@dataclass(frozen=True)
class _VideoPlan:
    """Everything drawn for one video before rendering."""

    video: str
    split: str
    appearances: list[_Appearance]
    sounds: list[DemoEvent]
    queries: list[DemoQuery]
    caption: str


def _format_seconds(value: float) -> str:
    """Format a time with as few decimals as it needs and at least one ("4.0", "4.125")."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def video_id(index: int) -> str:
    """Return the id (file stem) of the demo video at `index`."""
    return f"demo_{index:04d}"


def _slot_lengths(settings: DemoSettings, rng: np.random.Generator) -> list[int]:
    """Draw the slot lengths in time steps: at least the minimum, summing to the video."""
    total_steps = round(settings.seconds / settings.time_step)
    slots = settings.events_per_video
    minimum = math.ceil(settings.min_slot_seconds / settings.time_step - 1e-9)
    extra = rng.multinomial(total_steps - slots * minimum, [1.0 / slots] * slots)
    return [minimum + int(steps) for steps in extra]


def _pair_score(cells: Sequence[tuple[int, int]]) -> int:
    """Count the cells whose object and whose sound each occur in another cell."""
    score = 0
    for object_index, sound_index in cells:
        same_object = sum(1 for cell in cells if cell[0] == object_index) > 1
        same_sound = sum(1 for cell in cells if cell[1] == sound_index) > 1
        score += same_object and same_sound
    return score


def _draw_pairs(slots: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Draw `slots` distinct (object index, sound index) cells in random slot order."""
    objects, sounds = _pair_grid(slots)
    grid = [(row, column) for row in range(objects) for column in range(sounds)]
    best: list[tuple[int, int]] = []
    best_score = -1
    for _ in range(_PAIR_DRAWS):
        chosen = rng.choice(len(grid), size=slots, replace=False)
        cells = [grid[index] for index in chosen]
        score = _pair_score(cells)
        if score > best_score:
            best, best_score = cells, score
        if score == slots:
            break
    return best


def _draw_insets(
    max_inset: int, rng: np.random.Generator
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Draw (start delay, end advance) in time steps for the visual and the audio event.

    The two pairs differ whenever `max_inset` allows, so object and sound never share both
    boundaries.
    """
    visual = (int(rng.integers(0, max_inset + 1)), int(rng.integers(0, max_inset + 1)))
    audio = (int(rng.integers(0, max_inset + 1)), int(rng.integers(0, max_inset + 1)))
    if audio == visual and max_inset > 0:
        audio = ((audio[0] + 1) % (max_inset + 1), audio[1])
    return visual, audio


def _intervals_intersection(
    first: Sequence[DemoEvent], second: Sequence[DemoEvent]
) -> list[tuple[float, float]]:
    spans = []
    for a in first:
        for b in second:
            start, end = max(a.start, b.start), min(a.end, b.end)
            if end > start:
                spans.append((start, end))
    return spans


def _draw_slot(
    video: str,
    slot_start: int,
    length: int,
    visual_object: tuple[str, str],
    sound: str,
    settings: DemoSettings,
    rng: np.random.Generator,
) -> tuple[_Appearance, DemoEvent]:
    """Draw the visual and the audio event of one slot (start and length in time steps)."""
    step = settings.time_step
    min_overlap = math.ceil(settings.min_overlap_seconds / step - 1e-9)
    max_inset = math.floor(settings.max_inset_seconds / step + 1e-9)
    # Insets of at most (length - min_overlap) // 2 on each side keep the overlap long enough.
    slot_max_inset = max(0, min(max_inset, (length - min_overlap) // 2))
    (visual_delay, visual_advance), (audio_delay, audio_advance) = _draw_insets(slot_max_inset, rng)
    motion = MOTIONS[int(rng.integers(0, len(MOTIONS)))]
    half_size = settings.object_size * min(settings.width, settings.height) / 2
    centre_x = float(rng.uniform(half_size, settings.width - half_size))
    centre_y = float(rng.uniform(half_size, settings.height - half_size))

    colour, shape = visual_object
    visual = DemoEvent(
        video=video,
        kind="visual",
        attributes={"colour": colour, "shape": shape, "motion": motion},
        start=(slot_start + visual_delay) * step,
        end=(slot_start + length - visual_advance) * step,
    )
    audio_attributes: dict[str, Any] = {"sound": sound}
    if sound in TONES:
        audio_attributes["frequency_hz"] = settings.tone_frequencies[TONES.index(sound)]
    audio = DemoEvent(
        video=video,
        kind="audio",
        attributes=audio_attributes,
        start=(slot_start + audio_delay) * step,
        end=(slot_start + length - audio_advance) * step,
    )
    return _Appearance(visual, centre_x, centre_y), audio


def _make_queries(
    video: str,
    split: str,
    pairs: Sequence[tuple[tuple[str, str], str]],
    visual_events: Sequence[DemoEvent],
    audio_events: Sequence[DemoEvent],
    rng: np.random.Generator,
) -> list[DemoQuery]:
    """Make one query per ((colour, shape), sound) pair, sorted by start time.

    The target span is the overlap of the object's and the sound's events. Raises
    RuntimeError when a pair overlaps other than exactly once, which would make the target
    ambiguous.
    """
    queries = []
    for (colour, shape), sound in pairs:
        object_events = [
            event
            for event in visual_events
            if (event.attributes["colour"], event.attributes["shape"]) == (colour, shape)
        ]
        sound_events = [event for event in audio_events if event.attributes["sound"] == sound]
        spans = _intervals_intersection(object_events, sound_events)
        if len(spans) != 1:
            raise RuntimeError(
                f"{video}: the {colour} {shape} overlaps the {sound} {len(spans)} times, "
                "expected once"
            )
        template = QUERY_TEMPLATES[int(rng.integers(0, len(QUERY_TEMPLATES)))]
        sentence = template.format(object=f"{colour} {shape}", sound=sound)
        start, end = spans[0]
        queries.append(DemoQuery(video, split, start, end, sentence, colour, shape, sound))
    queries.sort(key=lambda query: (query.start, query.end))
    return queries


def _plan_video(
    index: int, split: str, settings: DemoSettings, rng: np.random.Generator
) -> _VideoPlan:
    """Draw the events, queries and caption of one video."""
    name = video_id(index)
    object_count, sound_count = _pair_grid(settings.events_per_video)
    colour_names = list(COLOURS)
    colours = rng.choice(len(colour_names), size=object_count, replace=False)
    shapes = rng.integers(0, len(SHAPES), size=object_count)
    # Distinct colours make "the red circle" unique in the video whatever the shapes are.
    objects = [(colour_names[c], SHAPES[s]) for c, s in zip(colours, shapes)]
    sounds = [SOUNDS[i] for i in rng.choice(len(SOUNDS), size=sound_count, replace=False)]
    pairs = [(objects[o], sounds[s]) for o, s in _draw_pairs(settings.events_per_video, rng)]

    appearances: list[_Appearance] = []
    audio_events: list[DemoEvent] = []
    caption_parts: list[str] = []
    slot_start = 0
    for length, (visual_object, sound) in zip(_slot_lengths(settings, rng), pairs):
        appearance, audio = _draw_slot(
            name, slot_start, length, visual_object, sound, settings, rng
        )
        appearances.append(appearance)
        audio_events.append(audio)
        motion = appearance.event.attributes["motion"]
        caption_parts.append(
            f"a {' '.join(visual_object)} {_MOTION_PHRASES[motion]} while {_SOUND_PHRASES[sound]}"
        )
        slot_start += length

    visual_events = [appearance.event for appearance in appearances]
    queries = _make_queries(name, split, pairs, visual_events, audio_events, rng)
    caption = ", then ".join(caption_parts) + "."
    caption = caption[0].upper() + caption[1:]
    return _VideoPlan(name, split, appearances, audio_events, queries, caption)


def _shape_mask(
    shape: str,
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    centre_x: float,
    centre_y: float,
    half_size: float,
) -> np.ndarray:
    """Return the boolean `(H, W)` mask of a shape whose bounding box has side 2 * half_size."""
    dx = grid_x - centre_x
    dy = grid_y - centre_y
    if shape == "circle":
        return dx * dx + dy * dy <= half_size * half_size
    if shape == "square":
        return (np.abs(dx) <= half_size) & (np.abs(dy) <= half_size)
    if shape == "triangle":
        # Apex up at dy = -half_size, base at dy = +half_size, base width 2 * half_size.
        return (dy <= half_size) & (np.abs(dx) <= (dy + half_size) / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _object_centre(
    appearance: _Appearance, time: float, settings: DemoSettings, half_size: float
) -> tuple[float, float]:
    """Return the object's centre (x, y pixels) at `time` seconds."""
    event = appearance.event
    motion = event.attributes["motion"]
    if motion == "static":
        return appearance.centre_x, appearance.centre_y
    if motion == "left-to-right":
        progress = (time - event.start) / (event.end - event.start)
        return half_size + progress * (settings.width - 2 * half_size), appearance.centre_y
    # Bouncing: the object rests on the floor at the event's start and rises to the top of
    # the frame halfway through each bounce.
    floor_y = settings.height - half_size
    height = floor_y - half_size
    lift = abs(math.sin(math.pi * (time - event.start) / settings.bounce_seconds))
    return appearance.centre_x, floor_y - lift * height


def _render_frames(appearances: Sequence[_Appearance], settings: DemoSettings) -> np.ndarray:
    """Render the video frames: uint8 RGB `(frames, height, width, 3)`.

    Frame k shows the time k / fps s; an object is drawn when start <= time < end.
    """
    frames = np.empty((settings.frame_count, settings.height, settings.width, 3), dtype=np.uint8)
    frames[:] = BACKGROUND_RGB
    # Pixel centres sit at half-integer coordinates.
    grid_y, grid_x = np.mgrid[0 : settings.height, 0 : settings.width] + 0.5
    half_size = settings.object_size * min(settings.width, settings.height) / 2
    for frame_index in range(settings.frame_count):
        time = frame_index / settings.fps
        for appearance in appearances:
            event = appearance.event
            if not event.start <= time < event.end:
                continue
            centre_x, centre_y = _object_centre(appearance, time, settings, half_size)
            mask = _shape_mask(
                event.attributes["shape"], grid_x, grid_y, centre_x, centre_y, half_size
            )
            frames[frame_index][mask] = COLOURS[event.attributes["colour"]]
    return frames


def _render_audio(
    sound_events: Sequence[DemoEvent], settings: DemoSettings, rng: np.random.Generator
) -> np.ndarray:
    """Render the mono waveform: float32 `(samples,)` in [-1, 1] at `sample_rate` Hz.

    Sample n is the time n / sample_rate s; a sound plays when start <= time < end. Tones
    are sines from phase 0 at the event's start; noise is uniform white noise from `rng`.
    """
    rate = settings.sample_rate
    audio = np.zeros(settings.sample_count, dtype=np.float64)
    fade_samples = round(settings.fade_seconds * rate)
    for event in sound_events:
        first = round(event.start * rate)
        last = min(round(event.end * rate), settings.sample_count)
        count = last - first
        if count <= 0:
            continue
        if event.attributes["sound"] == NOISE:
            wave = rng.uniform(-1.0, 1.0, size=count)
        else:
            frequency = float(event.attributes["frequency_hz"])
            wave = np.sin(2 * np.pi * frequency * np.arange(count) / rate)
        envelope = np.ones(count)
        ramp = min(fade_samples, count // 2)
        if ramp > 0:
            envelope[:ramp] = np.linspace(0.0, 1.0, ramp, endpoint=False)
            envelope[count - ramp :] = np.linspace(1.0, 0.0, ramp)
        audio[first:last] += settings.amplitude * wave * envelope
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _encode_video(
    frames: np.ndarray, audio: np.ndarray, settings: DemoSettings, path: Path, ffmpeg: str
) -> None:
    """Encode `frames` (uint8 RGB) and `audio` (float32 mono) into the MP4 file `path`.

    Frames go through ffmpeg's standard input and the audio through a raw float file next
    to `path`, which is removed afterwards.
    """
    audio_path = path.with_suffix(".f32")
    audio_path.write_bytes(audio.astype("<f4").tobytes())
    command = [
        ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-video_size", f"{settings.width}x{settings.height}", "-framerate", str(settings.fps),
        "-i", "pipe:0",
        "-f", "f32le", "-ar", str(settings.sample_rate), "-ac", "1", "-i", str(audio_path),
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "medium", "-crf", str(settings.video_crf),
        "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", str(settings.audio_bitrate),
        "-ar", str(settings.sample_rate), "-ac", "1",
        # One encoder thread and the bitexact flags make the output bytes repeatable.
        "-threads", "1",
        "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-f", "mp4", str(path),
    ]  # fmt: skip
    try:
        result = subprocess.run(command, input=frames.tobytes(), capture_output=True, check=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"ffmpeg executable {ffmpeg!r} not found; install ffmpeg (with libx264) or pass "
            "its path"
        ) from None
    finally:
        audio_path.unlink(missing_ok=True)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", errors="replace").strip()
        raise RuntimeError(
            f"ffmpeg failed to encode {path} (exit status {result.returncode}): {message}"
        )


def _split_videos(settings: DemoSettings, seed: int) -> list[str]:
    """Return the split ("train" or "test") of every video index, drawn from `seed`.

    The test split contains round(videos * test_fraction) videos, at least one, and at least
    one video stays in train.
    """
    test_count = min(max(round(settings.videos * settings.test_fraction), 1), settings.videos - 1)
    rng = np.random.default_rng([seed, 1])
    test_indices = set(int(i) for i in rng.choice(settings.videos, size=test_count, replace=False))
    return ["test" if index in test_indices else "train" for index in range(settings.videos)]


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_sta_files(plans: Sequence[_VideoPlan], folder: Path) -> None:
    """Write the Charades-STA train and test files, one line per query."""
    for split, file_name in (("train", TRAIN_FILE), ("test", TEST_FILE)):
        lines = []
        for plan in plans:
            if plan.split != split:
                continue
            for query in plan.queries:
                start, end = _format_seconds(query.start), _format_seconds(query.end)
                lines.append(f"{query.video} {start} {end}##{query.sentence}\n")
        _write_text(folder / file_name, "".join(lines))


def _write_caption_files(plans: Sequence[_VideoPlan], duration: float, folder: Path) -> None:
    """Write the MSVD-style captions CSV and clip mapping; each video is one whole clip."""
    clip_end = f"{duration:g}"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CAPTION_COLUMNS)
    for plan in plans:
        # WorkerID and AnnotationTime 0 mark a generated caption. Source "clean" is the
        # corpus's label for verified descriptions, which a generated caption is by
        # construction.
        writer.writerow([plan.video, 0, clip_end, 0, "clean", 0, "English", plan.caption])
    _write_text(folder / CAPTIONS_FILE, buffer.getvalue())

    mapping = [
        f"{plan.video}_0_{clip_end} vid{number}\n" for number, plan in enumerate(plans, start=1)
    ]
    _write_text(folder / MAPPING_FILE, "".join(mapping))


def _write_events_file(
    plans: Sequence[_VideoPlan], settings: DemoSettings, seed: int, duration: float, folder: Path
) -> None:
    """Write events.json: seed, settings, videos, every event and every query."""
    events = [asdict(appearance.event) for plan in plans for appearance in plan.appearances]
    events += [asdict(event) for plan in plans for event in plan.sounds]
    events.sort(key=lambda event: (event["video"], event["start"], event["kind"]))
    document = {
        "seed": seed,
        "settings": asdict(settings),
        "videos": [
            {"id": plan.video, "split": plan.split, "duration": duration, "caption": plan.caption}
            for plan in plans
        ],
        "events": events,
        "queries": [asdict(query) for plan in plans for query in plan.queries],
    }
    _write_text(folder / EVENTS_FILE, json.dumps(document, indent=1, sort_keys=True) + "\n")


def _write_annotations(
    plans: Sequence[_VideoPlan], settings: DemoSettings, seed: int, folder: Path
) -> None:
    """Write the Charades-STA, durations, captions, mapping and events files into `folder`."""
    duration = settings.frame_count / settings.fps
    _write_sta_files(plans, folder)
    durations = [f"{plan.video},{_format_seconds(duration)}\n" for plan in plans]
    _write_text(folder / DURATIONS_FILE, "id,length\n" + "".join(durations))
    _write_caption_files(plans, duration, folder)
    _write_events_file(plans, settings, seed, duration, folder)


def _staging_dir(output_dir: Path) -> Path:
    return output_dir.parent / f".{output_dir.name}.partial"


def _check_output_dir(output_dir: Path) -> None:
    """Raise FileExistsError unless `output_dir` is missing or contains only generator output.

    This keeps a run from deleting files of the user's when it replaces an earlier demo.
    """
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise FileExistsError(
            f"{output_dir} exists and is not a folder; remove it or choose another output folder"
        )
    unexpected = sorted(
        entry.name for entry in output_dir.iterdir() if entry.name not in OUTPUT_NAMES
    )
    if unexpected:
        raise FileExistsError(
            f"{output_dir} contains {', '.join(unexpected)}, which the demo generator does not "
            "write; move them away or choose an empty output folder"
        )


def _install(staging: Path, output_dir: Path) -> None:
    """Move the finished `staging` folder to `output_dir`, replacing an earlier demo there."""
    _check_output_dir(output_dir)
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    previous = output_dir.parent / f".{output_dir.name}.previous"
    if previous.exists():
        shutil.rmtree(previous)
    output_dir.rename(previous)
    staging.rename(output_dir)
    shutil.rmtree(previous)


def generate_demo_dataset(
    settings: DemoSettings, seed: int, output_dir: Path, *, ffmpeg: str = "ffmpeg"
) -> None:
    """Generate the demo dataset (videos and annotation files) into `output_dir`.

    Everything is written into a hidden sibling folder `.<name>.partial` first, which
    replaces `output_dir` only when complete, so an interrupted run never leaves a
    complete-looking dataset. An earlier demo in `output_dir` is replaced. `seed` must be a
    non-negative integer; `ffmpeg` is the executable used to encode.

    Raises ValueError for an invalid seed, FileExistsError when `output_dir` contains files
    that the generator does not write, FileNotFoundError when ffmpeg is missing and
    RuntimeError when ffmpeg fails.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(output_dir)
    if staging.exists():
        logger.info("removing %s left by an interrupted run", staging)
        shutil.rmtree(staging)
    (staging / VIDEO_DIR).mkdir(parents=True)

    try:
        splits = _split_videos(settings, seed)
        plans = []
        for index in tqdm(range(settings.videos), desc="demo videos", unit="video"):
            # One random stream per video, so a video does not depend on the ones before it.
            rng = np.random.default_rng([seed, 0, index])
            plan = _plan_video(index, splits[index], settings, rng)
            frames = _render_frames(plan.appearances, settings)
            audio = _render_audio(plan.sounds, settings, rng)
            _encode_video(
                frames, audio, settings, staging / VIDEO_DIR / f"{plan.video}.mp4", ffmpeg
            )
            plans.append(plan)
        _write_annotations(plans, settings, seed, staging)
        _install(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    query_count = sum(len(plan.queries) for plan in plans)
    logger.info(
        "demo dataset: %d videos (%d test), %d queries, seed %d, written to %s",
        len(plans),
        splits.count("test"),
        query_count,
        seed,
        output_dir,
    )


def _load_events_document(output_dir: Path) -> tuple[Path, dict[str, Any]]:
    path = Path(output_dir) / EVENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; generate the demo dataset first (generate_demo_dataset)"
        )
    try:
        with path.open(encoding="utf-8") as handle:
            return path, json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from None


def _build_records(path: Path, document: dict[str, Any], key: str, record_type: type) -> list:
    """Build `record_type` objects from the list `document[key]` of an events.json file."""
    try:
        return [record_type(**record) for record in document[key]]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: invalid demo events file ({key}: {error}); regenerate the demo dataset"
        ) from None


def read_demo_events(output_dir: Path) -> list[DemoEvent]:
    """Read the ground-truth events of a generated demo dataset, sorted by video and start.

    Raises FileNotFoundError when events.json is missing and ValueError when it is invalid.
    """
    path, document = _load_events_document(output_dir)
    return _build_records(path, document, "events", DemoEvent)


def read_demo_queries(output_dir: Path) -> list[DemoQuery]:
    """Read the queries of a generated demo dataset with the attributes each one names.

    Raises FileNotFoundError when events.json is missing and ValueError when it is invalid.
    """
    path, document = _load_events_document(output_dir)
    return _build_records(path, document, "queries", DemoQuery)
