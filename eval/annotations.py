"""Readers of the temporal sentence localization annotation formats.

Every reader returns a list of `Query` records and a `ReadReport` with the counts of what it
kept, clipped and dropped. The same conventions hold for every format:

- Durations (seconds) come from the dataset's metadata when it has them (the `length` column
  of Charades_v1_*.csv, the `duration` field of ActivityNet Captions), else from the
  `probe_durations` mapping that the caller filled by probing the video files. A query whose
  video has neither is dropped with the reason "missing duration".
- A span whose start is greater than its end in the file is dropped, never swapped.
- Ground-truth spans are clipped to [0, duration]. A span that is empty after clipping
  (start >= end) is dropped; this includes zero-length spans in the file.
- A query whose sentence is empty after stripping whitespace is dropped.
- With `on_invalid="skip"` such queries are dropped, counted in the log and listed with their
  reasons in the report. With `on_invalid="fail"` the first one raises ValueError naming the
  file, the line or query and the reason. A line that does not follow the file format at all always
  raises ValueError.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ON_INVALID_CHOICES = ("skip", "fail")
ACTIVITYNET_SPLITS = ("train", "val_1", "val_2", "merged")
# Dropped entries named one by one in the log; the rest are only counted there.
_LOGGED_DROPS = 5


@dataclass(frozen=True)
class Query:
    """One sentence with its ground-truth span in one video.

    `query_id` is stable across runs: `<video>#<line>` (1-based line number) for Charades-STA,
    `<video>#<index>` (0-based position among the video's sentences, the files of a merged
    split counted in the order given) for ActivityNet Captions. `start` and `end` are seconds
    after clipping to [0, duration], with start < end. `duration` is the video's length (s).
    """

    query_id: str
    video_id: str
    start: float
    end: float
    sentence: str
    duration: float


@dataclass
class ReadReport:
    """Counts of one read of an annotation file (or of the files of a merged split).

    `lines`: annotation entries read (text lines for Charades-STA, timestamp/sentence pairs
    for ActivityNet Captions). `queries`: entries kept. `videos`: distinct video ids among the
    entries read; `videos_with_queries`: among the kept ones. `clipped`: kept queries whose span
    was changed by clipping to [0, duration]. `dropped`: entries not kept, each listed in
    `dropped_entries` as (query id, reason). `durations_from_metadata`, `durations_probed`
    and `durations_from_annotation_end` count videos by the source of their duration; the
    last is for videos with neither metadata nor a probed file (missing or undecodable),
    whose latest annotated end time is used instead.
    """

    lines: int = 0
    queries: int = 0
    videos: int = 0
    videos_with_queries: int = 0
    clipped: int = 0
    dropped: int = 0
    durations_from_metadata: int = 0
    durations_probed: int = 0
    durations_from_annotation_end: int = 0
    dropped_entries: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready values (dropped entries as [id, reason] lists)."""
        return {
            "lines": self.lines,
            "queries": self.queries,
            "videos": self.videos,
            "videos_with_queries": self.videos_with_queries,
            "clipped": self.clipped,
            "dropped": self.dropped,
            "durations_from_metadata": self.durations_from_metadata,
            "durations_probed": self.durations_probed,
            "durations_from_annotation_end": self.durations_from_annotation_end,
            "dropped_entries": [list(entry) for entry in self.dropped_entries],
        }


class _QueryCollector:
    """Applies the clipping and dropping conventions and fills a ReadReport."""

    def __init__(self, source: str, on_invalid: str) -> None:
        if on_invalid not in ON_INVALID_CHOICES:
            raise ValueError(f"invalid on_invalid {on_invalid!r}: expected skip or fail")
        self.source = source
        self.on_invalid = on_invalid
        self.report = ReadReport()
        self.queries: list[Query] = []
        self._videos: set[str] = set()

    def add(
        self,
        query_id: str,
        video_id: str,
        start: float,
        end: float,
        sentence: str,
        duration: float | None,
    ) -> None:
        self.report.lines += 1
        self._videos.add(video_id)

        sentence = sentence.strip()
        if duration is None:
            self._drop(query_id, "missing duration")
            return
        if not math.isfinite(duration) or duration <= 0:
            self._drop(query_id, f"invalid duration {duration!r} s")
            return
        if not (math.isfinite(start) and math.isfinite(end)):
            self._drop(query_id, f"non-finite time: start {start!r}, end {end!r}")
            return
        if not sentence:
            self._drop(query_id, "empty sentence")
            return
        if start > end:
            self._drop(query_id, f"start {start:g} > end {end:g}")
            return

        clipped_start = min(max(start, 0.0), duration)
        clipped_end = min(max(end, 0.0), duration)
        if clipped_start >= clipped_end:
            self._drop(
                query_id,
                f"span [{start:g}, {end:g}] is empty after clipping to [0, {duration:g}]",
            )
            return
        if clipped_start != start or clipped_end != end:
            self.report.clipped += 1

        self.queries.append(
            Query(
                query_id=query_id,
                video_id=video_id,
                start=clipped_start,
                end=clipped_end,
                sentence=sentence,
                duration=duration,
            )
        )

    def _drop(self, query_id: str, reason: str) -> None:
        if self.on_invalid == "fail":
            raise ValueError(f"{self.source}: query {query_id}: {reason}")
        self.report.dropped += 1
        self.report.dropped_entries.append((query_id, reason))

    def finish(self) -> tuple[list[Query], ReadReport]:
        report = self.report
        report.queries = len(self.queries)
        report.videos = len(self._videos)
        report.videos_with_queries = len({query.video_id for query in self.queries})

        logger.info(
            "%s: %d entries, %d videos, %d queries kept, %d clipped to [0, duration], "
            "%d dropped; durations of %d videos from metadata, %d probed",
            self.source,
            report.lines,
            report.videos,
            report.queries,
            report.clipped,
            report.dropped,
            report.durations_from_metadata,
            report.durations_probed,
        )
        if report.dropped:
            examples = "; ".join(
                f"{query_id}: {reason}"
                for query_id, reason in report.dropped_entries[:_LOGGED_DROPS]
            )
            more = report.dropped - min(report.dropped, _LOGGED_DROPS)
            suffix = f" and {more} more" if more else ""
            logger.warning("%s: dropped %s%s", self.source, examples, suffix)
        return self.queries, report


