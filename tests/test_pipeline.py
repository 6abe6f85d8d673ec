"""The whole workflow on real videos: every stage runs, then partial reruns.

One real run (small settings, random IRV2 and C3D weights, real SoundNet weights) builds
`results/real/metrics.json` from four real videos of different containers, codecs, audio
layouts and rotations, plus one video the annotations name but the folder lacks. The rerun
tests then ask Snakemake's own dry run which jobs a change would rerun.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import h5py
import pytest

from snakemake_runner import REPOSITORY, load_config, planned_jobs, run_snakemake

SHARED_VIDEOS = REPOSITORY.parent / "shared" / "data" / "videos"
VIDEOS = {
    "v_ZNVhz7ctTq0": "v_ZNVhz7ctTq0.mp4",  # 14.0 s, mono AAC
    "video9149": "video9149.mp4",  # 13.0 s, stereo AAC
    "jPBxl9gFqNY_110_117": "jPBxl9gFqNY_110_117.avi",  # 7.0 s AVI, no audio
    "fire2": "fire2.mp4",  # 2.4 s, variable frame rate, rotated 180 degrees
}
TRAIN_LINES = [
    "v_ZNVhz7ctTq0 0.0 1.97##A fluffy dog is standing on a sidewalk with a child behind it.",
    "v_ZNVhz7ctTq0 1.9 14.05##The child walks the dog along the street.",
    "video9149 0.0 6.0##a man talks about a car.",
    "video9149 6.0 13.0##the car drives down a road.",
]
TEST_LINES = [
    "jPBxl9gFqNY_110_117 0.0 4.0##a chef pours oil into a pot.",
    "fire2 0.0 2.0##a fire burns in a fireplace.",
    "absent_video 1.0 3.0##a video that is not in the folder.",
]
METRIC_KEYS = {
    "recall_at_1",
    "miou",
    "random_baseline",
    "queries_total",
    "queries_evaluated",
    "coverage",
    "missing_videos",
    "protocol",
}

pytestmark = pytest.mark.skipif(
    not SHARED_VIDEOS.is_dir(), reason=f"shared test videos not found at {SHARED_VIDEOS}"
)


def pipeline_config(workdir: Path) -> dict:
    config = load_config()
    config["datasets"] = {
        "real": {
            "task": "localization",
            "format": "charades_sta",
            "videos": str(workdir / "videos"),
            "video_extensions": [".mp4", ".avi"],
            "annotations": {"train": str(workdir / "train.txt"), "test": str(workdir / "test.txt")},
            "durations": None,
            "modalities": ["irv2", "c3d", "soundnet"],
            "extra_extractors": ["mfcc"],
            "features": {
                "irv2": {"pretrained": False, "fps": 0.5, "batch_size": 4},
                "c3d": {"pretrained": False, "fps": 2.0, "stride": 16, "batch_size": 2},
            },
            "steps": 16,
            "shard_size": 2,
            "source": "four real videos linked by the test",
            "localizer": {
                "embedding": "learned",
                "embedding_dim": 16,
                "d_model": 32,
                "heads": 2,
                "d_low": 16,
                "gate_channels": 8,
                "max_relative_position": 4,
                "head_channels": [16, 8],
                "epochs": 2,
                "batch_size": 2,
                "validation_fraction": 0.5,
            },
        }
    }
    config["device"] = "cpu"
    return config


def snakemake(workdir: Path, config: dict, *arguments: str, timeout_s: int = 1800) -> subprocess.CompletedProcess:
    """Run snakemake on 2 cores with a TORCH_HOME of the run's own, so no cached weights leak in."""
    return run_snakemake(
        workdir, config, *arguments, cores=2, timeout_s=timeout_s,
        environment={"TORCH_HOME": str(workdir / "torch_home")},
    )  # fmt: skip


