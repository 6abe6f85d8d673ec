"""Tests of the localization annotation readers on the public files and on small edge cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from eval.annotations import (
    Query,
    activitynet_split_files,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"
CHARADES = DATA / "charades_sta"
ACTIVITYNET = DATA / "activitynet_captions"

needs_charades = pytest.mark.skipif(
    not CHARADES.is_dir(), reason=f"Charades-STA annotations not found at {CHARADES}"
)
needs_activitynet = pytest.mark.skipif(
    not ACTIVITYNET.is_dir(), reason=f"ActivityNet Captions annotations not found at {ACTIVITYNET}"
)


def raw_charades_counts(split: str) -> dict[str, int]:
    """Count the raw file's entries with plain parsing, independently of the reader."""
    with (CHARADES / f"Charades_v1_{split}.csv").open(newline="") as handle:
        lengths = {row["id"]: float(row["length"]) for row in csv.DictReader(handle)}
    counts = {"lines": 0, "end_past": 0, "reversed": 0, "kept_clipped": 0}
    videos = set()
    for line in (CHARADES / f"charades_sta_{split}.txt").read_text().splitlines():
        head, sentence = line.split("##")
        video, start, end = head.split()
        start, end = float(start), float(end)
        videos.add(video)
        counts["lines"] += 1
        counts["end_past"] += end > lengths[video]
        counts["reversed"] += start > end
        counts["kept_clipped"] += start <= end and end > lengths[video] and start < lengths[video]
    counts["videos"] = len(videos)
    return counts


def raw_activitynet_counts(name: str) -> dict[str, int]:
    data = json.loads((ACTIVITYNET / f"{name}.json").read_text())
    counts = {"videos": len(data), "sentences": 0, "past": 0, "reversed": 0, "zero_length": 0}
    for entry in data.values():
        for (start, end), _ in zip(entry["timestamps"], entry["sentences"]):
            counts["sentences"] += 1
            counts["past"] += end > entry["duration"] or start > entry["duration"]
            counts["reversed"] += start > end
            counts["zero_length"] += start == end
    return counts


@pytest.fixture(scope="module")
def charades_train() -> tuple:
    durations = read_charades_durations(CHARADES / "Charades_v1_train.csv")
    return read_charades_sta(CHARADES / "charades_sta_train.txt", durations)


@needs_charades
def test_charades_durations_release_csv() -> None:
    durations = read_charades_durations(CHARADES / "Charades_v1_train.csv")
    assert len(durations) == 7985
    assert min(durations.values()) == 2.33
    assert max(durations.values()) == 194.33
    assert durations["46GP8"] == 24.83


@needs_charades
def test_charades_train_counts(charades_train: tuple) -> None:
    queries, report = charades_train
    raw = raw_charades_counts("train")
    assert raw["lines"] == 12408
    assert raw["videos"] == 5338
    assert raw["end_past"] == 1805
    assert raw["reversed"] == 4
    assert report.lines == 12408
    assert report.videos == 5338
    # Reversed lines are dropped before clipping, and 3 of the 4 also end past the length.
    assert report.clipped == raw["kept_clipped"] == 1802
    assert report.dropped == raw["reversed"] == 4
    assert report.queries == 12404
    assert len(queries) == 12404
    assert report.durations_from_metadata == 5338
    assert report.durations_probed == 0


@needs_charades
def test_charades_train_dropped_reasons(charades_train: tuple) -> None:
    _, report = charades_train
    assert report.dropped_entries[0] == ("LEOL6#8252", "start 8 > end 7")
    assert [entry[0] for entry in report.dropped_entries] == [
        "LEOL6#8252", "IOL8Q#8440", "AKKWU#9623", "AKKWU#9624"
    ]


@needs_charades
def test_charades_train_first_query(charades_train: tuple) -> None:
    queries, _ = charades_train
    assert queries[0] == Query(
        query_id="AO8RW#1",
        video_id="AO8RW",
        start=0.0,
        end=6.9,
        sentence="a person is putting a book on a shelf.",
        duration=33.67,
    )


@needs_charades
def test_charades_spans_within_duration(charades_train: tuple) -> None:
    queries, _ = charades_train
    assert all(0.0 <= query.start < query.end <= query.duration for query in queries)