def _parse_float(text: str, where: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {name} {text!r} is not a number") from None


def split_charades_sta_line(line: str, where: str) -> tuple[str, str, str, str]:
    """Split a stripped, non-blank `VIDEO START END##SENTENCE` line into its four texts.

    Raises ValueError naming `where` (file and line) when the line lacks `##` or has other
    than three fields before it. A video id with a space is such a line.
    """
    head, separator, sentence = line.partition("##")
    fields = head.split()
    if not separator or len(fields) != 3:
        raise ValueError(f"{where}: expected 'VIDEO START END##SENTENCE', got {line!r}")

    video_id, start_text, end_text = fields
    return video_id, start_text, end_text, sentence


def read_charades_durations(csv_path: Path | str) -> dict[str, float]:
    """Read video durations (s) from a CSV with the columns `id` and `length`.

    Accepts the Charades_v1_train.csv / Charades_v1_test.csv release files (other columns are
    ignored) and the two-column `id,length` file that the demo generator writes. Rows with a
    length that is not a positive finite number are left out with a warning, so their queries
    are later dropped as "missing duration". Raises ValueError naming the file when a column
    is missing, a length is not a number or an id repeats with another length.
    """
    csv_path = Path(csv_path)
    durations: dict[str, float] = {}
    invalid: list[str] = []

    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [name for name in ("id", "length") if name not in columns]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; expected a CSV with the "
                f"columns id and length (s), found {columns}"
            )

        for row_number, row in enumerate(reader, start=2):
            where = f"{csv_path}:{row_number}"
            video_id = (row["id"] or "").strip()
            if not video_id:
                raise ValueError(f"{where}: empty id")
            length = _parse_float((row["length"] or "").strip(), where, "length")
            if not math.isfinite(length) or length <= 0:
                invalid.append(video_id)
                continue
            previous = durations.get(video_id)
            if previous is not None and previous != length:
                raise ValueError(
                    f"{where}: id {video_id} repeats with length {length:g} s "
                    f"(earlier {previous:g} s)"
                )
            durations[video_id] = length

    if invalid:
        logger.warning(
            "%s: %d rows without a positive length left out (first: %s)",
            csv_path,
            len(invalid),
            ", ".join(invalid[:_LOGGED_DROPS]),
        )
    logger.info("%s: durations of %d videos", csv_path, len(durations))
    return durations


def _resolve_duration(
    video_id: str,
    metadata: Mapping[str, float] | None,
    probe_durations: Mapping[str, float] | None,
    sources: dict[str, str],
) -> float | None:
    """Return the duration of `video_id`, metadata first, and record its source once."""
    duration: float | None = None
    source = "missing"
    if metadata is not None and metadata.get(video_id) is not None:
        duration = float(metadata[video_id])
        source = "metadata"
    elif probe_durations is not None and probe_durations.get(video_id) is not None:
        duration = float(probe_durations[video_id])
        source = "probed"
    sources.setdefault(video_id, source)
    return duration


def _count_duration_sources(report: ReadReport, sources: Mapping[str, str]) -> None:
    values = list(sources.values())
    report.durations_from_metadata = values.count("metadata")
    report.durations_probed = values.count("probed")


def read_charades_sta(
    path: Path | str,
    durations: Mapping[str, float],
    *,
    probe_durations: Mapping[str, float] | None = None,
    on_invalid: str = "skip",
) -> tuple[list[Query], ReadReport]:
    """Read a Charades-STA file of lines `VIDEO START END##SENTENCE` (times in seconds).

    `durations` holds the metadata durations (s), usually from `read_charades_durations`;
    `probe_durations` is the fallback for videos it lacks. Blank lines are skipped and not
    counted. Query ids are `<video>#<line number>`. Raises ValueError naming the file and
    line when a line does not follow the format.
    """
    path = Path(path)
    collector = _QueryCollector(str(path), on_invalid)
    sources: dict[str, str] = {}

    with path.open(encoding="utf-8") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            line = raw_line.strip()
            if not line:
                continue
            where = f"{path}:{line_number}"
            video_id, start_text, end_text, sentence = split_charades_sta_line(line, where)
            start = _parse_float(start_text, where, "start")
            end = _parse_float(end_text, where, "end")
            duration = _resolve_duration(video_id, durations, probe_durations, sources)
            collector.add(f"{video_id}#{line_number}", video_id, start, end, sentence, duration)

    _count_duration_sources(collector.report, sources)
    return collector.finish()


