"""The captioning rules of the Snakemake workflow: dry runs, config checks, missing data messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from snakemake_runner import load_config, planned_jobs, run_snakemake



def test_demo_captions_dry_run(tmp_path: Path) -> None:
    config = load_config()
    entry = config["datasets"]["demo_captions"]
    videos = config["datasets"][entry["generated_by"]]["generator"]["videos"]
    shards = -(-videos // entry["shard_size"])

    result = run_snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode == 0, result.stdout + result.stderr
    counts = planned_jobs(result.stdout)
    assert counts["generate_demo"] == 1
    assert counts["decode_videos"] == shards
    for name in entry["modalities"]:
        assert counts[f"extract_{name}"] == shards
    assert counts["subsample_features"] == len(entry["modalities"])
    assert counts["train_captioner"] == 1
    assert counts["predict_captioner"] == 1
    assert counts["evaluate_captioner"] == 1
    assert "train_localizer" not in counts


@pytest.mark.parametrize(
    "target", ["results/demo_captions/predictions.json", "results/demo_captions/model.pt"]
)
def test_demo_captions_targets(tmp_path: Path, target: str) -> None:
    result = run_snakemake(tmp_path, load_config(), "-n", target)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "train_captioner" in result.stdout


def test_missing_msvd_message(tmp_path: Path) -> None:
    result = run_snakemake(tmp_path, load_config(), "-n", "results/msvd/metrics.json")

    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "datasets.msvd.videos" in message
    assert str(tmp_path / "data" / "msvd" / "YouTubeClips") in message
    assert "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/" in message
    assert "Traceback" not in result.stderr


def test_missing_msvd_corpus_message(tmp_path: Path) -> None:
    (tmp_path / "data" / "msvd" / "YouTubeClips").mkdir(parents=True)

    result = run_snakemake(tmp_path, load_config(), "-n", "results/msvd/metrics.json")

    assert result.returncode != 0
    assert "'datasets.msvd.annotations." in result.stderr
    assert "Traceback" not in result.stderr


def test_captioner_unknown_key(tmp_path: Path) -> None:
    config = copy.deepcopy(load_config())
    config["captioner"]["beam"] = 3

    result = run_snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode != 0
    assert "config key 'captioner': unknown key(s) ['beam']" in result.stderr


def test_dataset_captioner_wrong_type(tmp_path: Path) -> None:
    config = copy.deepcopy(load_config())
    config["datasets"]["demo_captions"]["captioner"]["beam_size"] = "five"

    result = run_snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode != 0
    assert "config key 'datasets.demo_captions.captioner.beam_size': expected type integer" in result.stderr


def test_split_sizes_required_keys(tmp_path: Path) -> None:
    config = copy.deepcopy(load_config())
    del config["datasets"]["msvd"]["split_sizes"]["test"]

    result = run_snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode != 0
    assert "config key 'datasets.msvd.split_sizes': 'test' is a required property" in result.stderr
