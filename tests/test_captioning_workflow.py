"""The captioning rules of the Snakemake workflow: dry runs, config checks, missing data messages."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def load_config() -> dict:
    with (REPOSITORY / "config.yaml").open() as handle:
        return yaml.safe_load(handle)


def snakemake(workdir: Path, config: dict, *arguments: str) -> subprocess.CompletedProcess:
    """Run the real snakemake on the repository's Snakefile in `workdir` with `config`."""
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [str(SNAKEMAKE), "--snakefile", str(REPOSITORY / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config_path), "--cores", "1", *arguments]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def job_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            counts[fields[0]] = int(fields[1])
    return counts


def test_demo_captions_dry_run(tmp_path: Path) -> None:
    config = load_config()
    entry = config["datasets"]["demo_captions"]
    videos = config["datasets"][entry["generated_by"]]["generator"]["videos"]
    shards = -(-videos // entry["shard_size"])

    result = snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
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
    result = snakemake(tmp_path, load_config(), "-n", target)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "train_captioner" in result.stdout


def test_missing_msvd_message(tmp_path: Path) -> None:
    result = snakemake(tmp_path, load_config(), "-n", "results/msvd/metrics.json")

    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "datasets.msvd.videos" in message
    assert str(tmp_path / "data" / "msvd" / "YouTubeClips") in message
    assert "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/" in message
    assert "Traceback" not in result.stderr


def test_missing_msvd_corpus_message(tmp_path: Path) -> None:
    (tmp_path / "data" / "msvd" / "YouTubeClips").mkdir(parents=True)

    result = snakemake(tmp_path, load_config(), "-n", "results/msvd/metrics.json")

    assert result.returncode != 0
    assert "'datasets.msvd.annotations." in result.stderr
    assert "Traceback" not in result.stderr


def test_captioner_unknown_key(tmp_path: Path) -> None:
    config = copy.deepcopy(load_config())
    config["captioner"]["beam"] = 3

    result = snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode != 0
    assert "config key 'captioner': unknown key(s) ['beam']" in result.stderr


def test_dataset_captioner_wrong_type(tmp_path: Path) -> None:
    config = copy.deepcopy(load_config())
    config["datasets"]["demo_captions"]["captioner"]["beam_size"] = "five"

    result = snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode != 0
    assert "config key 'datasets.demo_captions.captioner.beam_size': expected type integer" in result.stderr


def test_split_sizes_required_keys(tmp_path: Path) -> None:
    config = copy.deepcopy(load_config())
    del config["datasets"]["msvd"]["split_sizes"]["test"]

    result = snakemake(tmp_path, config, "-n", "results/demo_captions/metrics.json")

    assert result.returncode != 0
    assert "config key 'datasets.msvd.split_sizes': 'test' is a required property" in result.stderr
