"""Evaluation of temporal sentence localization: recall@1 at IoU thresholds and mean IoU.

Protocol, each point recorded in the `protocol` entry of the metrics:

- IoU is computed on [start, end] in seconds. A hit at threshold m is IoU >= m (rule `ge`,
  the TALL protocol that Charades-STA results follow) or IoU > m (rule `gt`). Comparisons are
  exact on float64, with no tolerance.
- Ground truth comes from `eval.annotations`, already clipped to [0, duration].
- A prediction with start > end is invalid and raises ValueError naming the query, unless
  `order_spans` is set, which swaps the two times and counts the prediction.
- Predicted spans are clipped to [0, duration] of their video before the IoU and counted.
- A query without a prediction (its video missing, failed or skipped) is a miss with IoU 0.
  It stays in the denominator of every metric, and the metrics state how many there were.
- The random baseline draws, per query and trial, two times uniformly in [0, duration] and
  takes them in order as the span. Its metrics are averaged over all queries and trials.

Predictions file (JSON): `{"queries": [{"query_id", "video_id", "start", "end", ...}], ...}`.
Keys other than those four are ignored, and top-level keys other than `queries` are copied
into `protocol["predictions_metadata"]`.

Command line: `python -m eval.localization --help`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.annotations import (
    ACTIVITYNET_SPLITS,
    Query,
    ReadReport,
    activitynet_split_files,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
)

logger = logging.getLogger(__name__)

IOU_RULES = ("ge", "gt")
ANNOTATION_FORMATS = ("charades_sta", "activitynet_captions")
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of the `evaluation` config section.

    `iou_thresholds`: IoU thresholds of recall@1, each in (0, 1]. `iou_rule`: `ge` or `gt`.
    `random_trials`: random segments drawn per query for the baseline. `order_spans`: swap
    predicted spans with start > end instead of rejecting them.
    """

    iou_thresholds: tuple[float, ...]
    iou_rule: str
    random_trials: int
    order_spans: bool = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> EvaluationConfig:
        """Build the settings from the `evaluation` mapping of config.yaml."""
        config = cls(
            iou_thresholds=tuple(float(value) for value in section["iou_thresholds"]),
            iou_rule=str(section["iou_rule"]),
            random_trials=int(section["random_trials"]),
            order_spans=bool(section.get("order_spans", False)),
        )
        _check_settings(config.iou_thresholds, config.iou_rule, config.random_trials)
        return config


def _check_settings(thresholds: Sequence[float], rule: str, trials: int | None = None) -> None:
    if rule not in IOU_RULES:
        raise ValueError(f"invalid IoU rule {rule!r}: expected ge (IoU >= m) or gt (IoU > m)")
    if not thresholds:
        raise ValueError("at least one IoU threshold is needed")
    for threshold in thresholds:
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"invalid IoU threshold {threshold!r}: expected a value in (0, 1]")
    if trials is not None and trials < 1:
        raise ValueError(f"random_trials must be >= 1, got {trials}")


def threshold_key(threshold: float) -> str:
    """Return the metrics key of an IoU threshold, e.g. 0.3 -> "0.3"."""
    return repr(float(threshold))


def _as_spans(spans: Any, name: str) -> np.ndarray:
    array = np.asarray(spans, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (Q, 2), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains non-finite times")
    reversed_rows = np.flatnonzero(array[:, 0] > array[:, 1])
    if reversed_rows.size:
        row = int(reversed_rows[0])
        raise ValueError(
            f"{name} row {row} has start {array[row, 0]:g} > end {array[row, 1]:g} "
            f"({reversed_rows.size} such rows)"
        )
    return array


def temporal_iou(pred: Any, gt: Any) -> np.ndarray:
    """Return the temporal IoU `(Q,)` of spans `pred` and `gt`, both `(Q, 2)` [start, end] s.

    Disjoint spans give 0. Two zero-length spans give 0 (the union is empty). Raises
    ValueError when a span has start > end or the shapes differ.
    """
    pred = _as_spans(pred, "pred")
    gt = _as_spans(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape} but gt has shape {gt.shape}")

    intersection = np.clip(
        np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0]), 0.0, None
    )
    union = (pred[:, 1] - pred[:, 0]) + (gt[:, 1] - gt[:, 0]) - intersection
    iou = np.zeros_like(union)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou


