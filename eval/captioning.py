"""Captioning metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr.

Protocol (the one of the COCO caption evaluation code that MSVD and MSR-VTT results use):

- Predictions and references are tokenized by pycocoevalcap's PTBTokenizer (Stanford
  CoreNLP 3.4.1, lowercased, punctuation tokens removed), all in one Java call.
- Every reference of a video is used.
- Each scorer is called ONCE on the whole split, because CIDEr's document frequencies are
  computed over all the videos scored together: scoring batches separately changes CIDEr.
- BLEU uses the "closest" reference length, as pycocoevalcap's Bleu does. CIDEr is
  pycocoevalcap's Cider (the CIDEr-D formula: Gaussian length penalty with sigma 6, clipped
  n-gram counts). SPICE is left out because it needs a separate download of Stanford CoreNLP.
- `metrics.json` reports every score multiplied by 100.

Inputs are checked before any Java process starts. An empty prediction set, predictions for
video ids without references, empty reference lists and a missing `java` executable raise
an error that names the problem and the ids. So an invalid input never hangs inside Java.

Command line: `python -m eval.captioning --predictions P --references R [--output M]` scores
any predictions file against any reference file that `eval.caption_annotations` reads.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.caption_annotations import (
    CAPTION_FORMATS,
    CaptionVideo,
    read_caption_references,
)

logger = logging.getLogger(__name__)

# Metric names in the order metrics.json lists them.
METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
SCORER_NAMES = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
# Ids named in full in an error message; the rest are counted.
_NAMED_IDS = 20
# pycocoevalcap's METEOR wrapper joins references with this separator, so it cannot occur in
# a caption it sends.
_METEOR_SEPARATOR = "|||"


class CaptionInputError(ValueError):
    """Predictions or references that cannot be scored (raised before Java starts)."""


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores in [0, 1] (CIDEr may exceed 1) and per-video scores.

    corpus: metric name (METRIC_NAMES) -> score as pycocoevalcap returns it, not scaled.
    per_video: metric name -> {video id: score}.
    videos: number of videos scored; references: number of reference captions used.
    """

    corpus: dict[str, float]
    per_video: dict[str, dict[str, float]]
    videos: int
    references: int

    def percent(self) -> dict[str, float]:
        """Return the corpus scores multiplied by 100, as papers and metrics.json report them."""
        return {name: 100.0 * value for name, value in self.corpus.items()}


def _name_ids(ids: Sequence[str]) -> str:
    named = ", ".join(map(str, ids[:_NAMED_IDS]))
    more = len(ids) - _NAMED_IDS
    return named + (f" and {more} more" if more > 0 else "")


