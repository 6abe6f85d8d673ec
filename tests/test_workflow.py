"""The Snakemake workflow: config validation, dry runs of every target, lint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from snakemake_runner import load_config, planned_jobs, run_snakemake

DEMO_TARGETS = [
    "results/demo/metrics.json",
    "results/demo/predictions.json",
    "results/demo/model.pt",
    "results/demo/modality_weights.png",
    "results/demo/ablation.md",
    "features/demo/irv2.h5",
    "features/demo/c3d_n32.h5",
    "features/demo/soundnet_n128.h5",
    "features/demo/mfcc.h5",
    "features/demo/decoded/shard0.h5",
]


def test_config_valid_dry_run(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, load_config(), "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert "Invalid configuration" not in result.stderr


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(sed=1), "config key '(top level)': unknown key(s) ['sed']"),
        (lambda c: c["localizer"].update(epoch=3), "config key 'localizer': unknown key(s) ['epoch']"),
        (lambda c: c.update(seed="abc"), "config key 'seed': expected type integer, got 'abc'"),
        (
            lambda c: c["datasets"]["demo"].update(steps="many"),
            "config key 'datasets.demo.steps': expected type integer",
        ),
        (lambda c: c["decode"].pop("frame_chunk"), "config key 'decode': 'frame_chunk' is a required property"),
        (
            lambda c: c["datasets"]["charades"].pop("videos"),
            "config key 'datasets.charades': 'videos' is a required property",
        ),
        (lambda c: c.update(device="gpu"), "config key 'device': expected one of ['auto', 'cpu', 'cuda']"),
    ],
    ids=["unknown-top", "unknown-nested", "wrong-type", "wrong-type-nested", "missing", "missing-nested", "enum"],
)
def test_config_invalid_names_key(tmp_path: Path, mutate, expected: str) -> None:
    config = copy.deepcopy(load_config())
    mutate(config)

    result = run_snakemake(tmp_path, config, "-n")

    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("target", DEMO_TARGETS)
def test_dry_run_demo_target(tmp_path: Path, target: str) -> None:
    result = run_snakemake(tmp_path, load_config(), "-n", target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Nothing to be done" not in result.stdout


def test_dry_run_demo_job_counts(tmp_path: Path) -> None:
    config = load_config()
    shards = -(-config["datasets"]["demo"]["generator"]["videos"] // config["datasets"]["demo"]["shard_size"])

    result = run_snakemake(tmp_path, config, "-n", "results/demo/metrics.json")

    assert result.returncode == 0, result.stderr
    counts = planned_jobs(result.stdout)
    assert counts["generate_demo"] == 1
    assert counts["decode_videos"] == shards
    for name in config["datasets"]["demo"]["modalities"]:
        assert counts[f"extract_{name}"] == shards
    assert counts["subsample_features"] == len(config["datasets"]["demo"]["modalities"])
    assert counts["train_localizer"] == 1
    assert counts["evaluate_localizer"] == 1


def test_missing_charades_message(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, load_config(), "-n", "results/charades/metrics.json")

    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "datasets.charades.videos" in message
    assert str(tmp_path / "data" / "charades" / "videos") in message
    assert "https://prior.allenai.org/projects/charades" in message
    assert "Traceback" not in result.stderr


def test_missing_annotation_message(tmp_path: Path) -> None:
    (tmp_path / "data" / "charades" / "videos").mkdir(parents=True)

    result = run_snakemake(tmp_path, load_config(), "-n", "results/charades/metrics.json")

    assert result.returncode != 0
    assert "'datasets.charades.annotations." in result.stderr
    assert "annotation file not found at" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_annotation_line_message(tmp_path: Path) -> None:
    data = tmp_path / "data" / "custom"
    (data / "videos").mkdir(parents=True)
    (data / "train.txt").write_text("a 0.0 1.0##a person opens a door.\n")
    (data / "test.txt").write_text("a 0.0 1.0##fine.\nb 1.0 2.0 no separator here\n")

    result = run_snakemake(tmp_path, load_config(), "-n", "results/custom/metrics.json")

    assert result.returncode != 0
    assert "Dataset 'custom': invalid annotation file:" in result.stderr
    assert "test.txt:2: expected 'VIDEO START END##SENTENCE'" in result.stderr
    assert "Traceback" not in result.stderr


def test_lint_clean(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, load_config(), "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
