"""Readers of the video captioning annotation formats: MSVD, MSR-VTT and caption JSON files.

Every reader returns `{video_id: CaptionVideo}` and a `CaptionReadReport` with the counts of
what it read, kept and dropped. The same cleaning holds for every format (`clean_caption`):
byte-order marks (U+FEFF) are removed wherever they occur, every run of whitespace, line
breaks included, becomes one space, and surrounding space is stripped. A caption that is
empty after cleaning is dropped and counted. A file that does not follow its format raises
ValueError naming the file and the reason.

Formats:

- MSVD, the "MSR Video Description Corpus" CSV (`read_msvd_corpus`): columns VideoID, Start,
  End, WorkerID, Source, AnnotationTime, Language, Description, optionally after a leading
  unnamed index column. Only rows whose Language is English are read. A clip's id is
  `<VideoID>_<Start>_<End>`, the file stem of YouTubeClips/<VideoID>_<Start>_<End>.avi. The
  optional `youtube_mapping.txt` (lines `<VideoID>_<Start>_<End> vidN`) gives each clip its
  number N, which orders the clips for the split by video order. Clips of the CSV absent
  from the mapping are dropped and counted, because the mapping lists the 1,970 clips of
  the released YouTubeClips archive.
- MSR-VTT 2016, `train_val_videodatainfo.json` and `test_videodatainfo.json`
  (`read_msrvtt_videodatainfo`): `videos` entries with `video_id`, `id` and `split`
  (train, validate or test) and `sentences` entries with `video_id` and `caption`. The file
  may be given as a zip archive holding one `.json` member.
- Caption JSON (`read_caption_json`): `{video_id: {sentence_id: caption}}` (the layout of the
  MSR-VTT validation captions published with SGN) or `{video_id: [caption, ...]}`. It has
  no split field.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CAPTION_FORMATS = ("msvd", "msrvtt", "caption_json")
MSVD_COLUMNS = ("VideoID", "Start", "End", "Language", "Description")
# MSR-VTT `split` values mapped to the split names used everywhere else.
MSRVTT_SPLITS = {"train": "train", "validate": "validation", "test": "test"}
_BYTE_ORDER_MARK = "\ufeff"
_MAPPING_NUMBER = re.compile(r"^vid(\d+)$")


def clean_caption(text: str) -> str:
    """Remove byte-order marks, collapse whitespace (line breaks included) and strip."""
    return " ".join(text.replace(_BYTE_ORDER_MARK, "").split())


@dataclass(frozen=True)
class CaptionVideo:
    """The captions of one video (an MSVD clip or an MSR-VTT video).

    video_id: MSVD `<VideoID>_<Start>_<End>`, MSR-VTT `videoN`, or the key of a caption JSON.
    captions: cleaned, non-empty captions in file order.
    order: position of the video in its dataset's standard order: MSVD mapping number N of
        `vidN`, MSR-VTT `id`; None when the file does not give one.
    split: `train`, `validation` or `test` from MSR-VTT's `split` field; None otherwise.
    source_id: MSVD YouTube VideoID of the clip; None for other formats.
    """

    video_id: str
    captions: tuple[str, ...]
    order: int | None = None
    split: str | None = None
    source_id: str | None = None


@dataclass
class CaptionReadReport:
    """Counts of one read of a caption annotation file.

    rows: caption entries read (English rows for MSVD). captions: entries kept. videos:
    videos with at least one kept caption. empty_dropped: captions empty after cleaning.
    other_language_skipped: MSVD rows in another language than English. unmapped_clips:
    MSVD clips absent from the mapping, dropped with their captions (unmapped_captions).
    videos_without_captions: MSR-VTT videos listed with no sentence.
    """

    source: str = ""
    rows: int = 0
    captions: int = 0
    videos: int = 0
    empty_dropped: int = 0
    other_language_skipped: int = 0
    unmapped_clips: list[str] = field(default_factory=list)
    unmapped_captions: int = 0
    videos_without_captions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values."""
        return {
            "source": self.source,
            "rows": self.rows,
            "captions": self.captions,
            "videos": self.videos,
            "empty_dropped": self.empty_dropped,
            "other_language_skipped": self.other_language_skipped,
            "unmapped_clips": len(self.unmapped_clips),
            "unmapped_captions": self.unmapped_captions,
            "videos_without_captions": list(self.videos_without_captions),
        }