def check_caption_inputs(
    references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> None:
    """Raise CaptionInputError when the inputs cannot be scored; starts no process.

    Checks: at least one prediction; every prediction id has references; every reference
    list of a predicted video is non-empty; every caption is a string.
    """
    if not predictions:
        raise CaptionInputError("no predictions to score: the prediction set is empty")
    unknown = sorted(str(video_id) for video_id in predictions if video_id not in references)
    if unknown:
        raise CaptionInputError(
            f"{len(unknown)} predicted video id(s) have no references: {_name_ids(unknown)}"
        )
    empty = sorted(str(video_id) for video_id in predictions if len(references[video_id]) == 0)
    if empty:
        raise CaptionInputError(f"{len(empty)} video id(s) have an empty reference list: {_name_ids(empty)}")
    for video_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise CaptionInputError(f"prediction of video {video_id} is not a string: {caption!r}")
        for reference in references[video_id]:
            if not isinstance(reference, str):
                raise CaptionInputError(f"a reference of video {video_id} is not a string: {reference!r}")


def check_java(java: str = "java") -> str:
    """Return the path of the Java executable, or raise RuntimeError saying how to install it."""
    path = shutil.which(java)
    if path is None:
        raise RuntimeError(
            f"'{java}' was not found on PATH; pycocoevalcap's PTB tokenizer and METEOR run on Java. "
            "Install a Java runtime (Debian: apt-get install default-jre-headless; conda: openjdk) "
            "and make sure `java` is on PATH"
        )
    return path


def _package_directory(subpackage: str) -> Path:
    import pycocoevalcap

    return Path(list(pycocoevalcap.__path__)[0]) / subpackage


def _check_tokenizer_writable() -> None:
    # PTBTokenizer writes its input to a temporary file inside its own package folder.
    folder = _package_directory("tokenizer")
    if not os.access(folder, os.W_OK):
        raise RuntimeError(
            f"pycocoevalcap's PTB tokenizer writes a temporary file into {folder}, which is not "
            "writable by this user; install pycocoevalcap into a writable environment"
        )


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Tokenize captions with pycocoevalcap's PTBTokenizer in one Java call.

    captions: video id -> captions. Returns video id -> tokenized captions (space-separated,
    lowercased, punctuation removed), in the same order. Raises RuntimeError when the
    tokenizer returns another number of captions than it was given (for example when Java
    fails), instead of silently scoring a shorter list.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    check_java()
    _check_tokenizer_writable()
    # The tokenizer keeps one caption per line, so no caption may contain a line break.
    prepared = {
        video_id: [{"caption": " ".join(caption.split())} for caption in video_captions]
        for video_id, video_captions in captions.items()
    }
    tokenized = PTBTokenizer().tokenize(prepared)
    expected = sum(len(video_captions) for video_captions in captions.values())
    returned = sum(len(video_captions) for video_captions in tokenized.values())
    if returned != expected:
        raise RuntimeError(
            f"PTBTokenizer returned {returned} captions for {expected} inputs; "
            "check that `java -version` works and that the tokenizer jar is intact"
        )
    return tokenized


def _make_scorers(names: Sequence[str]) -> dict[str, Any]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    factories = {"BLEU": lambda: Bleu(4), "METEOR": Meteor, "ROUGE-L": Rouge, "CIDEr": Cider}
    return {name: factories[name]() for name in names}


def score_tokenized(
    references: Mapping[str, list[str]],
    predictions: Mapping[str, list[str]],
    scorers: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Run each pycocoevalcap scorer once on tokenized captions.

    references: video id -> tokenized references; predictions: video id -> [one tokenized
    caption]; both with the same keys. scorers: name (SCORER_NAMES) -> scorer object with
    `compute_score(gts, res)`. Returns (corpus scores, per-video scores) by metric name.
    """
    ids = list(predictions)
    gts = {video_id: list(references[video_id]) for video_id in ids}
    res = {video_id: list(predictions[video_id]) for video_id in ids}
    corpus: dict[str, float] = {}
    per_video: dict[str, dict[str, float]] = {}
    for name, scorer in scorers.items():
        logger.info("computing %s on %d videos", name, len(ids))
        if name == "BLEU":
            # verbose=0 keeps pycocoevalcap from printing its length ratio to stdout.
            scores, video_scores = scorer.compute_score(gts, res, verbose=0)
            for order, (score, values) in enumerate(zip(scores, video_scores), start=1):
                corpus[f"BLEU-{order}"] = float(score)
                per_video[f"BLEU-{order}"] = dict(zip(ids, map(float, values)))
            continue
        if name == "METEOR":
            meteor_gts = {
                video_id: [caption.replace(_METEOR_SEPARATOR, " ") for caption in captions]
                for video_id, captions in gts.items()
            }
            score, video_scores = scorer.compute_score(meteor_gts, res)
        else:
            score, video_scores = scorer.compute_score(gts, res)
        corpus[name] = float(score)
        per_video[name] = dict(zip(ids, map(float, video_scores)))
    return corpus, per_video


def score_captions(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    *,
    metrics: Sequence[str] = SCORER_NAMES,
    scorers: Mapping[str, Any] | None = None,
) -> CaptionScores:
    """Score one caption per video against all its references, the whole set in one call.

    references: video id -> reference captions (raw text); predictions: video id -> caption
    (raw text); only predicted videos are scored. metrics: scorers to run, a subset of
    SCORER_NAMES (BLEU gives BLEU-1..4). scorers: optional ready scorer objects by name,
    used instead of new ones (tests reuse one METEOR process this way).

    Raises CaptionInputError (before any Java process starts) for an empty prediction set,
    predicted ids without references or empty reference lists, and RuntimeError when `java`
    is not on PATH.
    """
    unknown_metrics = [name for name in metrics if name not in SCORER_NAMES]
    if unknown_metrics or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {SCORER_NAMES}, got {list(metrics)}")
    check_caption_inputs(references, predictions)
    check_java()

    ids = list(predictions)
    # One tokenizer call (one Java start) for both sides.
    to_tokenize = {f"hyp:{video_id}": [predictions[video_id]] for video_id in ids}
    to_tokenize.update({f"ref:{video_id}": list(references[video_id]) for video_id in ids})
    tokenized = ptb_tokenize(to_tokenize)
    tokenized_references = {video_id: tokenized[f"ref:{video_id}"] for video_id in ids}
    tokenized_predictions = {video_id: tokenized[f"hyp:{video_id}"] for video_id in ids}

    owned = scorers is None
    active = dict(scorers) if scorers is not None else _make_scorers(metrics)
    try:
        corpus, per_video = score_tokenized(
            tokenized_references, tokenized_predictions, {name: active[name] for name in metrics}
        )
    finally:
        if owned:
            # Dropping the last reference ends METEOR's Java process (its __del__ kills it).
            active.clear()
    reference_count = sum(len(references[video_id]) for video_id in ids)
    ordered = {name: corpus[name] for name in METRIC_NAMES if name in corpus}
    return CaptionScores(corpus=ordered, per_video=per_video, videos=len(ids), references=reference_count)


def corpus_cider(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> float:
    """Return pycocoevalcap's CIDEr of pre-tokenized captions, without Java.

    Captions must already be tokenized into space-separated lowercase words; training uses
    this for model selection so that training jobs need no Java. Raises CaptionInputError
    like `score_captions`.
    """
    from pycocoevalcap.cider.cider import Cider

    check_caption_inputs(references, predictions)
    gts = {video_id: list(references[video_id]) for video_id in predictions}
    res = {video_id: [predictions[video_id]] for video_id in predictions}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def software_versions() -> dict[str, str]:
    """Return the versions of Python, pycocoevalcap, torch (when installed) and Java."""
    versions = {"python": platform.python_version()}
    for package in ("pycocoevalcap", "torch", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    java = shutil.which("java")
    if java is None:
        versions["java"] = "not found"
    else:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        lines = (result.stderr or result.stdout).strip().splitlines()
        versions["java"] = lines[0] if lines else "unknown"
    return versions


def read_predictions(path: Path | str) -> tuple[dict[str, str], dict[str, Any]]:
    """Read predicted captions: returns (video id -> caption, header of the file).

    Accepted layouts: pmi-video's predictions.json (`{"videos": [{"video_id", "caption"}]}`
    plus header keys), a list of `{"video_id" or "image_id", "caption"}` records (the COCO
    results layout), or a plain `{video_id: caption}` object. Raises ValueError naming the
    file for another layout or a video predicted twice.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON: {error}") from None

    header: dict[str, Any] = {}
    if isinstance(document, dict) and isinstance(document.get("videos"), list):
        header = {key: value for key, value in document.items() if key != "videos"}
        records = document["videos"]
    elif isinstance(document, list):
        records = document
    elif isinstance(document, dict) and all(isinstance(value, str) for value in document.values()):
        return {str(key): value for key, value in document.items()}, header
    else:
        raise ValueError(
            f"{path}: expected {{'videos': [...]}}, a list of {{video_id, caption}} records or "
            "{video_id: caption}"
        )

    predictions: dict[str, str] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict) or "caption" not in record:
            raise ValueError(f"{path}: record {position} has no 'caption': {record!r}")
        key = "video_id" if "video_id" in record else "image_id"
        if key not in record:
            raise ValueError(f"{path}: record {position} has neither 'video_id' nor 'image_id'")
        video_id = str(record[key])
        if video_id in predictions:
            raise ValueError(f"{path}: video {video_id} is predicted twice")
        predictions[video_id] = record["caption"]
    return predictions, header