def dry_run_jobs(workdir: Path, config: dict, *arguments: str) -> dict[str, int]:
    """Return the jobs a dry run of `arguments` plans: rule name -> number of jobs."""
    result = snakemake(workdir, config, "-n", *arguments)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return planned_jobs(result.stdout)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("pipeline")
    (workdir / "videos").mkdir()
    for video_id, name in VIDEOS.items():
        (workdir / "videos" / f"{video_id}{Path(name).suffix}").symlink_to(SHARED_VIDEOS / name)
    (workdir / "train.txt").write_text("\n".join(TRAIN_LINES) + "\n")
    (workdir / "test.txt").write_text("\n".join(TEST_LINES) + "\n")
    config = pipeline_config(workdir)

    result = snakemake(
        workdir, config, "results/real/metrics.json", "results/real/modality_weights.png", "features/real/mfcc_n16.h5"
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir, config


def test_pipeline_metrics_keys(pipeline_run) -> None:
    workdir, _ = pipeline_run
    metrics = json.loads((workdir / "results" / "real" / "metrics.json").read_text())

    assert METRIC_KEYS <= set(metrics)
    assert set(metrics["recall_at_1"]) == {"0.3", "0.5", "0.7"}
    assert metrics["queries_total"] == len(TEST_LINES)
    assert metrics["queries_evaluated"] == 2
    assert metrics["missing_videos"] == ["absent_video"]
    assert 0.0 <= metrics["miou"] <= 100.0


def test_pipeline_protocol_provenance(pipeline_run) -> None:
    workdir, _ = pipeline_run
    protocol = json.loads((workdir / "results" / "real" / "metrics.json").read_text())["protocol"]

    assert protocol["features"]["irv2"]["weights"] == "random-init"
    assert protocol["features"]["soundnet"]["layer"] == "conv7"
    assert protocol["duration_source"] == "probed from the video files"
    assert protocol["videos_not_in_folder"] == ["absent_video"]
    # The two test videos on disk are probed; the absent one falls back to its annotated end.
    assert protocol["annotation_report"]["durations_probed"] == 2
    assert protocol["annotation_report"]["durations_from_annotation_end"] == 1


def test_pipeline_subsampled_rows(pipeline_run) -> None:
    workdir, config = pipeline_run
    steps = config["datasets"]["real"]["steps"]
    sizes = {"irv2": 1536, "c3d": 4096, "soundnet": 1024, "mfcc": 40}

    for extractor, size in sizes.items():
        with h5py.File(workdir / "features" / "real" / f"{extractor}_n{steps}.h5", "r") as artifact:
            assert sorted(artifact) == sorted(VIDEOS), extractor
            for video_id in VIDEOS:
                assert artifact[video_id]["features"].shape == (steps, size), (extractor, video_id)


def test_pipeline_no_audio_flag(pipeline_run) -> None:
    workdir, config = pipeline_run
    steps = config["datasets"]["real"]["steps"]

    with h5py.File(workdir / "features" / "real" / f"soundnet_n{steps}.h5", "r") as artifact:
        silent = artifact["jPBxl9gFqNY_110_117"]
        assert not bool(silent.attrs["has_audio"])
        assert float(abs(silent["features"][()]).max()) == 0.0
        assert bool(artifact["video9149"].attrs["has_audio"])
        assert float(abs(artifact["video9149"]["features"][()]).max()) > 0.0


def test_pipeline_predictions_weights(pipeline_run) -> None:
    workdir, config = pipeline_run
    predictions = json.loads((workdir / "results" / "real" / "predictions.json").read_text())
    steps = config["datasets"]["real"]["steps"]

    assert len(predictions["pair_names"]) == 9
    for entry in predictions["queries"]:
        assert 0.0 <= entry["start"] <= entry["end"] <= entry["duration"] + 1e-6
        assert len(entry["relevance"]) == steps
        assert len(entry["alpha"]) == steps
        assert abs(sum(entry["alpha"][0]) - 1.0) < 1e-3
    assert (workdir / "results" / "real" / "modality_weights.png").stat().st_size > 0


def test_rerun_nothing_after_run(pipeline_run) -> None:
    workdir, config = pipeline_run
    result = snakemake(workdir, config, "-n", "results/real/metrics.json")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_rerun_steps_skips_extraction(pipeline_run) -> None:
    workdir, config = pipeline_run
    changed = copy.deepcopy(config)
    changed["datasets"]["real"]["steps"] = 8

    jobs = dry_run_jobs(workdir, changed, "results/real/metrics.json")

    assert jobs["subsample_features"] == 3
    assert jobs["train_localizer"] == 1
    assert jobs["evaluate_localizer"] == 1
    for rule in ("decode_videos", "extract_irv2", "extract_c3d", "extract_soundnet", "merge_features"):
        assert rule not in jobs, rule


def test_rerun_training_setting(pipeline_run) -> None:
    workdir, config = pipeline_run
    changed = copy.deepcopy(config)
    changed["datasets"]["real"]["localizer"]["learning_rate"] = 0.001

    jobs = dry_run_jobs(workdir, changed, "results/real/metrics.json")

    assert set(jobs) == {"train_localizer", "predict_localizer", "evaluate_localizer"}


def test_rerun_sentence_edit_skips_extraction(pipeline_run) -> None:
    workdir, config = pipeline_run
    annotations = workdir / "test.txt"
    original, status = annotations.read_text(), annotations.stat()
    annotations.write_text(original.replace("a fire burns in a fireplace.", "a fire burns in the fireplace."))

    try:
        jobs = dry_run_jobs(workdir, config, "results/real/metrics.json")
    finally:
        annotations.write_text(original)
        os.utime(annotations, ns=(status.st_atime_ns, status.st_mtime_ns))

    assert "evaluate_localizer" in jobs
    assert set(jobs) <= {"train_localizer", "predict_localizer", "evaluate_localizer"}


def test_rerun_forcerun_mfcc(pipeline_run) -> None:
    workdir, config = pipeline_run

    jobs = dry_run_jobs(workdir, config, "--forcerun", "extract_mfcc", "--", "features/real/mfcc_n16.h5")

    # Shards cut all annotated ids, the absent video's included: ceil(5 / 2) = 3.
    assert jobs["extract_mfcc"] == 3
    assert jobs["merge_features"] == 1
    assert jobs["subsample_features"] == 1
    assert "extract_irv2" not in jobs
    assert "decode_videos" not in jobs