class _CaptionCollector:
    """Cleans captions, groups them by video and fills a CaptionReadReport."""

    def __init__(self, source: Path | str) -> None:
        self.report = CaptionReadReport(source=str(source))
        self.captions: dict[str, list[str]] = {}

    def add(self, video_id: str, caption: Any, where: str) -> None:
        if not isinstance(caption, str):
            raise ValueError(f"{self.report.source}: {where}: caption is not a string: {caption!r}")
        self.report.rows += 1
        cleaned = clean_caption(caption)
        if not cleaned:
            self.report.empty_dropped += 1
            return
        self.captions.setdefault(video_id, []).append(cleaned)
        self.report.captions += 1

    def finish(self, build: Any) -> dict[str, CaptionVideo]:
        """Turn the grouped captions into CaptionVideo records with `build(id, captions)`."""
        videos = {video_id: build(video_id, tuple(captions)) for video_id, captions in self.captions.items()}
        self.report.videos = len(videos)
        if self.report.empty_dropped:
            logger.warning(
                "%s: %d empty captions dropped", self.report.source, self.report.empty_dropped
            )
        logger.info(
            "%s: %d captions of %d videos", self.report.source, self.report.captions, self.report.videos
        )
        return videos


def read_msvd_mapping(path: Path | str) -> dict[str, int]:
    """Read youtube_mapping.txt: clip id `<VideoID>_<Start>_<End>` -> number N of `vidN`.

    Raises ValueError naming the file and line for a line that is not `<clip id> vidN`, and
    for a clip or a number that occurs twice.
    """
    path = Path(path)
    mapping: dict[str, int] = {}
    numbers: dict[int, str] = {}
    with path.open(encoding="utf-8-sig") as lines:
        for line_number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            match = _MAPPING_NUMBER.match(fields[1]) if len(fields) == 2 else None
            if match is None:
                raise ValueError(
                    f"{path}:{line_number}: expected '<VideoID>_<Start>_<End> vidN', got {line.strip()!r}"
                )
            clip, number = fields[0], int(match.group(1))
            if clip in mapping:
                raise ValueError(f"{path}:{line_number}: clip {clip} is mapped twice")
            if number in numbers:
                raise ValueError(
                    f"{path}:{line_number}: vid{number} is given to {numbers[number]} and {clip}"
                )
            mapping[clip] = number
            numbers[number] = clip
    return mapping