def match_to_references(
    predictions: Mapping[str, str], videos: Mapping[str, CaptionVideo]
) -> dict[str, str]:
    """Rename predictions keyed by an MSVD VideoID to the one clip of that VideoID.

    A prediction id that is a reference id stays. One that is not, but is the YouTube
    VideoID of exactly one reference clip (a whole video stored as `<VideoID>.mp4`, as the
    demo dataset does), is renamed to that clip's id. Others stay and fail the id check.
    """
    clips_of_source: dict[str, list[str]] = {}
    for clip, video in videos.items():
        if video.source_id is not None:
            clips_of_source.setdefault(video.source_id, []).append(clip)
    matched = {}
    for video_id, caption in predictions.items():
        clips = clips_of_source.get(video_id, [])
        if video_id not in videos and len(clips) == 1:
            matched[clips[0]] = caption
        else:
            matched[video_id] = caption
    return matched


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eval.captioning",
        description="Score predicted captions against reference captions with pycocoevalcap "
        "(BLEU-1..4, METEOR, ROUGE-L, CIDEr; scores x100).",
    )
    parser.add_argument("--predictions", required=True, type=Path, help="predictions JSON file")
    parser.add_argument(
        "--references",
        required=True,
        type=Path,
        help="reference captions: MSVD corpus CSV, MSR-VTT videodatainfo JSON (or .zip) or caption JSON",
    )
    parser.add_argument(
        "--format", default="auto", choices=("auto", *CAPTION_FORMATS), help="format of --references"
    )
    parser.add_argument("--mapping", type=Path, help="MSVD youtube_mapping.txt (msvd format only)")
    parser.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        help="keep only the reference videos of this split (MSR-VTT files carry one per video)",
    )
    parser.add_argument(
        "--metrics", nargs="+", default=list(SCORER_NAMES), choices=SCORER_NAMES, help="scorers to run"
    )
    parser.add_argument("--output", type=Path, help="write the metrics JSON here instead of stdout")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Score a predictions file from the command line; return the exit status."""
    arguments = _parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    videos, report = read_caption_references(arguments.references, arguments.format, arguments.mapping)
    if arguments.split is not None:
        if any(video.split is None for video in videos.values()):
            raise SystemExit(f"{arguments.references} has no split field, so --split cannot be used")
        videos = {video_id: video for video_id, video in videos.items() if video.split == arguments.split}
    predictions, header = read_predictions(arguments.predictions)
    predictions = match_to_references(predictions, videos)
    references = {video_id: list(video.captions) for video_id, video in videos.items()}
    try:
        scores = score_captions(references, predictions, metrics=arguments.metrics)
    except CaptionInputError as error:
        raise SystemExit(f"{arguments.predictions}: {error}") from None

    missing = sorted(set(references) - set(predictions))
    result = {
        "metrics": scores.percent(),
        "scale": "percent (pycocoevalcap score x 100)",
        "counts": {
            "videos_scored": scores.videos,
            "reference_videos": len(references),
            "references_used": scores.references,
            "reference_videos_without_prediction": len(missing),
        },
        "predictions": str(arguments.predictions),
        "references": str(arguments.references),
        "split": arguments.split,
        "annotation_report": report.to_dict(),
        "decoding": header.get("decoding"),
        "versions": software_versions(),
    }
    text = json.dumps(result, indent=2)
    if arguments.output is not None:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(text + "\n", encoding="utf-8")
        logger.info("wrote %s", arguments.output)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
