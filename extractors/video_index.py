"""Find the video file of every id of a dataset and assign the ids to shards.

The index is a TSV file (`videos.tsv`) with the columns video_id, path, shard and status
(`found` or `missing`). Shard k contains the ids at positions [k * shard_size, (k + 1) *
shard_size) of all the dataset's ids in sorted order (Python string order), so the shard of
an id does not change when another video goes missing. Missing videos get shard -1 and an
empty path.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from extractors.artifacts import atomic_output

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("video_id", "path", "shard", "status")
FOUND = "found"
MISSING = "missing"

# Characters that would break a TSV row.
_FORBIDDEN = {"\t": "tab", "\n": "newline", "\r": "carriage return"}


@dataclass(frozen=True)
class VideoIndexEntry:
    """One row of the video index: id, file path ("" when missing), shard (-1 when missing)."""

    video_id: str
    path: str
    shard: int
    status: str


def _check_text(kind: str, text: str) -> None:
    if not text:
        raise ValueError(f"invalid {kind}: it is empty")
    for char, name in _FORBIDDEN.items():
        if char in text:
            raise ValueError(
                f"invalid {kind} {text!r}: it contains a {name}, which a TSV index cannot hold"
            )


def find_videos(
    folder: Path, video_ids: Iterable[str], extensions: Sequence[str]
) -> tuple[dict[str, Path], list[str]]:
    """Map each id to the file `<id><extension>` in `folder`, trying `extensions` in order.

    The folder is listed once, not with one file system call per id, which matters for
    10,000+ videos on network storage. Names must match exactly, case included. Returns the found
    ids with their paths, and the missing ids in input order (duplicates removed).

    Raises FileNotFoundError when `folder` does not exist and ValueError when an extension
    does not start with a dot.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} not found (check the dataset's `videos`)")
    for extension in extensions:
        if not extension.startswith("."):
            raise ValueError(f"invalid video extension {extension!r}: it must start with '.'")

    with os.scandir(folder) as entries:
        names = {entry.name for entry in entries if entry.is_file()}

    found: dict[str, Path] = {}
    missing: list[str] = []
    seen: set[str] = set()
    for video_id in video_ids:
        if video_id in seen:
            continue
        seen.add(video_id)
        _check_text("video id", video_id)
        for extension in extensions:
            name = video_id + extension
            if name in names:
                found[video_id] = folder / name
                break
        else:
            missing.append(video_id)
    logger.info("found %d videos in %s, %d missing", len(found), folder, len(missing))
    if missing:
        logger.warning("%d videos not found in %s, e.g. %s", len(missing), folder, missing[:5])
    return found, missing


def shard_ids(video_ids: Iterable[str], shard_size: int) -> list[list[str]]:
    """Cut the sorted, distinct `video_ids` into consecutive groups of `shard_size`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ordered = sorted(set(video_ids))
    return [ordered[start : start + shard_size] for start in range(0, len(ordered), shard_size)]


def write_video_index(
    path: Path, found: Mapping[str, Path], missing: Iterable[str], shard_size: int
) -> None:
    """Write the video index TSV to `path` (through `<path>.tmp`, renamed when complete).

    Rows are in sorted id order. Shards are cut over found and missing ids together, and
    missing ids then get shard -1. Raises ValueError when an id or a path contains a tab or a
    line break, or when an id is both found and missing.
    """
    missing = list(missing)
    both = sorted(set(found) & set(missing))
    if both:
        raise ValueError(f"video ids listed as both found and missing: {both[:5]}")

    shard_of: dict[str, int] = {}
    for shard, ids in enumerate(shard_ids([*found, *missing], shard_size)):
        for video_id in ids:
            shard_of[video_id] = shard

    rows = []
    for video_id in sorted(shard_of):
        _check_text("video id", video_id)
        if video_id in found:
            file_path = str(found[video_id])
            _check_text("video path", file_path)
            rows.append((video_id, file_path, shard_of[video_id], FOUND))
        else:
            rows.append((video_id, "", -1, MISSING))

    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        # csv quotes a field that contains a double quote, so any TSV reader parses it back.
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        writer.writerows(rows)
    logger.info(
        "wrote %s: %d found, %d missing, %d shards of up to %d videos",
        path,
        len(found),
        len(missing),
        len({shard for _, _, shard, _ in rows if shard >= 0}),
        shard_size,
    )


def read_video_index(path: Path) -> list[VideoIndexEntry]:
    """Read a video index written by `write_video_index`.

    Raises ValueError naming the file and line for a wrong header, a row with the wrong
    number of fields, a shard that is not an integer or an unknown status.
    """
    path = Path(path)
    entries = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(header) != INDEX_COLUMNS:
            raise ValueError(f"{path}: invalid header {header}, expected {list(INDEX_COLUMNS)}")
        for row in reader:
            line = reader.line_num
            if len(row) != len(INDEX_COLUMNS):
                raise ValueError(
                    f"{path}:{line}: expected {len(INDEX_COLUMNS)} tab-separated fields, "
                    f"found {len(row)}"
                )
            video_id, file_path, shard_text, status = row
            try:
                shard = int(shard_text)
            except ValueError:
                raise ValueError(f"{path}:{line}: invalid shard {shard_text!r}") from None
            if status not in (FOUND, MISSING):
                raise ValueError(
                    f"{path}:{line}: invalid status {status!r}, expected {FOUND} or {MISSING}"
                )
            entries.append(VideoIndexEntry(video_id, file_path, shard, status))
    return entries
