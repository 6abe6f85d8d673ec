"""Tests of the demo dataset generator on real ffmpeg output.

Small datasets of a few 16 s videos at 64x64 pixels are generated once per module. Frames
and audio are decoded back with ffmpeg and checked against the ground truth in events.json.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval.annotations import read_charades_durations, read_charades_sta
from eval.demo import (
    BACKGROUND_RGB,
    CAPTION_COLUMNS,
    COLOURS,
    NOISE,
    SHAPES,
    TONES,
    DemoEvent,
    DemoQuery,
    DemoSettings,
    generate_demo_dataset,
    read_demo_events,
    read_demo_queries,
)

CONFIG_PATH = Path(__file__).resolve().parents[1] / "config.yaml"
SEED = 1234
SETTINGS = DemoSettings(videos=8, test_fraction=0.25)
ANNOTATION_FILES = (
    "charades_sta_train.txt",
    "charades_sta_test.txt",
    "durations.csv",
    "captions.csv",
    "youtube_mapping.txt",
    "events.json",
)
STA_LINE = re.compile(r"^(demo_\d{4}) (\d+\.\d+) (\d+\.\d+)##(\S.*)$")
# Largest per-channel distance (0-255) of a decoded pixel from the drawn colour. Any two of
# the colours and the background differ by at least 140 in some channel, so no pixel can
# match two of them.
COLOUR_TOLERANCE = 60
# Fraction of the bounding box that a shape fills: pi/4 for a circle, 1 for a square, 1/2
# for a triangle, each with a margin for the blurred edges.
FILL_RATIO_RANGES = {"circle": (0.68, 0.88), "square": (0.9, 1.0), "triangle": (0.4, 0.68)}
# Audio analysis window (s); 0.25 s gives 4 Hz frequency bins at 22,050 Hz.
WINDOW_SECONDS = 0.25
# Spectral flatness (geometric over arithmetic mean of the power spectrum) is near 0 for a
# pure tone and about 0.55 for the white noise after AAC; 0.3 separates them.
NOISE_FLATNESS = 0.3
# Queries that must have a distractor for each single modality: the 2 x 2 design of four
# slots per video gives every query one, so anything below 0.9 is a regression.
MIN_AMBIGUOUS_FRACTION = 0.9
# A single-modality oracle picks at random among the events of the named attribute; with two
# such events per attribute it finds the target (IoU >= 0.5) half of the time.
MAX_SINGLE_MODALITY_RECALL = 0.6


def _generate(settings: DemoSettings, seed: int, output_dir: Path) -> Path:
    generate_demo_dataset(settings, seed, output_dir)
    return output_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(SETTINGS, SEED, tmp_path_factory.mktemp("first") / "demo")


@pytest.fixture(scope="module")
def dataset_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(SETTINGS, SEED, tmp_path_factory.mktemp("second") / "demo")


def _decode_frames(path: Path, settings: DemoSettings) -> np.ndarray:
    """Decode every frame as int RGB `(frames, height, width, 3)`."""
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    shape = (-1, settings.height, settings.width, 3)
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).astype(np.int32)


def _decode_audio(path: Path, settings: DemoSettings) -> np.ndarray:
    """Decode the audio as float32 mono at the generator's sample rate."""
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1"]
    command += ["-ar", str(settings.sample_rate), "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.float32)


def _colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    distance = np.abs(frame - np.array(COLOURS[colour])).max(axis=-1)
    return distance <= COLOUR_TOLERANCE


def _spectrum(audio: np.ndarray, time: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (frequencies in Hz, magnitudes) of a Hann-windowed window centred at `time`."""
    length = round(WINDOW_SECONDS * rate)
    first = round(time * rate) - length // 2
    window = audio[first : first + length] * np.hanning(length)
    return np.fft.rfftfreq(length, 1 / rate), np.abs(np.fft.rfft(window))


def _flatness(magnitudes: np.ndarray) -> float:
    power = magnitudes**2 + 1e-12
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def _events_of(events: list[DemoEvent], video: str, kind: str) -> list[DemoEvent]:
    return [event for event in events if event.video == video and event.kind == kind]


def _object_events(events: list[DemoEvent], query: DemoQuery) -> list[DemoEvent]:
    """Return the visual events of the query's video that show the named object."""
    return [
        event
        for event in _events_of(events, query.video, "visual")
        if (event.attributes["colour"], event.attributes["shape"]) == (query.colour, query.shape)
    ]


def _sound_events(events: list[DemoEvent], query: DemoQuery) -> list[DemoEvent]:
    """Return the audio events of the query's video that play the named sound."""
    return [
        event
        for event in _events_of(events, query.video, "audio")
        if event.attributes["sound"] == query.sound
    ]


def _iou(first: tuple[float, float], second: tuple[float, float]) -> float:
    intersection = max(0.0, min(first[1], second[1]) - max(first[0], second[0]))
    union = max(first[1], second[1]) - min(first[0], second[0])
    return intersection / union


def _sample_queries(dataset: Path) -> list[DemoQuery]:
    """Return every fifth query: a handful from several videos and slot positions."""
    queries = read_demo_queries(dataset)
    return [query for index, query in enumerate(queries) if index % 5 == 0]


def test_sample_covers_attributes(dataset: Path) -> None:
    sample = _sample_queries(dataset)
    assert {query.shape for query in sample} == set(SHAPES)
    assert NOISE in {query.sound for query in sample}
    assert {query.sound for query in sample} & set(TONES)


def test_settings_from_config_block() -> None:
    config = yaml.safe_load(CONFIG_PATH.read_text(encoding="utf-8"))
    block = config["datasets"]["demo"]["generator"]
    settings = DemoSettings.from_dict(block)
    assert settings.videos == block["videos"]
    assert settings.seconds == float(block["seconds"])
    assert settings.events_per_video == block["events_per_video"]


def test_settings_unknown_key() -> None:
    with pytest.raises(ValueError, match="unknown demo generator setting.*colour_count"):
        DemoSettings.from_dict({"videos": 4, "colour_count": 3})


def test_settings_wrong_type() -> None:
    with pytest.raises(ValueError, match="videos must be an integer"):
        DemoSettings.from_dict({"videos": "48"})
    with pytest.raises(ValueError, match="seconds must be a number"):
        DemoSettings.from_dict({"seconds": True})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"width": 63}, "width must be an even number"),
        ({"seconds": 16.2}, "multiple of time_step"),
        ({"time_step": 0.3}, "multiple of one frame"),
        ({"fps": 3, "time_step": 1 / 3, "seconds": 15.0}, "multiple of 0.001 s"),
        ({"events_per_video": 6}, "do not fit in 16.0 s"),
        ({"events_per_video": 20, "seconds": 80.0}, "only 4 colours"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"tone_frequencies": [1000.0, 250.0, 4000.0]}, "must rise strictly"),
        ({"tone_frequencies": [250.0, 1000.0, 12000.0]}, r"must lie in \(0, 11025.0\) Hz"),
    ],
)
def test_settings_invalid(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoSettings.from_dict(values)


def test_seed_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate_demo_dataset(SETTINGS, -1, tmp_path / "demo")


def test_files_written(dataset: Path) -> None:
    videos = sorted(path.name for path in (dataset / "videos").iterdir())
    assert videos == [f"demo_{index:04d}.mp4" for index in range(SETTINGS.videos)]
    for name in ANNOTATION_FILES:
        assert (dataset / name).is_file(), name
    assert not (dataset.parent / ".demo.partial").exists()


def test_same_seed_identical(dataset: Path, dataset_again: Path) -> None:
    for name in ANNOTATION_FILES:
        assert (dataset / name).read_bytes() == (dataset_again / name).read_bytes(), name
    assert read_demo_events(dataset) == read_demo_events(dataset_again)
    for video in sorted((dataset / "videos").iterdir()):
        assert (
            video.read_bytes() == (dataset_again / "videos" / video.name).read_bytes()
        ), video.name


def test_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    other = _generate(SETTINGS, SEED + 1, tmp_path / "demo")
    for name in ("charades_sta_train.txt", "charades_sta_test.txt", "captions.csv", "events.json"):
        assert (dataset / name).read_bytes() != (other / name).read_bytes(), name
    assert read_demo_events(dataset) != read_demo_events(other)


def test_sta_format_and_split(dataset: Path) -> None:
    splits: dict[str, set[str]] = {}
    for split in ("train", "test"):
        lines = (dataset / f"charades_sta_{split}.txt").read_text(encoding="utf-8").splitlines()
        assert lines, split
        for line in lines:
            match = STA_LINE.match(line)
            assert match is not None, line
            assert float(match.group(2)) < float(match.group(3)), line
        splits[split] = {line.split()[0] for line in lines}

    assert not splits["train"] & splits["test"]
    assert len(splits["train"] | splits["test"]) == SETTINGS.videos
    assert len(splits["test"]) == round(SETTINGS.videos * SETTINGS.test_fraction)

    queries = read_demo_queries(dataset)
    assert len(queries) == SETTINGS.videos * SETTINGS.events_per_video
    assert all(
        query.split == ("test" if query.video in splits["test"] else "train") for query in queries
    )


def test_sta_read_by_annotation_reader(dataset: Path) -> None:
    durations = read_charades_durations(dataset / "durations.csv")
    train, report = read_charades_sta(
        dataset / "charades_sta_train.txt", durations, on_invalid="fail"
    )
    expected = [query for query in read_demo_queries(dataset) if query.split == "train"]
    assert len(train) == len(expected)
    assert [(query.start, query.end) for query in train] == [
        (query.start, query.end) for query in expected
    ]
    assert report.queries == len(expected)
    assert report.dropped == 0
    assert report.clipped == 0


def test_query_names_its_attributes(dataset: Path) -> None:
    for query in read_demo_queries(dataset):
        assert f"{query.colour} {query.shape}" in query.sentence, query
        assert query.sound in query.sentence, query


def test_target_is_intersection(dataset: Path) -> None:
    events = read_demo_events(dataset)
    for query in read_demo_queries(dataset):
        object_events = _object_events(events, query)
        sound_events = _sound_events(events, query)
        overlaps = [
            (max(v.start, a.start), min(v.end, a.end))
            for v in object_events
            for a in sound_events
            if min(v.end, a.end) > max(v.start, a.start)
        ]
        assert overlaps == [(query.start, query.end)], query
        assert query.end - query.start >= SETTINGS.min_overlap_seconds, query


def test_events_boundaries_differ(dataset: Path) -> None:
    events = read_demo_events(dataset)
    for video in {event.video for event in events}:
        visual = _events_of(events, video, "visual")
        audio = _events_of(events, video, "audio")
        assert len(visual) == SETTINGS.events_per_video
        assert len(audio) == SETTINGS.events_per_video
        for first, second in zip(visual, audio):
            assert (first.start, first.end) != (second.start, second.end), video


def test_colour_shown_in_span(dataset: Path) -> None:
    events = read_demo_events(dataset)
    for query in _sample_queries(dataset):
        frames = _decode_frames(dataset / "videos" / f"{query.video}.mp4", SETTINGS)
        frame = frames[int((query.start + query.end) / 2 * SETTINGS.fps)]
        mask = _colour_mask(frame, query.colour)
        assert mask.sum() >= 100, query

        rows, columns = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
        low, high = FILL_RATIO_RANGES[query.shape]
        assert low <= mask.sum() / box <= high, query

        others = [
            e
            for e in _events_of(events, query.video, "visual")
            if e.attributes["colour"] != query.colour
        ]
        assert others, query
        other_frame = frames[int((others[0].start + others[0].end) / 2 * SETTINGS.fps)]
        assert _colour_mask(other_frame, query.colour).sum() == 0, query


def test_frame_empty_between_events(dataset: Path) -> None:
    events = read_demo_events(dataset)
    checked = 0
    for video in sorted({event.video for event in events}):
        visual = _events_of(events, video, "visual")
        frames = _decode_frames(dataset / "videos" / f"{video}.mp4", SETTINGS)
        object_visible = np.zeros(len(frames), dtype=bool)
        for event in visual:
            first, last = round(event.start * SETTINGS.fps), round(event.end * SETTINGS.fps)
            object_visible[first:last] = True
        for index in np.nonzero(~object_visible)[0]:
            background = np.abs(frames[index] - np.array(BACKGROUND_RGB)).max(axis=-1) <= 10
            assert background.all(), (video, index)
            checked += 1
    assert checked > 0


def test_sound_heard_in_span(dataset: Path) -> None:
    events = read_demo_events(dataset)
    rate = SETTINGS.sample_rate
    tolerance_hz = 2 * rate / round(WINDOW_SECONDS * rate)
    for query in _sample_queries(dataset):
        audio = _decode_audio(dataset / "videos" / f"{query.video}.mp4", SETTINGS)
        frequencies, magnitudes = _spectrum(audio, (query.start + query.end) / 2, rate)
        sound_events = _sound_events(events, query)
        others = [
            e
            for e in _events_of(events, query.video, "audio")
            if e.attributes["sound"] != query.sound
        ]
        assert others, query
        other_frequencies, other_magnitudes = _spectrum(
            audio, (others[0].start + others[0].end) / 2, rate
        )

        if query.sound == NOISE:
            assert _flatness(magnitudes) > NOISE_FLATNESS, query
            assert _flatness(other_magnitudes) < NOISE_FLATNESS, query
            continue

        tone_hz = sound_events[0].attributes["frequency_hz"]
        assert abs(frequencies[magnitudes.argmax()] - tone_hz) <= tolerance_hz, query
        # Elsewhere the tone's band contains only leakage of another tone or white noise, both
        # under a tenth of the tone's peak (noise at the generator's amplitude reaches about
        # 4 % per bin in this window).
        near_tone = np.abs(other_frequencies - tone_hz) <= tolerance_hz
        assert other_magnitudes[near_tone].max() < 0.1 * magnitudes.max(), query


def test_audio_silent_without_sound(dataset: Path) -> None:
    events = read_demo_events(dataset)
    rate = SETTINGS.sample_rate
    checked = 0
    for video in sorted({event.video for event in events}):
        audio = _decode_audio(dataset / "videos" / f"{video}.mp4", SETTINGS)
        playing = np.zeros(round(SETTINGS.seconds * rate), dtype=bool)
        for event in _events_of(events, video, "audio"):
            # The AAC transform window (2048 samples) smears each onset and offset, so leave a
            # margin of one window on both sides.
            first = max(0, round(event.start * rate) - 2048)
            playing[first : round(event.end * rate) + 2048] = True
        silent = np.nonzero(~playing)[0]
        if silent.size:
            assert np.sqrt(np.mean(audio[silent] ** 2)) < 0.01, video
            checked += 1
    assert checked > 0


def test_single_modality_ambiguous(dataset: Path) -> None:
    events = read_demo_events(dataset)
    queries = read_demo_queries(dataset)
    ambiguous = 0
    visual_hits = 0.0
    audio_hits = 0.0
    for query in queries:
        target = (query.start, query.end)
        object_events = _object_events(events, query)
        sound_events = _sound_events(events, query)
        # A distractor matches one attribute at a time that does not overlap the target.
        visual_distractors = [
            e for e in object_events if e.end <= query.start or e.start >= query.end
        ]
        audio_distractors = [
            e for e in sound_events if e.end <= query.start or e.start >= query.end
        ]
        ambiguous += bool(visual_distractors) and bool(audio_distractors)
        visual_hits += np.mean([_iou((e.start, e.end), target) >= 0.5 for e in object_events])
        audio_hits += np.mean([_iou((e.start, e.end), target) >= 0.5 for e in sound_events])

    assert ambiguous / len(queries) >= MIN_AMBIGUOUS_FRACTION
    assert visual_hits / len(queries) <= MAX_SINGLE_MODALITY_RECALL
    assert audio_hits / len(queries) <= MAX_SINGLE_MODALITY_RECALL


def test_six_slots_ambiguous(tmp_path: Path) -> None:
    settings = DemoSettings(videos=2, test_fraction=0.5, seconds=18.0, events_per_video=6)
    output = _generate(settings, SEED, tmp_path / "demo")
    events = read_demo_events(output)
    queries = read_demo_queries(output)
    assert len(queries) == 12
    for query in queries:
        object_events = _object_events(events, query)
        sound_events = _sound_events(events, query)
        assert len(object_events) >= 2, query
        assert len(sound_events) >= 2, query


def test_durations_match_ffprobe(dataset: Path) -> None:
    with (dataset / "durations.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == SETTINGS.videos
    for row in rows:
        command = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"]
        output = subprocess.run(
            command + [str(dataset / "videos" / f"{row['id']}.mp4")],
            capture_output=True,
            check=True,
        )
        assert abs(float(output.stdout) - float(row["length"])) <= 1 / SETTINGS.fps, row


def test_captions_msvd_format(dataset: Path) -> None:
    with (dataset / "captions.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CAPTION_COLUMNS
        rows = list(reader)
    assert [row["VideoID"] for row in rows] == [
        f"demo_{index:04d}" for index in range(SETTINGS.videos)
    ]
    assert all(row["Language"] == "English" for row in rows)

    events = read_demo_events(dataset)
    first_visual = _events_of(events, "demo_0000", "visual")[0].attributes
    assert (
        rows[0]["Description"]
        .lower()
        .startswith(f"a {first_visual['colour']} {first_visual['shape']}")
    )

    mapping = (dataset / "youtube_mapping.txt").read_text(encoding="utf-8").splitlines()
    assert mapping[0] == "demo_0000_0_16 vid1"
    for row, line in zip(rows, mapping):
        clip = line.split()[0]
        assert clip == f"{row['VideoID']}_{row['Start']}_{row['End']}"
        assert (dataset / "videos" / f"{row['VideoID']}.mp4").is_file()


def test_events_json_records_seed(dataset: Path) -> None:
    document = json.loads((dataset / "events.json").read_text(encoding="utf-8"))
    assert document["seed"] == SEED
    assert document["settings"]["videos"] == SETTINGS.videos
    assert len(document["videos"]) == SETTINGS.videos


def test_rerun_replaces_earlier_demo(tmp_path: Path) -> None:
    settings = DemoSettings(videos=2, test_fraction=0.5)
    output = tmp_path / "demo"
    _generate(settings, 1, output)
    (output / "videos" / "stale.mp4").write_bytes(b"stale")
    _generate(settings, 2, output)
    fresh = _generate(settings, 2, tmp_path / "fresh")
    assert (output / "events.json").read_bytes() == (fresh / "events.json").read_bytes()
    assert not (output / "videos" / "stale.mp4").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "fresh"]


def test_foreign_files_kept(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    output.mkdir()
    notes = output / "notes.txt"
    notes.write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="notes.txt"):
        generate_demo_dataset(DemoSettings(videos=2, test_fraction=0.5), 1, output)
    with pytest.raises(FileExistsError, match="is not a folder"):
        generate_demo_dataset(DemoSettings(videos=2, test_fraction=0.5), 1, notes)
    assert notes.read_text(encoding="utf-8") == "mine"
    assert sorted(path.name for path in output.iterdir()) == ["notes.txt"]
    assert not (tmp_path / ".demo.partial").exists()


def test_missing_ffmpeg_leaves_nothing(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    leftover = tmp_path / ".demo.partial"
    leftover.mkdir()
    (leftover / "charades_sta_train.txt").write_text("old", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="ffmpeg executable"):
        generate_demo_dataset(
            DemoSettings(videos=2, test_fraction=0.5), 1, output, ffmpeg=str(tmp_path / "no-ffmpeg")
        )
    assert not output.exists()
    assert not leftover.exists()


def test_read_events_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="events.json not found"):
        read_demo_events(tmp_path)


def test_read_events_invalid(tmp_path: Path) -> None:
    (tmp_path / "events.json").write_text('{"events": [{"video": "demo_0000"}]}', encoding="utf-8")
    with pytest.raises(ValueError, match="invalid demo events file"):
        read_demo_events(tmp_path)
    with pytest.raises(ValueError, match="invalid demo events file"):
        read_demo_queries(tmp_path)