def read_msvd_corpus(
    csv_path: Path | str, mapping_path: Path | str | None = None
) -> tuple[dict[str, CaptionVideo], CaptionReadReport]:
    """Read the English captions of the MSVD corpus CSV, one record per clip.

    With `mapping_path`, each clip gets its mapping number as `order`, and clips absent from
    the mapping are dropped and counted. Raises ValueError naming the file when a required
    column is missing.
    """
    csv_path = Path(csv_path)
    mapping = read_msvd_mapping(mapping_path) if mapping_path is not None else None
    collector = _CaptionCollector(csv_path)
    source_ids: dict[str, str] = {}
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [column for column in MSVD_COLUMNS if column not in columns]
        if missing:
            raise ValueError(
                f"{csv_path}: not an MSVD corpus CSV, missing column(s) {missing} (columns: {columns})"
            )
        # The header is line 1; DictReader yields one row per record, and a quoted caption
        # may span lines, so the record number is what errors name.
        for record, row in enumerate(reader, start=1):
            if row["Language"] != "English":
                collector.report.other_language_skipped += 1
                continue
            video, start, end = row["VideoID"], row["Start"], row["End"]
            if not video or not start or not end:
                raise ValueError(
                    f"{csv_path}: record {record}: VideoID, Start and End must be set, "
                    f"got {video!r}, {start!r}, {end!r}"
                )
            clip = f"{video}_{start}_{end}"
            source_ids[clip] = video
            collector.add(clip, row["Description"] or "", f"record {record}")

    report = collector.report
    if mapping is not None:
        unmapped = sorted(clip for clip in collector.captions if clip not in mapping)
        for clip in unmapped:
            report.unmapped_captions += len(collector.captions.pop(clip))
        report.captions -= report.unmapped_captions
        report.unmapped_clips = unmapped
        if unmapped:
            logger.warning(
                "%s: %d clips (%d captions) are not in %s and are dropped (first: %s)",
                csv_path,
                len(unmapped),
                report.unmapped_captions,
                mapping_path,
                ", ".join(unmapped[:5]),
            )

    def build(clip: str, captions: tuple[str, ...]) -> CaptionVideo:
        order = mapping[clip] if mapping is not None else None
        return CaptionVideo(clip, captions, order=order, source_id=source_ids[clip])

    return collector.finish(build), report


