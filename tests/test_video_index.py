"""Tests of finding video files, sharding ids and the videos.tsv index."""

from __future__ import annotations

import csv
import os

import pytest

from extractors.video_index import (
    VideoIndexEntry,
    find_videos,
    read_video_index,
    shard_ids,
    write_video_index,
)

UNUSUAL_IDS = ["-leading dash", "with space", "quote's \"double\"", "café 動画", "a:b", "back\\slash"]


def touch(folder, name: str) -> None:
    (folder / name).write_bytes(b"x")


def test_find_videos_extension_order(tmp_path):
    touch(tmp_path, "a.mp4")
    touch(tmp_path, "b.mkv")
    touch(tmp_path, "c.mp4")
    touch(tmp_path, "c.mkv")
    touch(tmp_path, "d.MP4")
    (tmp_path / "e.mp4").mkdir()
    found, missing = find_videos(tmp_path, ["a", "b", "c", "d", "e", "f"], [".mp4", ".mkv"])
    assert found == {"a": tmp_path / "a.mp4", "b": tmp_path / "b.mkv", "c": tmp_path / "c.mp4"}
    # Names match case-sensitively and folders are not videos.
    assert missing == ["d", "e", "f"]


def test_find_videos_unusual_ids(tmp_path):
    for video_id in UNUSUAL_IDS:
        touch(tmp_path, video_id + ".mp4")
    found, missing = find_videos(tmp_path, UNUSUAL_IDS, [".mp4"])
    assert sorted(found) == sorted(UNUSUAL_IDS)
    assert missing == []
    for video_id, path in found.items():
        assert path.name == video_id + ".mp4"


def test_find_videos_duplicate_ids(tmp_path):
    touch(tmp_path, "a.mp4")
    found, missing = find_videos(tmp_path, ["a", "a", "z", "z"], [".mp4"])
    assert list(found) == ["a"]
    assert missing == ["z"]


def test_find_videos_lists_folder_once(tmp_path, monkeypatch):
    for index in range(50):
        touch(tmp_path, f"v{index}.mp4")
    calls = []
    real_scandir = os.scandir

    def counting_scandir(path):
        calls.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    found, missing = find_videos(tmp_path, [f"v{index}" for index in range(60)], [".mp4", ".avi"])
    assert len(calls) == 1
    assert len(found) == 50
    assert len(missing) == 10


def test_find_videos_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_videos(tmp_path / "nowhere", ["a"], [".mp4"])


def test_find_videos_rejects_bad_extension(tmp_path):
    with pytest.raises(ValueError, match="'mp4'"):
        find_videos(tmp_path, ["a"], ["mp4"])


def test_shard_ids_sorted_groups():
    shards = shard_ids(["e", "a", "d", "b", "c", "a"], 2)
    assert shards == [["a", "b"], ["c", "d"], ["e"]]


def test_shard_ids_rejects_zero_size():
    with pytest.raises(ValueError, match="shard_size"):
        shard_ids(["a"], 0)


def test_index_round_trip(tmp_path):
    folder = tmp_path / "videos"
    found = {video_id: folder / f"{video_id}.mp4" for video_id in UNUSUAL_IDS}
    missing = ["zz missing", "b-missing"]
    index = tmp_path / "videos.tsv"
    write_video_index(index, found, missing, shard_size=3)

    entries = read_video_index(index)
    ordered = sorted([*UNUSUAL_IDS, *missing])
    assert [entry.video_id for entry in entries] == ordered
    by_id = {entry.video_id: entry for entry in entries}
    for video_id in UNUSUAL_IDS:
        entry = by_id[video_id]
        assert entry.status == "found"
        assert entry.path == str(folder / f"{video_id}.mp4")
        # Shards are cut over all sorted ids, found and missing.
        assert entry.shard == ordered.index(video_id) // 3
    assert by_id["zz missing"] == VideoIndexEntry("zz missing", "", -1, "missing")
    assert by_id["b-missing"].shard == -1
    assert not (tmp_path / "videos.tsv.tmp").exists()


def test_index_readable_by_csv_module(tmp_path):
    index = tmp_path / "videos.tsv"
    write_video_index(index, {"quote's \"double\"": tmp_path / "q.mp4"}, ["m"], shard_size=4)
    with index.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert rows[0]["video_id"] == "m"
    assert rows[0]["status"] == "missing"
    assert rows[1]["video_id"] == "quote's \"double\""
    assert rows[1]["shard"] == "0"


@pytest.mark.parametrize("bad_id", ["tab\there", "new\nline", "carriage\rreturn"])
def test_index_rejects_tab_newline_id(tmp_path, bad_id):
    with pytest.raises(ValueError, match="invalid video id"):
        write_video_index(tmp_path / "videos.tsv", {bad_id: tmp_path / "x.mp4"}, [], 4)
    with pytest.raises(ValueError, match="invalid video id"):
        write_video_index(tmp_path / "videos.tsv", {}, [bad_id], 4)
    assert not (tmp_path / "videos.tsv").exists()


def test_index_rejects_id_found_and_missing(tmp_path):
    with pytest.raises(ValueError, match="both found and missing"):
        write_video_index(tmp_path / "videos.tsv", {"a": tmp_path / "a.mp4"}, ["a"], 4)


def test_read_index_rejects_bad_rows(tmp_path):
    bad_header = tmp_path / "header.tsv"
    bad_header.write_text("id\tpath\tshard\tstatus\n", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid header"):
        read_video_index(bad_header)

    bad_shard = tmp_path / "shard.tsv"
    bad_shard.write_text("video_id\tpath\tshard\tstatus\na\t/a.mp4\tfirst\tfound\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"shard.tsv:2: invalid shard 'first'"):
        read_video_index(bad_shard)

    bad_status = tmp_path / "status.tsv"
    bad_status.write_text("video_id\tpath\tshard\tstatus\na\t/a.mp4\t0\tgone\n", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid status 'gone'"):
        read_video_index(bad_status)

    short_row = tmp_path / "short.tsv"
    short_row.write_text("video_id\tpath\tshard\tstatus\na\t/a.mp4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected 4 tab-separated fields, found 2"):
        read_video_index(short_row)
