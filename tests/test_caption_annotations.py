"""Tests of the captioning annotation readers on the public MSVD and MSR-VTT files and on edge cases."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

from eval.caption_annotations import (
    clean_caption,
    detect_caption_format,
    read_caption_json,
    read_caption_references,
    read_msrvtt_videodatainfo,
    read_msvd_corpus,
    read_msvd_mapping,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"
MSVD = DATA / "msvd"
MSRVTT = DATA / "msrvtt"

needs_msvd = pytest.mark.skipif(not MSVD.is_dir(), reason=f"MSVD annotations not found at {MSVD}")
needs_msrvtt = pytest.mark.skipif(not MSRVTT.is_dir(), reason=f"MSR-VTT annotations not found at {MSRVTT}")

CORPUS_HEADER = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]


def write_corpus(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CORPUS_HEADER)
        writer.writerows(rows)
    return path


def corpus_row(video: str, start: str, end: str, language: str, description: str) -> list[str]:
    return [video, start, end, "1", "clean", "10", language, description]


def raw_english_rows(path: Path) -> tuple[int, set[str]]:
    """Count English rows and distinct clips with the csv module alone, independently of the reader."""
    rows = 0
    clips = set()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        language = header.index("Language")
        for row in reader:
            if row[language] == "English":
                rows += 1
                clips.add("_".join(row[header.index(name)] for name in ("VideoID", "Start", "End")))
    return rows, clips


def test_clean_caption_cases() -> None:
    assert clean_caption("  A man\r\nsings.\ufeff ") == "A man sings."
    assert clean_caption("\ufeffa\tb  c") == "a b c"
    assert clean_caption(" \ufeff \n") == ""


@needs_msvd
def test_msvd_val_counts() -> None:
    rows, clips = raw_english_rows(MSVD / "msvd_val.csv")

    videos, report = read_msvd_corpus(MSVD / "msvd_val.csv")

    assert len(videos) == 100
    assert set(videos) == clips
    assert report.rows == rows
    assert report.captions + report.empty_dropped == rows
    assert sum(len(video.captions) for video in videos.values()) == report.captions
    assert report.other_language_skipped == 0


@needs_msvd
def test_msvd_val_cleaning() -> None:
    videos, _ = read_msvd_corpus(MSVD / "msvd_val.csv")
    captions = [caption for video in videos.values() for caption in video.captions]

    assert not any("\ufeff" in caption for caption in captions)
    assert not any("\n" in caption or "\r" in caption for caption in captions)
    assert all(caption == caption.strip() and caption for caption in captions)
    assert "Two Cat Gladiators" in captions
    assert videos["buJ5HDCinrM_150_166"].captions[0] == "A woman is putting make up on her face."
    assert videos["buJ5HDCinrM_150_166"].source_id == "buJ5HDCinrM"


@needs_msvd
def test_msvd_mapping_orders() -> None:
    mapping = read_msvd_mapping(MSVD / "youtube_mapping.txt")

    videos, report = read_msvd_corpus(MSVD / "msvd_val.csv", MSVD / "youtube_mapping.txt")

    assert len(mapping) == 1970
    assert mapping["-4wsuPCjDBc_5_15"] == 1
    assert report.unmapped_clips == []
    assert sorted(video.order for video in videos.values()) == list(range(1201, 1301))


@needs_msrvtt
def test_msrvtt_test_counts() -> None:
    videos, report = read_msrvtt_videodatainfo(MSRVTT / "test_videodatainfo.json.zip")

    assert len(videos) == 2990
    assert report.rows == 59800
    assert report.captions == 59800
    assert report.empty_dropped == 0
    assert {video.split for video in videos.values()} == {"test"}
    assert min(video.order for video in videos.values()) == 7010
    assert max(video.order for video in videos.values()) == 9999
    assert all(len(video.captions) == 20 for video in videos.values())
    assert "a band performing in a small club" in videos["video7960"].captions


@needs_msrvtt
def test_msrvtt_strips_spaces() -> None:
    videos, _ = read_msrvtt_videodatainfo(MSRVTT / "test_videodatainfo.json.zip")
    captions = [caption for video in videos.values() for caption in video.captions]

    assert all(caption == caption.strip() for caption in captions)
    assert all("  " not in caption for caption in captions)


@needs_msrvtt
def test_caption_json_val_counts() -> None:
    videos, report = read_caption_json(MSRVTT / "msrvtt_val_captions.json")

    assert len(videos) == 497
    assert report.captions == 9940
    assert videos["video6774"].captions[0] == "a group of people talking about food"
    assert all(video.split is None for video in videos.values())


@needs_msrvtt
def test_detect_formats() -> None:
    assert detect_caption_format(MSRVTT / "test_videodatainfo.json.zip") == "msrvtt"
    assert detect_caption_format(MSRVTT / "msrvtt_val_captions.json") == "caption_json"


def test_msvd_skips_other_languages(tmp_path: Path) -> None:
    corpus = write_corpus(
        tmp_path / "corpus.csv",
        [
            corpus_row("abc", "1", "5", "English", "A dog runs."),
            corpus_row("abc", "1", "5", "German", "Ein Hund rennt."),
            corpus_row("abc", "1", "5", "English", "  \ufeff "),
            corpus_row("xyz", "0", "3", "English", "A cat\nsleeps."),
        ],
    )

    videos, report = read_msvd_corpus(corpus)

    assert report.rows == 3
    assert report.other_language_skipped == 1
    assert report.empty_dropped == 1
    assert report.captions == 2
    assert videos["abc_1_5"].captions == ("A dog runs.",)
    assert videos["xyz_0_3"].captions == ("A cat sleeps.",)


def test_msvd_leading_index_column(tmp_path: Path) -> None:
    path = tmp_path / "indexed.csv"
    path.write_text(",VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
                    "7,abc,1,5,1,clean,3,English,A dog runs.\n", encoding="utf-8")  # fmt: skip

    videos, _ = read_msvd_corpus(path)

    assert videos["abc_1_5"].captions == ("A dog runs.",)


def test_msvd_unmapped_dropped(tmp_path: Path) -> None:
    corpus = write_corpus(
        tmp_path / "corpus.csv",
        [corpus_row("abc", "1", "5", "English", "A dog runs."), corpus_row("new", "2", "4", "English", "A man.")],
    )
    mapping = tmp_path / "mapping.txt"
    mapping.write_text("abc_1_5 vid7\n", encoding="utf-8")

    videos, report = read_msvd_corpus(corpus, mapping)

    assert list(videos) == ["abc_1_5"]
    assert videos["abc_1_5"].order == 7
    assert report.unmapped_clips == ["new_2_4"]
    assert report.unmapped_captions == 1
    assert report.captions == 1


def test_msvd_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("VideoID,Start,End,Description\nabc,1,5,A dog.\n", encoding="utf-8")

    with pytest.raises(ValueError, match="missing column") as error:
        read_msvd_corpus(path)

    assert str(path) in str(error.value)
    assert "Language" in str(error.value)


def test_mapping_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "mapping.txt"
    path.write_text("abc_1_5 vid1\nabc_2_6 video2\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"mapping.txt:2: expected"):
        read_msvd_mapping(path)


def test_mapping_duplicate_number(tmp_path: Path) -> None:
    path = tmp_path / "mapping.txt"
    path.write_text("abc_1_5 vid1\nabc_2_6 vid1\n", encoding="utf-8")

    with pytest.raises(ValueError, match="vid1 is given to abc_1_5 and abc_2_6"):
        read_msvd_mapping(path)


def msrvtt_document(split: str = "train") -> dict:
    return {
        "info": {},
        "videos": [
            {"video_id": "video0", "id": 0, "split": split},
            {"video_id": "video1", "id": 1, "split": "validate"},
            {"video_id": "video2", "id": 2, "split": "test"},
        ],
        "sentences": [
            {"video_id": "video0", "sen_id": 0, "caption": " a man sings "},
            {"video_id": "video1", "sen_id": 1, "caption": "\ufeff"},
            {"video_id": "video1", "sen_id": 2, "caption": "a dog\nbarks"},
        ],
    }


def test_msrvtt_splits_and_zip(tmp_path: Path) -> None:
    archive = tmp_path / "train_val_videodatainfo.json.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("train_val_videodatainfo.json", json.dumps(msrvtt_document()))

    videos, report = read_msrvtt_videodatainfo(archive)

    assert videos["video0"].split == "train"
    assert videos["video1"].split == "validation"
    assert videos["video0"].captions == ("a man sings",)
    assert videos["video1"].captions == ("a dog barks",)
    assert report.empty_dropped == 1
    assert report.videos_without_captions == ["video2"]
    assert "video2" not in videos


def test_msrvtt_unknown_split(tmp_path: Path) -> None:
    path = tmp_path / "info.json"
    path.write_text(json.dumps(msrvtt_document(split="dev")), encoding="utf-8")

    with pytest.raises(ValueError, match="video video0 has split 'dev'"):
        read_msrvtt_videodatainfo(path)


def test_msrvtt_unlisted_video(tmp_path: Path) -> None:
    document = msrvtt_document()
    document["sentences"].append({"video_id": "video9", "sen_id": 9, "caption": "x"})
    path = tmp_path / "info.json"
    path.write_text(json.dumps(document), encoding="utf-8")

    with pytest.raises(ValueError, match="names video video9, which the file does not list"):
        read_msrvtt_videodatainfo(path)


def test_zip_two_members(tmp_path: Path) -> None:
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("a.json", "{}")
        handle.writestr("b.json", "{}")

    with pytest.raises(ValueError, match="expected one .json member"):
        read_msrvtt_videodatainfo(archive)


def test_caption_json_lists(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"v1": ["a cat", " "], "v2": {"7": "a dog"}}), encoding="utf-8")

    videos, report = read_caption_references(path)

    assert videos["v1"].captions == ("a cat",)
    assert videos["v2"].captions == ("a dog",)
    assert report.empty_dropped == 1


def test_caption_json_bad_value(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"v1": 3}), encoding="utf-8")

    with pytest.raises(ValueError, match="video v1: expected a mapping"):
        read_caption_json(path)


def test_mapping_only_for_msvd(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"v1": ["a cat"]}), encoding="utf-8")

    with pytest.raises(ValueError, match="msvd format only"):
        read_caption_references(path, mapping_path=tmp_path / "mapping.txt")
