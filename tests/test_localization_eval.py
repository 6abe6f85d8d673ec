"""Tests of the localization evaluator against hand-computed metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.annotations import Query
from eval.localization import (
    EvaluationConfig,
    evaluate_predictions,
    format_metrics_table,
    mean_iou,
    random_baseline,
    recall_at_1,
    temporal_iou,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.3, 0.5, 0.7)

# Five queries and predictions whose IoU is easy to compute by hand:
#   v1#1 gt [0, 10],  pred [0, 5]             -> 0.5
#   v1#2 gt [10, 20], pred [10, 30] -> clipped to [10, 20] -> 1.0
#   v3#3 gt [0, 4],   no prediction           -> 0 (a miss)
#   v4#4 gt [2, 6],   pred [0, 2]             -> 0 (touching, no overlap)
#   v5#5 gt [0, 10],  pred [-3, 3] -> clipped to [0, 3] -> 0.3 exactly
QUERIES = [
    Query("v1#1", "v1", 0.0, 10.0, "a.", 20.0),
    Query("v1#2", "v1", 10.0, 20.0, "b.", 20.0),
    Query("v3#3", "v3", 0.0, 4.0, "c.", 8.0),
    Query("v4#4", "v4", 2.0, 6.0, "d.", 8.0),
    Query("v5#5", "v5", 0.0, 10.0, "e.", 10.0),
]
PREDICTIONS = [
    {"query_id": "v1#1", "video_id": "v1", "start": 0.0, "end": 5.0, "score": 0.9},
    {"query_id": "v1#2", "video_id": "v1", "start": 10.0, "end": 30.0},
    {"query_id": "v4#4", "video_id": "v4", "start": 0, "end": 2},
    {"query_id": "v5#5", "video_id": "v5", "start": -3.0, "end": 3.0},
]


def write_predictions(path: Path, entries: list[dict], **extra: object) -> Path:
    path.write_text(json.dumps({"queries": entries, **extra}))
    return path


def evaluate(path: Path, rule: str = "ge", **options: object) -> dict:
    return evaluate_predictions(
        path,
        QUERIES,
        thresholds=THRESHOLDS,
        rule=rule,
        random_trials=10,
        seed=0,
        missing_videos=["v3"],
        protocol={"dataset": "hand"},
        **options,
    )


def test_iou_hand_values() -> None:
    pred = [[2.0, 8.0], [0.0, 10.0], [0.0, 2.0], [1.0, 3.0], [4.0, 4.0], [5.0, 15.0]]
    gt = [[4.0, 10.0], [0.0, 10.0], [3.0, 5.0], [0.0, 10.0], [0.0, 10.0], [0.0, 10.0]]
    expected = [4 / 8, 1.0, 0.0, 0.2, 0.0, 5 / 15]
    np.testing.assert_allclose(temporal_iou(pred, gt), expected, rtol=0, atol=1e-12)


def test_iou_zero_length_both() -> None:
    assert temporal_iou([[3.0, 3.0]], [[3.0, 3.0]])[0] == 0.0


def test_iou_rejects_reversed_span() -> None:
    with pytest.raises(ValueError, match="pred row 1 has start 5 > end 2"):
        temporal_iou([[0.0, 1.0], [5.0, 2.0]], [[0.0, 1.0], [0.0, 1.0]])


def test_iou_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        temporal_iou([[0.0, 1.0]], [[0.0, 1.0], [0.0, 2.0]])


def test_recall_tie_both_rules() -> None:
    # 3 / 10 is the float 0.3 exactly, so the IoU ties the threshold.
    ious = temporal_iou([[0.0, 3.0], [0.0, 5.0], [0.0, 7.0], [0.0, 2.0]], [[0.0, 10.0]] * 4)
    assert ious[0] == 0.3
    assert recall_at_1(ious, THRESHOLDS, "ge") == {"0.3": 75.0, "0.5": 50.0, "0.7": 25.0}
    assert recall_at_1(ious, THRESHOLDS, "gt") == {"0.3": 50.0, "0.5": 25.0, "0.7": 0.0}


def test_recall_invalid_rule() -> None:
    with pytest.raises(ValueError, match="invalid IoU rule 'ge='"):
        recall_at_1([0.5], THRESHOLDS, "ge=")


def test_mean_iou_percent() -> None:
    assert mean_iou([0.5, 1.0, 0.0, 0.3]) == pytest.approx(45.0)


def test_random_baseline_analytic() -> None:
    # With the ground truth the whole video, IoU = |u1 - u2| for u1, u2 ~ U(0, 1):
    # P(IoU >= m) = (1 - m)^2 and E[IoU] = 1/3.
    gt = np.array([[0.0, 10.0]] * 5)
    result = random_baseline(gt, np.full(5, 10.0), THRESHOLDS, "ge", trials=2000, seed=3)
    assert result["recall_at_1"]["0.3"] == pytest.approx(49.0, abs=2.0)
    assert result["recall_at_1"]["0.5"] == pytest.approx(25.0, abs=2.0)
    assert result["recall_at_1"]["0.7"] == pytest.approx(9.0, abs=1.5)
    assert result["miou"] == pytest.approx(100 / 3, abs=1.0)


def test_random_baseline_seeded() -> None:
    gt = np.array([[1.0, 4.0], [0.0, 9.0]])
    durations = np.array([5.0, 12.0])
    first = random_baseline(gt, durations, THRESHOLDS, "ge", trials=20, seed=7)
    again = random_baseline(gt, durations, THRESHOLDS, "ge", trials=20, seed=7)
    other = random_baseline(gt, durations, THRESHOLDS, "ge", trials=20, seed=8)
    assert first == again
    assert first != other


def test_evaluate_hand_metrics_ge(tmp_path: Path) -> None:
    metrics = evaluate(write_predictions(tmp_path / "p.json", PREDICTIONS))
    assert metrics["recall_at_1"] == {"0.3": 60.0, "0.5": 40.0, "0.7": 20.0}
    assert metrics["miou"] == pytest.approx(36.0)


def test_evaluate_hand_metrics_gt(tmp_path: Path) -> None:
    metrics = evaluate(write_predictions(tmp_path / "p.json", PREDICTIONS), rule="gt")
    assert metrics["recall_at_1"] == {"0.3": 40.0, "0.5": 20.0, "0.7": 20.0}


def test_evaluate_counts(tmp_path: Path) -> None:
    metrics = evaluate(write_predictions(tmp_path / "p.json", PREDICTIONS))
    assert metrics["queries_total"] == 5
    assert metrics["queries_evaluated"] == 4
    assert metrics["coverage"] == 0.8
    assert metrics["queries_without_prediction"] == 1
    assert metrics["missing_videos"] == ["v3"]
    assert metrics["queries_on_missing_videos"] == 1
    assert metrics["clipped_predictions"] == 2
    assert metrics["ordered_predictions"] == 0
    assert set(metrics["random_baseline"]) == {"recall_at_1", "miou"}
    assert set(metrics["random_baseline"]["recall_at_1"]) == {"0.3", "0.5", "0.7"}


def test_evaluate_protocol(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "p.json", PREDICTIONS, model={"epochs": 3})
    protocol = evaluate(path)["protocol"]
    assert protocol["dataset"] == "hand"
    assert protocol["iou_rule"] == "ge"
    assert protocol["iou_thresholds"] == [0.3, 0.5, 0.7]
    assert protocol["random_trials"] == 10
    assert protocol["order_spans"] is False
    assert protocol["predictions_metadata"] == {"model": {"epochs": 3}}
    assert protocol["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert protocol["versions"]["numpy"] == np.__version__
    assert protocol["versions"]["torch"]
    assert "git_commit" in protocol
    assert len(protocol["predictions_sha256"]) == 64


def test_evaluate_rejects_reversed(tmp_path: Path) -> None:
    entries = [dict(PREDICTIONS[0], start=6.0, end=1.0)]
    path = write_predictions(tmp_path / "p.json", entries)
    with pytest.raises(ValueError, match="query v1#1: invalid prediction, start 6 s > end 1 s"):
        evaluate(path)


def test_evaluate_order_spans(tmp_path: Path) -> None:
    entries = [dict(PREDICTIONS[0], start=5.0, end=0.0)]
    metrics = evaluate(write_predictions(tmp_path / "p.json", entries), order_spans=True)
    assert metrics["ordered_predictions"] == 1
    assert metrics["recall_at_1"]["0.5"] == 20.0
    assert metrics["miou"] == pytest.approx(10.0)


def test_evaluate_empty_file(tmp_path: Path) -> None:
    path = write_predictions(tmp_path / "p.json", [])
    with pytest.raises(ValueError, match=r"p\.json: the file contains no predictions"):
        evaluate(path)


def test_evaluate_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="predictions file .*absent.json not found"):
        evaluate(tmp_path / "absent.json")


def test_evaluate_unknown_query(tmp_path: Path) -> None:
    entries = PREDICTIONS + [{"query_id": "zz#9", "video_id": "zz", "start": 0, "end": 1}]
    with pytest.raises(ValueError, match="1 predictions name queries that are not in"):
        evaluate(write_predictions(tmp_path / "p.json", entries))


def test_evaluate_duplicate_prediction(tmp_path: Path) -> None:
    entries = PREDICTIONS + [PREDICTIONS[0]]
    with pytest.raises(ValueError, match="query v1#1: more than one prediction"):
        evaluate(write_predictions(tmp_path / "p.json", entries))


def test_evaluate_wrong_video(tmp_path: Path) -> None:
    entries = [dict(PREDICTIONS[0], video_id="v9")]
    with pytest.raises(ValueError, match="prediction names video 'v9'"):
        evaluate(write_predictions(tmp_path / "p.json", entries))


def test_evaluate_non_numeric_time(tmp_path: Path) -> None:
    entries = [dict(PREDICTIONS[0], end="5")]
    with pytest.raises(ValueError, match="query v1#1: start 0.0 and end '5' must be finite"):
        evaluate(write_predictions(tmp_path / "p.json", entries))


def test_metrics_table_rows(tmp_path: Path) -> None:
    metrics = evaluate(write_predictions(tmp_path / "p.json", PREDICTIONS))
    lines = format_metrics_table(metrics).splitlines()
    assert lines[0].split() == ["metric", "model", "random"]
    random_value = metrics["random_baseline"]["recall_at_1"]["0.3"]
    assert lines[1].split() == ["R@1", "IoU>=0.3", "60.00", f"{random_value:.2f}"]
    assert lines[4].split()[:2] == ["mIoU", "36.00"]
    assert "queries evaluated 4 of 5 (coverage 80.0%)" in lines[5]


def test_config_from_section() -> None:
    config = EvaluationConfig.from_config(
        {"iou_thresholds": [0.3, 0.5], "iou_rule": "gt", "random_trials": 5}
    )
    assert config == EvaluationConfig((0.3, 0.5), "gt", 5, False)
    with pytest.raises(ValueError, match="invalid IoU threshold 1.5"):
        EvaluationConfig.from_config(
            {"iou_thresholds": [1.5], "iou_rule": "ge", "random_trials": 5}
        )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eval.localization", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )


def write_charades_inputs(tmp_path: Path) -> tuple[Path, Path]:
    annotations = tmp_path / "sta_test.txt"
    annotations.write_text(
        "vidA 0.0 10.0##a person opens a door.\n"
        "vidA 10.0 32.0##the person sits down.\n"
        "vidB 1.0 3.0##someone laughs.\n"
    )
    durations = tmp_path / "durations.csv"
    durations.write_text("id,length\nvidA,20.0\nvidB,4.0\n")
    return annotations, durations


def test_cli_charades_end_to_end(tmp_path: Path) -> None:
    annotations, durations = write_charades_inputs(tmp_path)
    predictions = write_predictions(
        tmp_path / "predictions.json",
        [
            {"query_id": "vidA#1", "video_id": "vidA", "start": 0.0, "end": 5.0},
            {"query_id": "vidA#2", "video_id": "vidA", "start": 12.0, "end": 25.0},
        ],
    )
    missing = tmp_path / "videos.tsv"
    missing.write_text("video_id\tpath\tshard\tstatus\nvidA\ta.mp4\t0\tfound\nvidB\t\t0\tmissing\n")
    output = tmp_path / "out" / "metrics.json"
    result = run_cli(
        "--predictions", str(predictions), "--annotations", str(annotations),
        "--format", "charades_sta", "--durations", str(durations), "--output", str(output),
        "--iou-rule", "ge", "--random-trials", "5", "--missing-videos", str(missing),
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(output.read_text())
    # vidA#1: 5 / 10 = 0.5; vidA#2: gt clipped to [10, 20], pred [12, 20] -> 8 / 10;
    # vidB#3: no prediction -> 0.
    expected_recall = {"0.3": 200 / 3, "0.5": 200 / 3, "0.7": 100 / 3}
    assert metrics["recall_at_1"] == pytest.approx(expected_recall)
    assert metrics["miou"] == pytest.approx(130 / 3)
    assert metrics["clipped_predictions"] == 1
    assert metrics["missing_videos"] == ["vidB"]
    assert metrics["protocol"]["annotation_report"]["clipped"] == 1
    assert metrics["protocol"]["format"] == "charades_sta"
    assert "R@1 IoU>=0.5" in result.stdout
    assert not output.with_name("metrics.json.tmp").exists()


def test_cli_activitynet_merged_folder(tmp_path: Path) -> None:
    folder = tmp_path / "anet"
    folder.mkdir()
    (folder / "val_1.json").write_text(
        json.dumps({"v_a": {"duration": 10, "timestamps": [[0, 4]], "sentences": [" A dog."]}})
    )
    (folder / "val_2.json").write_text(
        json.dumps({"v_a": {"duration": 10, "timestamps": [[5, 10]], "sentences": ["It sits."]}})
    )
    predictions = write_predictions(
        tmp_path / "p.json",
        [
            {"query_id": "v_a#0", "video_id": "v_a", "start": 0.0, "end": 4.0},
            {"query_id": "v_a#1", "video_id": "v_a", "start": 0.0, "end": 5.0},
        ],
    )
    output = tmp_path / "metrics.json"
    result = run_cli(
        "--predictions", str(predictions), "--annotations", str(folder),
        "--format", "activitynet_captions", "--split", "merged", "--output", str(output),
        "--random-trials", "3",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(output.read_text())
    assert metrics["queries_total"] == 2
    assert metrics["recall_at_1"] == {"0.3": 50.0, "0.5": 50.0, "0.7": 50.0}
    assert metrics["protocol"]["split"] == "merged"


def test_cli_empty_predictions(tmp_path: Path) -> None:
    annotations, durations = write_charades_inputs(tmp_path)
    predictions = write_predictions(tmp_path / "predictions.json", [])
    output = tmp_path / "metrics.json"
    result = run_cli(
        "--predictions", str(predictions), "--annotations", str(annotations),
        "--format", "charades_sta", "--durations", str(durations), "--output", str(output),
    )
    assert result.returncode == 1
    assert "predictions.json: the file contains no predictions" in result.stderr
    assert not output.exists()


def test_cli_charades_needs_durations(tmp_path: Path) -> None:
    annotations, _ = write_charades_inputs(tmp_path)
    predictions = write_predictions(tmp_path / "p.json", PREDICTIONS)
    result = run_cli(
        "--predictions", str(predictions), "--annotations", str(annotations),
        "--format", "charades_sta", "--output", str(tmp_path / "m.json"),
    )
    assert result.returncode == 1
    assert "charades_sta needs --durations" in result.stderr