@needs_charades
def test_charades_test_split() -> None:
    durations = read_charades_durations(CHARADES / "Charades_v1_test.csv")
    queries, report = read_charades_sta(CHARADES / "charades_sta_test.txt", durations)
    raw = raw_charades_counts("test")
    assert report.lines == raw["lines"] == 3720
    assert report.videos == raw["videos"] == 1334
    assert report.clipped == raw["end_past"] == 562
    assert report.dropped == 0
    assert queries[0].query_id == "3MSZA#1"
    assert queries[0].start == 24.3
    assert queries[0].end == 30.4
    assert queries[0].sentence == "person turn a light on."


@needs_activitynet
def test_activitynet_train_counts() -> None:
    queries, report = read_activitynet_captions([ACTIVITYNET / "train.json"])
    raw = raw_activitynet_counts("train")
    assert raw["videos"] == 10009
    assert raw["sentences"] == 37421
    assert raw["past"] == 261
    assert raw["reversed"] == 2
    assert raw["zero_length"] == 2
    assert report.videos == 10009
    assert report.lines == 37421
    assert report.clipped == 261
    assert report.dropped == raw["reversed"] + raw["zero_length"]
    assert len(queries) == 37421 - 4
    reasons = dict(report.dropped_entries)
    assert reasons["v_0bosp4-pyTM#3"] == "start 61.29 > end 60.71"
    assert reasons["v_N7ppHQNikv8#2"].startswith("span [34.77, 34.77] is empty")


@needs_activitynet
def test_activitynet_first_query_stripped() -> None:
    queries, _ = read_activitynet_captions([ACTIVITYNET / "train.json"])
    assert queries[0] == Query(
        query_id="v_QOlSCBRmfWY#0",
        video_id="v_QOlSCBRmfWY",
        start=0.83,
        end=19.86,
        sentence="A young woman is seen standing in a room and leads into her dancing.",
        duration=82.73,
    )
    assert queries[1].sentence.startswith("The girl dances")


@needs_activitynet
def test_activitynet_val1_counts() -> None:
    queries, report = read_activitynet_captions([ACTIVITYNET / "val_1.json"])
    raw = raw_activitynet_counts("val_1")
    assert report.videos == raw["videos"] == 4917
    assert report.lines == raw["sentences"] == 17505
    assert report.clipped == raw["past"] == 134
    assert report.dropped == 0
    assert len(queries) == 17505


