"""Tests of the pycocoevalcap scoring wrapper, its input checks and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from eval.caption_annotations import CaptionVideo
from eval.captioning import (
    METRIC_NAMES,
    CaptionInputError,
    corpus_cider,
    match_to_references,
    read_predictions,
    score_captions,
)

REPOSITORY = Path(__file__).resolve().parents[1]

REFERENCES = {
    "video1": ["A man is playing a guitar.", "Someone plays the guitar on stage.", "a man performs a song"],
    "video2": ["A cat is sleeping on a bed.", "The cat naps on the blanket."],
    "video3": ["Two dogs run across the field.", "dogs are running in the grass", "Two dogs play outside."],
    "video4": ["A woman slices an onion.", "A woman is cutting vegetables in the kitchen."],
}
PREDICTIONS = {
    "video1": "a man is playing the guitar",
    "video2": "a cat sleeps on a bed",
    "video3": "a dog is running in the field",
    "video4": "a woman is cutting an onion",
}


@pytest.fixture(scope="module")
def meteor() -> Meteor:
    """One METEOR Java process shared by the tests that need it (it takes seconds to start)."""
    return Meteor()


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything starts a subprocess (Java included)."""

    def fail_on_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", fail_on_process)


def direct_scores(meteor: Meteor) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Score REFERENCES/PREDICTIONS by calling pycocoevalcap directly, as its own example does."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: [{"caption": text} for text in value] for key, value in REFERENCES.items()})
    res = tokenizer.tokenize({key: [{"caption": value}] for key, value in PREDICTIONS.items()})
    corpus: dict[str, float] = {}
    per_video: dict[str, list[float]] = {}
    bleu, bleu_videos = Bleu(4).compute_score(gts, res, verbose=0)
    for order in range(4):
        corpus[f"BLEU-{order + 1}"] = bleu[order]
        per_video[f"BLEU-{order + 1}"] = list(bleu_videos[order])
    for name, scorer in (("METEOR", meteor), ("ROUGE-L", Rouge()), ("CIDEr", Cider())):
        score, videos = scorer.compute_score(gts, res)
        corpus[name] = float(score)
        per_video[name] = [float(value) for value in videos]
    return corpus, per_video


def test_wrapper_equals_direct(meteor: Meteor) -> None:
    expected, expected_videos = direct_scores(meteor)

    scores = score_captions(
        REFERENCES, PREDICTIONS, scorers={"BLEU": Bleu(4), "METEOR": meteor, "ROUGE-L": Rouge(), "CIDEr": Cider()}
    )

    assert list(scores.corpus) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert scores.corpus[name] == expected[name], name
        assert [scores.per_video[name][key] for key in PREDICTIONS] == expected_videos[name], name
    assert scores.videos == 4
    assert scores.references == 10
    assert scores.percent()["CIDEr"] == pytest.approx(100 * expected["CIDEr"])


def test_identical_caption_bleu4() -> None:
    references = {"a": ["a man is riding a horse on the beach"], "b": ["two children are playing with a ball"]}
    predictions = {"a": "A man is riding a horse on the beach.", "b": "two children are playing with a ball"}

    scores = score_captions(references, predictions, metrics=["BLEU"])

    assert scores.corpus["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores.per_video["BLEU-4"]["a"] == pytest.approx(1.0, abs=1e-6)
    assert scores.corpus["BLEU-1"] == pytest.approx(1.0, abs=1e-6)


def test_cider_depends_on_set() -> None:
    # CIDEr's document frequencies come from all scored videos, which is why a split is scored
    # in one call: the same caption scores differently inside a larger set.
    alone = score_captions({"video1": REFERENCES["video1"]}, {"video1": PREDICTIONS["video1"]}, metrics=["CIDEr"])
    together = score_captions(REFERENCES, PREDICTIONS, metrics=["CIDEr"])

    assert alone.per_video["CIDEr"]["video1"] != together.per_video["CIDEr"]["video1"]


def test_empty_predictions_rejected(no_processes: None) -> None:
    with pytest.raises(CaptionInputError, match="prediction set is empty"):
        score_captions(REFERENCES, {})


def test_unknown_ids_named(no_processes: None) -> None:
    predictions = dict(PREDICTIONS, video9="a caption", video8="another")

    with pytest.raises(CaptionInputError) as error:
        score_captions(REFERENCES, predictions)

    assert "2 predicted video id(s) have no references" in str(error.value)
    assert "video8, video9" in str(error.value)


def test_empty_references_rejected(no_processes: None) -> None:
    with pytest.raises(CaptionInputError, match="empty reference list: video2"):
        score_captions(dict(REFERENCES, video2=[]), PREDICTIONS)


def test_missing_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_processes: None) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(RuntimeError, match="'java' was not found on PATH"):
        score_captions(REFERENCES, PREDICTIONS, metrics=["BLEU"])