def _hits(ious: np.ndarray, threshold: float, rule: str) -> np.ndarray:
    return ious >= threshold if rule == "ge" else ious > threshold


def recall_at_1(ious: Any, thresholds: Sequence[float], rule: str) -> dict[str, float]:
    """Return recall@1 (percent) per threshold, keyed by `threshold_key`.

    `ious` `(Q,)` contains the IoU of each query's top prediction (0 for a query without one).
    """
    _check_settings(thresholds, rule)
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0:
        raise ValueError("recall@1 of zero queries is undefined")
    return {
        threshold_key(threshold): 100.0 * float(_hits(ious, float(threshold), rule).mean())
        for threshold in thresholds
    }


def mean_iou(ious: Any) -> float:
    """Return the mean IoU of `ious` `(Q,)` in percent."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0:
        raise ValueError("mean IoU of zero queries is undefined")
    return 100.0 * float(ious.mean())


def random_baseline(
    gt: Any,
    durations: Any,
    thresholds: Sequence[float],
    rule: str,
    trials: int,
    seed: int,
) -> dict[str, Any]:
    """Score uniformly random segments against `gt` `(Q, 2)` in videos of `durations` `(Q,)` s.

    Each trial draws, per query, two times uniformly in [0, duration] and orders them. Returns
    `{"recall_at_1": {threshold: percent}, "miou": percent}` averaged over trials and queries.
    The same seed gives the same numbers.
    """
    _check_settings(thresholds, rule, trials)
    gt = _as_spans(gt, "gt")
    durations = np.asarray(durations, dtype=np.float64)
    if durations.shape != (gt.shape[0],):
        raise ValueError(f"durations must have shape ({gt.shape[0]},), got {durations.shape}")
    if gt.shape[0] == 0:
        raise ValueError("the random baseline of zero queries is undefined")

    generator = np.random.default_rng(seed)
    hit_counts = np.zeros(len(thresholds))
    iou_sum = 0.0
    for _ in range(trials):
        times = np.sort(generator.uniform(0.0, 1.0, size=(gt.shape[0], 2)), axis=1)
        ious = temporal_iou(times * durations[:, None], gt)
        iou_sum += float(ious.sum())
        for position, threshold in enumerate(thresholds):
            hit_counts[position] += int(_hits(ious, float(threshold), rule).sum())

    samples = trials * gt.shape[0]
    return {
        "recall_at_1": {
            threshold_key(threshold): 100.0 * hit_counts[position] / samples
            for position, threshold in enumerate(thresholds)
        },
        "miou": 100.0 * iou_sum / samples,
    }


def read_predictions(path: Path | str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a predictions JSON file and return (prediction entries, other top-level keys).

    Raises FileNotFoundError when the file is missing and ValueError naming the file when it
    is not valid JSON, has no `queries` list, or the list is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} not found")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("queries"), list):
        raise ValueError(
            f'{path}: expected {{"queries": [{{"query_id", "video_id", "start", "end"}}]}}'
        )
    entries = data["queries"]
    if not entries:
        raise ValueError(f"{path}: the file contains no predictions (empty 'queries' list)")
    metadata = {key: value for key, value in data.items() if key != "queries"}
    return entries, metadata


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class _MatchedPredictions:
    spans: np.ndarray  # (Q, 2) s, clipped; rows of queries without prediction are unused
    has_prediction: np.ndarray  # (Q,) bool
    clipped: int
    ordered: int


def _match_predictions(
    path: Path, entries: list[Any], queries: Sequence[Query], order_spans: bool
) -> _MatchedPredictions:
    """Check every prediction entry and place its clipped span at its query's row."""
    row_of = {query.query_id: row for row, query in enumerate(queries)}
    spans = np.zeros((len(queries), 2))
    has_prediction = np.zeros(len(queries), dtype=bool)
    clipped = 0
    ordered = 0
    unknown: list[str] = []

    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("query_id"), str):
            raise ValueError(f"{path}: prediction {position} has no string 'query_id'")
        query_id = entry["query_id"]
        row = row_of.get(query_id)
        if row is None:
            unknown.append(query_id)
            continue
        query = queries[row]
        where = f"{path}: query {query_id}"
        if has_prediction[row]:
            raise ValueError(f"{where}: more than one prediction")
        if "video_id" in entry and entry["video_id"] != query.video_id:
            raise ValueError(
                f"{where}: prediction names video {entry['video_id']!r}, the annotation "
                f"names {query.video_id!r}"
            )
        start, end = entry.get("start"), entry.get("end")
        if not (_is_number(start) and _is_number(end)):
            raise ValueError(f"{where}: start {start!r} and end {end!r} must be finite numbers")
        if start > end:
            if not order_spans:
                raise ValueError(
                    f"{where}: invalid prediction, start {start:g} s > end {end:g} s "
                    f"(to swap such spans, pass --order-spans on the command line or set "
                    f"evaluation.order_spans: true in config.yaml)"
                )
            start, end = end, start
            ordered += 1

        clipped_start = min(max(float(start), 0.0), query.duration)
        clipped_end = min(max(float(end), 0.0), query.duration)
        if clipped_start != start or clipped_end != end:
            clipped += 1
        spans[row] = (clipped_start, clipped_end)
        has_prediction[row] = True

    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} predictions name queries that are not in the annotations "
            f"(first: {', '.join(unknown[:5])}); were they made for another split?"
        )
    return _MatchedPredictions(spans, has_prediction, clipped, ordered)


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> dict[str, Any]:
    """Return the commit of the project checkout and whether tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(_PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def evaluate_predictions(
    predictions_path: Path | str,
    queries: Sequence[Query],
    *,
    thresholds: Sequence[float],
    rule: str,
    random_trials: int,
    seed: int,
    missing_videos: Sequence[str] = (),
    protocol: Mapping[str, Any] | None = None,
    order_spans: bool = False,
) -> dict[str, Any]:
    """Score a predictions file against `queries` and return the metrics.json dict.

    Keys: `recall_at_1` {threshold: percent}, `miou` (percent), `random_baseline` (the same
    two keys), `queries_total`, `queries_evaluated` (queries with a prediction), `coverage`
    (evaluated / total), `queries_without_prediction` (scored as misses with IoU 0),
    `missing_videos` (sorted), `queries_on_missing_videos`, `clipped_predictions`,
    `ordered_predictions`, and `protocol`: the entries of `protocol` plus the settings above,
    the predictions file's path and SHA-256, package versions and the git commit.
    """
    _check_settings(thresholds, rule, random_trials)
    predictions_path = Path(predictions_path)
    if not queries:
        raise ValueError(f"no annotated queries to evaluate {predictions_path} against")
    query_ids = [query.query_id for query in queries]
    if len(set(query_ids)) != len(query_ids):
        raise ValueError("query ids of the annotations repeat")

    entries, metadata = read_predictions(predictions_path)
    matched = _match_predictions(predictions_path, entries, queries, order_spans)

    gt = np.array([(query.start, query.end) for query in queries], dtype=np.float64)
    durations = np.array([query.duration for query in queries], dtype=np.float64)
    ious = np.zeros(len(queries))
    rows = matched.has_prediction
    ious[rows] = temporal_iou(matched.spans[rows], gt[rows])

    missing = sorted(set(missing_videos))
    missing_set = set(missing)
    evaluated = int(rows.sum())
    without_prediction = len(queries) - evaluated
    if without_prediction:
        logger.warning(
            "%d of %d queries have no prediction and count as misses with IoU 0",
            without_prediction,
            len(queries),
        )
    if matched.clipped:
        logger.info("%d predictions clipped to [0, duration]", matched.clipped)

    full_protocol: dict[str, Any] = dict(protocol or {})
    full_protocol.update(
        {
            "iou_rule": rule,
            "iou_thresholds": [float(threshold) for threshold in thresholds],
            "random_trials": random_trials,
            "seed": seed,
            "order_spans": order_spans,
            "predictions_file": str(predictions_path),
            "predictions_sha256": _file_sha256(predictions_path),
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "torch": _package_version("torch"),
            },
            **_git_state(),
        }
    )
    if metadata:
        full_protocol["predictions_metadata"] = metadata

    return {
        "recall_at_1": recall_at_1(ious, thresholds, rule),
        "miou": mean_iou(ious),
        "random_baseline": random_baseline(gt, durations, thresholds, rule, random_trials, seed),
        "queries_total": len(queries),
        "queries_evaluated": evaluated,
        "coverage": evaluated / len(queries),
        "queries_without_prediction": without_prediction,
        "missing_videos": missing,
        "queries_on_missing_videos": sum(query.video_id in missing_set for query in queries),
        "clipped_predictions": matched.clipped,
        "ordered_predictions": matched.ordered,
        "protocol": full_protocol,
    }


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Return a text table of the model's and the random baseline's metrics (percent)."""
    rule = metrics.get("protocol", {}).get("iou_rule", "ge")
    comparison = ">=" if rule == "ge" else ">"
    random = metrics["random_baseline"]
    rows = [
        (f"R@1 IoU{comparison}{key}", value, random["recall_at_1"][key])
        for key, value in metrics["recall_at_1"].items()
    ]
    rows.append(("mIoU", metrics["miou"], random["miou"]))

    width = max(len("metric"), *(len(name) for name, _, _ in rows))
    lines = [f"{'metric':<{width}}  {'model':>7}  {'random':>7}"]
    lines += [f"{name:<{width}}  {model:7.2f}  {baseline:7.2f}" for name, model, baseline in rows]
    lines.append(
        f"queries evaluated {metrics['queries_evaluated']} of {metrics['queries_total']} "
        f"(coverage {100.0 * metrics['coverage']:.1f}%), without prediction "
        f"{metrics['queries_without_prediction']}, predictions clipped "
        f"{metrics['clipped_predictions']}, missing videos {len(metrics['missing_videos'])}"
    )
    return "\n".join(lines)