def write_charades(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "sta.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_charades_edge_cases(tmp_path: Path) -> None:
    path = write_charades(
        tmp_path,
        [
            "A 2.0 12.0##person opens a door.",
            "A -1.0 4.0##clipped at the start.",
            "",
            "A 8.0 3.0##reversed span.",
            "A 11.0 15.0##starts after the end.",
            "A 1.0 2.0##   ",
            "B 1.0 2.0##no duration for this video.",
        ],
    )
    queries, report = read_charades_sta(path, {"A": 10.0})
    assert [query.query_id for query in queries] == ["A#1", "A#2"]
    assert (queries[0].start, queries[0].end) == (2.0, 10.0)
    assert (queries[1].start, queries[1].end) == (0.0, 4.0)
    # The blank line 3 is skipped, neither counted nor dropped, but keeps line numbers.
    assert report.lines == 6
    assert report.clipped == 2
    assert report.dropped == 4
    assert report.dropped_entries == [
        ("A#4", "start 8 > end 3"),
        ("A#5", "span [11, 15] is empty after clipping to [0, 10]"),
        ("A#6", "empty sentence"),
        ("B#7", "missing duration"),
    ]


def test_charades_probe_fallback(tmp_path: Path) -> None:
    path = write_charades(tmp_path, ["A 1.0 2.0##one.", "B 1.0 2.0##two."])
    queries, report = read_charades_sta(path, {"A": 10.0}, probe_durations={"B": 5.5, "A": 1.0})
    assert [query.duration for query in queries] == [10.0, 5.5]
    assert report.durations_from_metadata == 1
    assert report.durations_probed == 1


def test_charades_fail_mode(tmp_path: Path) -> None:
    path = write_charades(tmp_path, ["A 1.0 2.0##fine.", "A 3.0 2.0##reversed."])
    with pytest.raises(ValueError, match=r"sta\.txt: query A#2: start 3 > end 2"):
        read_charades_sta(path, {"A": 10.0}, on_invalid="fail")


def test_charades_malformed_line(tmp_path: Path) -> None:
    path = write_charades(tmp_path, ["A 1.0 2.0##fine.", "A 1.0##no end time."])
    with pytest.raises(ValueError, match=r"sta\.txt:2: expected 'VIDEO START END##SENTENCE'"):
        read_charades_sta(path, {"A": 10.0})


def test_charades_bad_number(tmp_path: Path) -> None:
    path = write_charades(tmp_path, ["A 1.0 two##bad end."])
    with pytest.raises(ValueError, match=r"sta\.txt:1: end 'two' is not a number"):
        read_charades_sta(path, {"A": 10.0})


def test_durations_simple_csv(tmp_path: Path) -> None:
    path = tmp_path / "durations.csv"
    path.write_text("id,length\nvid_a,16.0\nvid_b,12.5\nvid_c,0\n")
    assert read_charades_durations(path) == {"vid_a": 16.0, "vid_b": 12.5}


def test_durations_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "durations.csv"
    path.write_text("id,seconds\nvid_a,16.0\n")
    with pytest.raises(ValueError, match="missing column.*length"):
        read_charades_durations(path)


def test_durations_conflicting_rows(tmp_path: Path) -> None:
    path = tmp_path / "durations.csv"
    path.write_text("id,length\nvid_a,16.0\nvid_a,17.0\n")
    with pytest.raises(ValueError, match="durations.csv:3: id vid_a repeats"):
        read_charades_durations(path)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_activitynet_merged_join(tmp_path: Path) -> None:
    first = write_json(
        tmp_path / "val_1.json",
        {
            "v_a": {"duration": 20.0, "timestamps": [[0, 5], [4, 25]], "sentences": [" A.", "B."]},
            "v_b": {"duration": 8.0, "timestamps": [[1, 2]], "sentences": ["C."]},
        },
    )
    second = write_json(
        tmp_path / "val_2.json",
        {"v_a": {"duration": 20.0, "timestamps": [[6, 9]], "sentences": ["D. "]}},
    )
    queries, report = read_activitynet_captions([first, second])
    assert [query.query_id for query in queries] == ["v_a#0", "v_a#1", "v_a#2", "v_b#0"]
    assert [query.sentence for query in queries] == ["A.", "B.", "D.", "C."]
    assert (queries[1].start, queries[1].end) == (4.0, 20.0)
    assert report.videos == 2
    assert report.lines == 4
    assert report.clipped == 1


def test_activitynet_probe_fallback(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "train.json",
        {
            "v_a": {"timestamps": [[0, 5]], "sentences": ["A."]},
            "v_b": {"timestamps": [[0, 5]], "sentences": ["B."]},
        },
    )
    queries, report = read_activitynet_captions([path], probe_durations={"v_a": 4.0})
    assert len(queries) == 1
    assert queries[0].end == 4.0
    assert report.durations_probed == 1
    assert report.dropped_entries == [("v_b#0", "missing duration")]


def test_activitynet_length_mismatch(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "train.json",
        {"v_a": {"duration": 9.0, "timestamps": [[0, 5], [1, 2]], "sentences": ["A."]}},
    )
    with pytest.raises(ValueError, match="video v_a: 2 timestamps but 1 sentences"):
        read_activitynet_captions([path])


def test_activitynet_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"train\.json: invalid JSON"):
        read_activitynet_captions([path])


def test_split_files_merged() -> None:
    annotations = {"train": Path("t.json"), "val_1": Path("v1.json"), "val_2": Path("v2.json")}
    assert activitynet_split_files(annotations, "merged") == [Path("v1.json"), Path("v2.json")]
    assert activitynet_split_files(annotations, "val_1") == [Path("v1.json")]
    assert activitynet_split_files(annotations, "train") == [Path("t.json")]


def test_split_files_invalid() -> None:
    with pytest.raises(ValueError, match="invalid ActivityNet Captions split 'test'"):
        activitynet_split_files({"val_1": Path("v1.json")}, "test")
    with pytest.raises(ValueError, match="needs the annotation file.*val_2"):
        activitynet_split_files({"val_1": Path("v1.json")}, "merged")