def test_empty_prediction_scores_zero() -> None:
    predictions = dict(PREDICTIONS, video4="")

    scores = score_captions(REFERENCES, predictions, metrics=["BLEU", "CIDEr"])

    assert scores.per_video["CIDEr"]["video4"] == 0.0
    assert scores.per_video["BLEU-1"]["video4"] == pytest.approx(0.0, abs=1e-6)
    assert scores.per_video["CIDEr"]["video1"] > 0.0


def test_corpus_cider_matches_cider() -> None:
    references = {"a": ["a man rides a horse", "a person riding a horse"], "b": ["a cat sleeps", "the cat is asleep"]}
    predictions = {"a": "a man rides a horse", "b": "a dog runs"}

    value = corpus_cider(references, predictions)

    expected, _ = Cider().compute_score(references, {key: [text] for key, text in predictions.items()})
    assert value == float(expected)


def test_corpus_cider_rejects_unknown() -> None:
    with pytest.raises(CaptionInputError, match="no references: z"):
        corpus_cider({"a": ["x y"]}, {"z": "x y"})


def test_read_prediction_layouts(tmp_path: Path) -> None:
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"decoding": {"beam_size": 5}, "videos": [{"video_id": "v1", "caption": "a b"}]}))
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps([{"image_id": "v2", "caption": "c d"}]))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"v3": "e f"}))

    assert read_predictions(ours) == ({"v1": "a b"}, {"decoding": {"beam_size": 5}})
    assert read_predictions(coco)[0] == {"v2": "c d"}
    assert read_predictions(plain)[0] == {"v3": "e f"}


def test_read_predictions_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([{"video_id": "v1", "caption": "a"}, {"video_id": "v1", "caption": "b"}]))

    with pytest.raises(ValueError, match="video v1 is predicted twice"):
        read_predictions(path)


def test_match_whole_video_clip() -> None:
    videos = {
        "demo_0000_0_12": CaptionVideo("demo_0000_0_12", ("x",), source_id="demo_0000"),
        "abc_1_5": CaptionVideo("abc_1_5", ("y",), source_id="abc"),
        "abc_6_9": CaptionVideo("abc_6_9", ("z",), source_id="abc"),
    }

    matched = match_to_references({"demo_0000": "p", "abc_1_5": "q", "abc": "r"}, videos)

    assert matched == {"demo_0000_0_12": "p", "abc_1_5": "q", "abc": "r"}


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eval.captioning", *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_scores_file(tmp_path: Path) -> None:
    references = tmp_path / "references.json"
    references.write_text(json.dumps(REFERENCES))
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    output = tmp_path / "metrics.json"

    result = run_cli("--predictions", str(predictions), "--references", str(references),
                     "--metrics", "BLEU", "CIDEr", "--output", str(output))  # fmt: skip

    assert result.returncode == 0, result.stderr
    metrics = json.loads(output.read_text())
    expected = score_captions(REFERENCES, PREDICTIONS, metrics=["BLEU", "CIDEr"]).percent()
    assert metrics["metrics"] == pytest.approx(expected)
    assert metrics["counts"]["videos_scored"] == 4
    assert "pycocoevalcap" in metrics["versions"]


def test_cli_unknown_id(tmp_path: Path) -> None:
    references = tmp_path / "references.json"
    references.write_text(json.dumps(REFERENCES))
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"video77": "a caption"}))

    result = run_cli("--predictions", str(predictions), "--references", str(references))

    assert result.returncode != 0
    assert "video77" in result.stderr
    assert "have no references" in result.stderr
    assert "Traceback" not in result.stderr
