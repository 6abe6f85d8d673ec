"""Video ids named by a dataset's annotation files, read without building queries.

The workflow calls this while it builds the job graph, so it imports nothing heavy: the
Charades-STA line check comes from `eval.annotations`, which uses the standard library only.
"""
from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

from eval.annotations import split_charades_sta_line


def _charades_sta_ids(path: Path) -> set[str]:
    """Read the ids of `VIDEO START END##SENTENCE` lines, skipping blank lines.

    A malformed line raises ValueError naming the file and line. The workflow reads these ids
    while it builds the job graph, so such a line stops it before any extraction.
    """
    ids = set()
    with path.open(encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                video_id, _, _, _ = split_charades_sta_line(line.strip(), f"{path}:{line_number}")
                ids.add(video_id)
    return ids


def _activitynet_ids(path: Path) -> set[str]:
    with path.open(encoding="utf-8") as handle:
        return set(json.load(handle))


def _msvd_ids(path: Path) -> set[str]:
    """Read `<YouTubeID>_<start>_<end>` ids from youtube_mapping.txt or the corpus CSV."""
    if path.suffix == ".txt":
        with path.open(encoding="utf-8-sig") as lines:
            return {line.split()[0] for line in lines if line.strip()}

    ids = set()
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Language", "English") == "English":
                ids.add(f"{row['VideoID']}_{row['Start']}_{row['End']}")
    return ids


def _load_json_maybe_zipped(path: Path) -> dict:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith(".json")]
            if len(names) != 1:
                raise ValueError(f"{path}: expected one .json member, found {names}")
            return json.loads(archive.read(names[0]).decode("utf-8"))
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _msrvtt_ids(path: Path) -> set[str]:
    return {video["video_id"] for video in _load_json_maybe_zipped(path)["videos"]}


_READERS = {
    "charades_sta": _charades_sta_ids,
    "activitynet_captions": _activitynet_ids,
    "msvd": _msvd_ids,
    "msrvtt": _msrvtt_ids,
}

# Annotation keys that do not name videos (MSVD's corpus CSV and mapping name the same clips).
_SKIPPED_KEYS = {"msvd": {"corpus"}}


def annotation_video_ids(annotation_format: str, annotations: Mapping[str, Path | str]) -> list[str]:
    """Return the sorted ids of every video named by any annotation file of a dataset.

    `annotations` maps split names (as in config.yaml) to files.
    """
    if annotation_format not in _READERS:
        raise ValueError(
            f"unknown annotation format {annotation_format!r}: expected one of {sorted(_READERS)}"
        )

    read = _READERS[annotation_format]
    skipped = _SKIPPED_KEYS.get(annotation_format, set())
    ids: set[str] = set()
    for split, path in annotations.items():
        if split not in skipped:
            ids |= read(Path(path))
    return sorted(ids)