def read_missing_videos(paths: Sequence[Path | str]) -> list[str]:
    """Read video ids from TSV files with a `video_id` column.

    A file with a `status` column (videos.tsv) contributes the rows whose status is not
    `found`; a file without one (failed.tsv) contributes every row.
    """
    missing: set[str] = set()
    for path in map(Path, paths):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            columns = reader.fieldnames or []
            if "video_id" not in columns:
                raise ValueError(f"{path}: missing column video_id (columns: {columns})")
            for row in reader:
                if "status" in columns and row["status"] == "found":
                    continue
                missing.add(row["video_id"])
    return sorted(missing)


def _read_queries(args: argparse.Namespace) -> tuple[list[Query], ReadReport, list[str]]:
    """Read the annotated queries named on the command line; also returns the files used."""
    annotations = [Path(path) for path in args.annotations]
    durations = read_charades_durations(args.durations) if args.durations else None

    if args.format == "charades_sta":
        if len(annotations) != 1 or annotations[0].is_dir():
            raise ValueError("charades_sta needs exactly one annotation file in --annotations")
        if durations is None:
            raise ValueError("charades_sta needs --durations (a CSV with columns id,length)")
        queries, report = read_charades_sta(annotations[0], durations)
        return queries, report, [str(annotations[0])]

    if len(annotations) == 1 and annotations[0].is_dir():
        if args.split is None:
            raise ValueError("--split is needed when --annotations is a folder")
        by_split = {path.stem: path for path in sorted(annotations[0].glob("*.json"))}
        annotations = activitynet_split_files(by_split, args.split)
    elif args.split == "merged" and len(annotations) < 2:
        raise ValueError("--split merged needs the val_1 and val_2 files in --annotations")
    queries, report = read_activitynet_captions(annotations, probe_durations=durations)
    return queries, report, [str(path) for path in annotations]