def _load_activitynet_file(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object {{video: {{duration, timestamps, sentences}}}}, "
            f"got {type(data).__name__}"
        )
    return data


def _activitynet_segments(path: Path, video_id: str, entry: Any) -> list[tuple[Any, Any]]:
    """Return the (timestamp, sentence) pairs of one video entry, checking its structure."""
    where = f"{path}: video {video_id}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    timestamps = entry.get("timestamps")
    sentences = entry.get("sentences")
    if not isinstance(timestamps, list) or not isinstance(sentences, list):
        raise ValueError(f"{where}: 'timestamps' and 'sentences' must both be lists")
    if len(timestamps) != len(sentences):
        raise ValueError(
            f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences"
        )
    for index, (span, sentence) in enumerate(zip(timestamps, sentences)):
        if not (isinstance(span, list) and len(span) == 2):
            raise ValueError(f"{where}: timestamp {index} is {span!r}, expected [start, end]")
        if not all(isinstance(value, (int, float)) for value in span):
            raise ValueError(f"{where}: timestamp {index} {span!r} is not numeric")
        if not isinstance(sentence, str):
            raise ValueError(f"{where}: sentence {index} is not a string")
    return list(zip(timestamps, sentences))


def read_activitynet_captions(
    paths: Sequence[Path | str],
    *,
    probe_durations: Mapping[str, float] | None = None,
    on_invalid: str = "skip",
) -> tuple[list[Query], ReadReport]:
    """Read ActivityNet Captions JSON files `{video: {duration, timestamps, sentences}}`.

    Several files (the `merged` protocol: val_1 and val_2) are joined per video, the
    sentences of each file following those of the files before it. A video's duration is
    the `duration` of the first file that has one (a disagreeing later file is logged), else
    `probe_durations[video]`. Sentences are stripped of surrounding whitespace. Query ids are
    `<video>#<index>` over the joined sentences of the video. Raises ValueError naming the
    file when it is not valid JSON or a video entry does not have this structure.
    """
    if not paths:
        raise ValueError("read_activitynet_captions needs at least one annotation file")
    paths = [Path(path) for path in paths]
    source = " + ".join(str(path) for path in paths)

    durations: dict[str, float] = {}
    segments: dict[str, list[tuple[Any, Any]]] = {}
    disagreements: list[str] = []
    for path in paths:
        for video_id, entry in _load_activitynet_file(path).items():
            pairs = _activitynet_segments(path, video_id, entry)
            segments.setdefault(video_id, []).extend(pairs)
            duration = entry.get("duration")
            if duration is None:
                continue
            if not isinstance(duration, (int, float)):
                raise ValueError(f"{path}: video {video_id}: duration {duration!r} is not a number")
            if video_id not in durations:
                durations[video_id] = float(duration)
            elif durations[video_id] != float(duration):
                disagreements.append(video_id)
    if disagreements:
        logger.warning(
            "%s: %d videos have different durations in different files; the first file's "
            "value is used (first: %s)",
            source,
            len(disagreements),
            ", ".join(disagreements[:_LOGGED_DROPS]),
        )

    collector = _QueryCollector(source, on_invalid)
    sources: dict[str, str] = {}
    for video_id, pairs in segments.items():
        duration = _resolve_duration(video_id, durations, probe_durations, sources)
        for index, ((start, end), sentence) in enumerate(pairs):
            collector.add(
                f"{video_id}#{index}", video_id, float(start), float(end), sentence, duration
            )

    _count_duration_sources(collector.report, sources)
    return collector.finish()


def activitynet_split_files(annotations: Mapping[str, Path | str], split: str) -> list[Path]:
    """Return the annotation files of an ActivityNet Captions split.

    `annotations` maps train, val_1 and val_2 to their JSON files (the dataset's
    `annotations` config entry). `split` is train, val_1, val_2 or merged (val_1 and val_2
    joined per video, the protocol of CBP).
    """
    if split not in ACTIVITYNET_SPLITS:
        raise ValueError(
            f"invalid ActivityNet Captions split {split!r}: expected one of "
            f"{', '.join(ACTIVITYNET_SPLITS)}"
        )
    keys = ["val_1", "val_2"] if split == "merged" else [split]
    missing = [key for key in keys if key not in annotations]
    if missing:
        raise ValueError(
            f"split {split} needs the annotation file(s) {', '.join(missing)}, which are not "
            f"set; annotations has {sorted(annotations)}"
        )
    return [Path(annotations[key]) for key in keys]
