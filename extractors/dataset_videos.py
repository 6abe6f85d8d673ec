"""Video ids named by a dataset's annotation files, read without parsing the annotations.

The workflow calls this while it builds the job graph, so it reads only the field that
holds the video id and imports nothing heavy.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path


def _charades_sta_ids(path: Path) -> set[str]:
    """Read the ids of `VIDEO START END##SENTENCE` lines; blank lines are skipped.

    Raises ValueError naming the file and line when a line lacks `##` or has other than
    three fields before it (an id with a space cannot be separated from its times), so the
    workflow stops before any extraction rather than in training.
    """
    ids = set()
    with path.open(encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            head, separator, _ = line.strip().partition("##")
            fields = head.split()
            if not separator or len(fields) != 3:
                raise ValueError(
                    f"{path}:{line_number}: expected 'VIDEO START END##SENTENCE', got {line.strip()!r}"
                )
            ids.add(fields[0])
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