def load_json_document(path: Path | str) -> Any:
    """Load a JSON file, or the single `.json` member of a zip archive.

    Raises ValueError naming the file when the archive does not hold exactly one `.json`
    member or the text is not valid JSON.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [name for name in archive.namelist() if name.endswith(".json")]
                if len(members) != 1:
                    raise ValueError(f"{path}: expected one .json member in the zip archive, found {members}")
                return json.loads(archive.read(members[0]).decode("utf-8-sig"))
        with path.open(encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from None


def _msrvtt_videos(path: Path, document: Any) -> dict[str, tuple[int | None, str]]:
    if not isinstance(document, Mapping) or not isinstance(document.get("videos"), list):
        raise ValueError(f"{path}: not an MSR-VTT videodatainfo file (no 'videos' list)")
    if not isinstance(document.get("sentences"), list):
        raise ValueError(f"{path}: not an MSR-VTT videodatainfo file (no 'sentences' list)")
    videos: dict[str, tuple[int | None, str]] = {}
    for position, entry in enumerate(document["videos"]):
        if not isinstance(entry, Mapping) or "video_id" not in entry or "split" not in entry:
            raise ValueError(f"{path}: videos[{position}] lacks 'video_id' or 'split': {entry!r}")
        split = MSRVTT_SPLITS.get(entry["split"])
        if split is None:
            raise ValueError(
                f"{path}: video {entry['video_id']} has split {entry['split']!r}; "
                f"expected one of {sorted(MSRVTT_SPLITS)}"
            )
        order = entry.get("id")
        videos[str(entry["video_id"])] = (int(order) if order is not None else None, split)
    return videos


def read_msrvtt_videodatainfo(
    paths: Path | str | Iterable[Path | str],
) -> tuple[dict[str, CaptionVideo], CaptionReadReport]:
    """Read one or more MSR-VTT `*_videodatainfo.json` files (plain or zipped).

    Each video keeps its `split` (validate is renamed validation) and its `id` as order.
    Raises ValueError naming the file for a sentence of a video the file does not list, and
    for a video listed by two files with different splits.
    """
    path_list = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(path) for path in paths]
    if not path_list:
        raise ValueError("no MSR-VTT videodatainfo file given")
    videos: dict[str, tuple[int | None, str]] = {}
    collector = _CaptionCollector(", ".join(str(path) for path in path_list))
    for path in path_list:
        document = load_json_document(path)
        listed = _msrvtt_videos(path, document)
        for video_id, value in listed.items():
            if video_id in videos and videos[video_id][1] != value[1]:
                raise ValueError(
                    f"{path}: video {video_id} has split {value[1]}, another file gives {videos[video_id][1]}"
                )
            videos[video_id] = value
        for position, sentence in enumerate(document["sentences"]):
            if not isinstance(sentence, Mapping) or "video_id" not in sentence or "caption" not in sentence:
                raise ValueError(f"{path}: sentences[{position}] lacks 'video_id' or 'caption': {sentence!r}")
            video_id = str(sentence["video_id"])
            if video_id not in listed:
                raise ValueError(f"{path}: sentences[{position}] names video {video_id}, which the file does not list")
            collector.add(video_id, sentence["caption"], f"sentences[{position}]")

    report = collector.report
    report.videos_without_captions = sorted(set(videos) - set(collector.captions))
    if report.videos_without_captions:
        logger.warning(
            "%s: %d listed videos have no caption (first: %s)",
            report.source,
            len(report.videos_without_captions),
            ", ".join(report.videos_without_captions[:5]),
        )

    def build(video_id: str, captions: tuple[str, ...]) -> CaptionVideo:
        order, split = videos[video_id]
        return CaptionVideo(video_id, captions, order=order, split=split)

    return collector.finish(build), report


def read_caption_json(path: Path | str) -> tuple[dict[str, CaptionVideo], CaptionReadReport]:
    """Read `{video_id: {sentence_id: caption}}` or `{video_id: [caption, ...]}` (plain or zipped).

    The captions of a video keep the file's order. Raises ValueError naming the file and the
    video when a value is neither a mapping nor a list of captions.
    """
    path = Path(path)
    document = load_json_document(path)
    if not isinstance(document, Mapping):
        raise ValueError(f"{path}: expected a JSON object of videos, got {type(document).__name__}")
    collector = _CaptionCollector(path)
    for video_id, value in document.items():
        if isinstance(value, Mapping):
            for sentence_id, caption in value.items():
                collector.add(str(video_id), caption, f"video {video_id} sentence {sentence_id}")
        elif isinstance(value, list):
            for position, caption in enumerate(value):
                collector.add(str(video_id), caption, f"video {video_id} caption {position}")
        else:
            raise ValueError(
                f"{path}: video {video_id}: expected a mapping of sentence ids to captions or a list "
                f"of captions, got {type(value).__name__}"
            )
    return collector.finish(lambda video_id, captions: CaptionVideo(video_id, captions)), collector.report


def detect_caption_format(path: Path | str) -> str:
    """Guess the format of a caption annotation file: msvd, msrvtt or caption_json.

    A `.csv` file is MSVD; a JSON document (plain or zipped) with `videos` and `sentences`
    lists is MSR-VTT; any other JSON object is a caption JSON.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "msvd"
    document = load_json_document(path)
    if isinstance(document, Mapping) and isinstance(document.get("sentences"), list):
        return "msrvtt"
    return "caption_json"


def read_caption_references(
    path: Path | str, annotation_format: str = "auto", mapping_path: Path | str | None = None
) -> tuple[dict[str, CaptionVideo], CaptionReadReport]:
    """Read a caption annotation file of any supported format (`auto` detects it).

    `mapping_path` (youtube_mapping.txt) applies to the msvd format only.
    """
    if annotation_format == "auto":
        annotation_format = detect_caption_format(path)
    if annotation_format not in CAPTION_FORMATS:
        raise ValueError(
            f"unknown caption format {annotation_format!r}: expected auto or one of {', '.join(CAPTION_FORMATS)}"
        )
    if mapping_path is not None and annotation_format != "msvd":
        raise ValueError(f"a mapping file applies to the msvd format only, not {annotation_format}")
    if annotation_format == "msvd":
        return read_msvd_corpus(path, mapping_path)
    if annotation_format == "msrvtt":
        return read_msrvtt_videodatainfo(path)
    return read_caption_json(path)