def _write_json(data: Mapping[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=False, default=str)
            handle.write("\n")
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the evaluator."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.localization",
        description="Score temporal sentence localization predictions: recall@1 at IoU "
        "thresholds and mean IoU, in percent, beside a uniformly random baseline.",
    )
    parser.add_argument("--predictions", required=True, type=Path, metavar="JSON",
                        help='predictions JSON {"queries": [{query_id, video_id, start, end}]}, '
                        "times in seconds. query_id is <video>#<line> (1-based line number) "
                        "for Charades-STA and <video>#<index> (0-based sentence position) for "
                        "ActivityNet Captions")
    parser.add_argument("--annotations", required=True, nargs="+", metavar="PATH",
                        help="annotation file (Charades-STA text); for ActivityNet Captions one "
                        "or more JSON files joined per video, or a folder with train.json, "
                        "val_1.json and val_2.json together with --split")
    parser.add_argument("--format", required=True, choices=ANNOTATION_FORMATS,
                        help="annotation format")
    parser.add_argument("--durations", type=Path, metavar="CSV",
                        help="CSV with columns id and length (s): Charades_v1_*.csv for "
                        "charades_sta (required there); for activitynet_captions the fallback "
                        "for videos without a duration in the JSON")
    parser.add_argument("--split", choices=ACTIVITYNET_SPLITS,
                        help="ActivityNet Captions split; merged joins val_1 and val_2")

    parser.add_argument("--output", required=True, type=Path, metavar="JSON",
                        help="metrics JSON to write")
    parser.add_argument("--iou-rule", choices=IOU_RULES, default="ge",
                        help="a hit is IoU >= threshold (ge) or IoU > threshold (gt); "
                        "default: ge")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                        metavar="IOU",
                        help="IoU thresholds of recall@1, in (0, 1]; default: 0.3 0.5 0.7")
    parser.add_argument("--random-trials", type=int, default=100, metavar="N",
                        help="random segments drawn per query for the baseline; default: 100")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seed of the random baseline; default: 1234")
    parser.add_argument("--order-spans", action="store_true",
                        help="swap predicted spans with start > end instead of rejecting them")
    parser.add_argument("--missing-videos", nargs="*", default=[], type=Path, metavar="TSV",
                        help="TSV files with a video_id column (videos.tsv: rows not found; "
                        "failed.tsv: every row) listed as missing in the metrics")

    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"),
                        help="logging level on stderr; default: INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluator from the command line; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        queries, report, annotation_files = _read_queries(args)
        logger.info("evaluating %d queries", len(queries))
        metrics = evaluate_predictions(
            args.predictions,
            queries,
            thresholds=args.thresholds,
            rule=args.iou_rule,
            random_trials=args.random_trials,
            seed=args.seed,
            missing_videos=read_missing_videos(args.missing_videos),
            order_spans=args.order_spans,
            protocol={
                "format": args.format,
                "split": args.split,
                "annotations": annotation_files,
                "durations": str(args.durations) if args.durations else None,
                "annotation_report": report.to_dict(),
            },
        )
        _write_json(metrics, args.output)
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1

    sys.stdout.write(format_metrics_table(metrics) + "\n")
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
