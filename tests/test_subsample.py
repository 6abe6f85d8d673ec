"""Tests of aligning feature sequences to N time steps and of subsampled artifacts."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from extractors.artifacts import artifact_attributes, read_file_attributes, write_video_group
from extractors.subsample import align_to_steps, read_subsampled, subsample_artifact


def column(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


# ---------------------------------------------------------------------------------------------
# align_to_steps


def test_align_means_hand_computed():
    # duration 4 s, 4 steps of 1 s: [0, 1), [1, 2), [2, 3), [3, 4].
    features = np.array([[1, 10], [3, 30], [5, 50], [7, 70], [9, 90], [11, 110]], np.float32)
    times = np.array([0.0, 0.5, 1.2, 2.4, 2.6, 3.9])
    aligned, centres, filled = align_to_steps(features, times, 4.0, 4)
    expected = np.array([[2, 20], [5, 50], [8, 80], [11, 110]], np.float32)
    np.testing.assert_array_equal(aligned, expected)
    np.testing.assert_allclose(centres, [0.5, 1.5, 2.5, 3.5])
    assert filled == 0
    assert aligned.dtype == np.float32


def test_align_edge_goes_to_later_step():
    aligned, _, _ = align_to_steps(column([1.0, 2.0, 4.0]), np.array([0.0, 1.0, 2.0]), 2.0, 2)
    # t = 1.0 is the edge between steps 0 and 1; t = 2.0 is the duration (last step).
    assert aligned[0, 0] == 1.0
    assert aligned[1, 0] == 3.0


def test_align_clamps_times_outside_duration():
    times = np.array([-0.5, 0.2, 1.7, 2.5])
    aligned, _, filled = align_to_steps(column([2.0, 4.0, 10.0, 20.0]), times, 2.0, 2)
    assert aligned[0, 0] == 3.0
    assert aligned[1, 0] == 15.0
    assert filled == 0


def test_align_fills_empty_step_with_nearest():
    # 5 steps of 2 s over 10 s; vectors only in steps 0 and 4.
    times = np.array([0.5, 9.0])
    aligned, centres, filled = align_to_steps(column([1.0, 5.0]), times, 10.0, 5)
    np.testing.assert_allclose(centres, [1, 3, 5, 7, 9])
    # Centre 3 is nearest to t=0.5, centre 7 to t=9.0; centre 5 is 4.5 from t=0.5 and
    # 4.0 from t=9.0.
    np.testing.assert_array_equal(aligned[:, 0], [1.0, 1.0, 5.0, 5.0, 5.0])
    assert filled == 3


def test_align_nearest_tie_takes_earlier():
    aligned, _, filled = align_to_steps(column([1.0, 2.0]), np.array([0.5, 2.5]), 3.0, 3)
    # Step 1 (centre 1.5) is 1.0 from both vectors.
    assert aligned[1, 0] == 1.0
    assert filled == 1


def test_align_exact_rows_for_many_steps():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((7, 3)).astype(np.float32)
    aligned, centres, filled = align_to_steps(features, np.linspace(0, 6, 7), 6.5, 128)
    assert aligned.shape == (128, 3)
    assert centres.shape == (128,)
    assert filled == 128 - 7


def test_align_single_vector():
    aligned, _, filled = align_to_steps(column([3.0]), np.array([0.0]), 1.0, 4)
    np.testing.assert_array_equal(aligned[:, 0], [3.0] * 4)
    assert filled == 3


def test_align_unsorted_times():
    aligned, _, _ = align_to_steps(column([4.0, 2.0, 6.0]), np.array([1.5, 0.2, 0.4]), 2.0, 2)
    assert aligned[0, 0] == 4.0
    assert aligned[1, 0] == 4.0


def test_align_rejects_empty():
    with pytest.raises(ValueError, match="T == 0"):
        align_to_steps(np.zeros((0, 4), np.float32), np.zeros(0), 2.0, 4)


def test_align_rejects_bad_arguments():
    with pytest.raises(ValueError, match="duration"):
        align_to_steps(column([1.0]), np.array([0.0]), 0.0, 4)
    with pytest.raises(ValueError, match="steps"):
        align_to_steps(column([1.0]), np.array([0.0]), 1.0, 0)
    with pytest.raises(ValueError, match="times must have shape"):
        align_to_steps(column([1.0, 2.0]), np.array([0.0]), 1.0, 2)
    with pytest.raises(ValueError, match="finite"):
        align_to_steps(column([1.0]), np.array([np.nan]), 1.0, 2)


# ---------------------------------------------------------------------------------------------
# subsample_artifact


def video_attrs(extractor: str, sample_rate: int, duration: float, has_audio: bool) -> dict:
    return {
        "extractor": extractor,
        "weights": "random-init",
        "weights_sha256": "random-init",
        "layer": "test",
        "fps": 0.0 if sample_rate else 2.0,
        "clip_length": 0 if sample_rate else 1,
        "stride": 0 if sample_rate else 1,
        "sample_rate": sample_rate,
        "preprocessing": "{}",
        "duration": duration,
        "has_audio": has_audio,
    }


def write_features(path, groups: dict[str, tuple[np.ndarray, np.ndarray, dict]]) -> None:
    with h5py.File(path, "w") as h5file:
        h5file.attrs.update(artifact_attributes("features"))
        for video_id, (features, times, attrs) in groups.items():
            write_video_group(
                h5file, video_id, {"features": features, "times": times}, attrs, "float32"
            )


def test_subsample_artifact_video_groups(tmp_path):
    source = tmp_path / "irv2.h5"
    output = tmp_path / "irv2_n4.h5"
    features = np.array([[1, 10], [3, 30], [5, 50], [7, 70], [9, 90], [11, 110]], np.float32)
    times = np.array([0.0, 0.5, 1.2, 2.4, 2.6, 3.9])
    write_features(
        source,
        {
            "a video": (features, times, video_attrs("irv2", 0, 4.0, True)),
            "-dash 'q' é": (column([1.0, 3.0]), np.array([0.1, 0.2]), video_attrs("irv2", 0, 2.0, False)),
        },
    )
    subsample_artifact(source, output, steps=4, dtype="float32")

    assert not (tmp_path / "irv2_n4.h5.tmp").exists()
    assert read_file_attributes(output)["artifact"] == "subsampled"
    with h5py.File(output, "r") as h5file:
        assert sorted(h5file.keys()) == ["-dash 'q' é", "a video"]
        group = h5file["a video"]
        np.testing.assert_array_equal(group["features"][()], [[2, 20], [5, 50], [8, 80], [11, 110]])
        np.testing.assert_allclose(group["times"][()], [0.5, 1.5, 2.5, 3.5])
        assert group.attrs["steps"] == 4
        assert group.attrs["filled_steps"] == 0
        assert group.attrs["extractor"] == "irv2"
        assert group.attrs["duration"] == 4.0
        assert group["features"].compression == "gzip"
        assert group["features"].chunks is not None

        other = h5file["-dash 'q' é"]
        # A frame extractor's features are kept when the video has no audio. Step 0 is the
        # mean of both vectors; the empty steps take the vector nearest to their centre,
        # the one at t=0.2.
        np.testing.assert_array_equal(other["features"][()][:, 0], [2.0, 3.0, 3.0, 3.0])
        assert other.attrs["filled_steps"] == 3
        assert not other.attrs["has_audio"]


def test_subsample_artifact_zero_audio(tmp_path, caplog):
    source = tmp_path / "soundnet.h5"
    output = tmp_path / "soundnet_n8.h5"
    write_features(
        source,
        {
            "silent": (np.zeros((0, 5), np.float32), np.zeros(0), video_attrs("soundnet", 22050, 3.0, False)),
            "flagged": (np.ones((4, 5), np.float32), np.arange(4.0), video_attrs("soundnet", 22050, 3.0, False)),
            "loud": (np.ones((4, 5), np.float32), np.arange(4.0), video_attrs("soundnet", 22050, 3.0, True)),
        },
    )
    with caplog.at_level(logging.WARNING, logger="extractors.subsample"):
        subsample_artifact(source, output, steps=8, dtype="float16")

    with h5py.File(output, "r") as h5file:
        for video_id in ("silent", "flagged"):
            group = h5file[video_id]
            assert group["features"].shape == (8, 5)
            assert not group["features"][()].any()
            assert not group.attrs["has_audio"]
            assert group["times"].shape == (8,)
        loud = h5file["loud"]
        assert loud["features"].dtype == np.float16
        np.testing.assert_array_equal(loud["features"][()], np.ones((8, 5)))
        assert loud.attrs["has_audio"]
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "'silent'" in warned
    assert "'flagged'" in warned
    assert "'loud'" not in warned


def test_subsample_artifact_rejects_empty_video_group(tmp_path):
    source = tmp_path / "c3d.h5"
    write_features(
        source, {"short": (np.zeros((0, 3), np.float32), np.zeros(0), video_attrs("c3d", 0, 1.0, True))}
    )
    with pytest.raises(ValueError, match="'short' has no feature rows"):
        subsample_artifact(source, tmp_path / "out.h5", steps=4, dtype="float32")
    assert not (tmp_path / "out.h5").exists()
    assert not (tmp_path / "out.h5.tmp").exists()


def test_subsample_artifact_rejects_wrong_kind(tmp_path):
    source = tmp_path / "decoded.h5"
    with h5py.File(source, "w") as h5file:
        h5file.attrs.update(artifact_attributes("decoded"))
    with pytest.raises(ValueError, match="expected a features artifact"):
        subsample_artifact(source, tmp_path / "out.h5", steps=4, dtype="float32")


def test_read_subsampled_selected_ids(tmp_path):
    source = tmp_path / "irv2.h5"
    output = tmp_path / "irv2_n2.h5"
    write_features(
        source,
        {
            "a": (column([1.0, 3.0]), np.array([0.1, 1.5]), video_attrs("irv2", 0, 2.0, True)),
            "b": (column([5.0]), np.array([0.0]), video_attrs("irv2", 0, 2.0, True)),
        },
    )
    subsample_artifact(source, output, steps=2, dtype="float16")
    everything = read_subsampled(output)
    assert sorted(everything) == ["a", "b"]
    np.testing.assert_array_equal(everything["a"][:, 0], [1.0, 3.0])
    assert everything["a"].dtype == np.float32
    only_b = read_subsampled(output, ["b"])
    assert list(only_b) == ["b"]
    with pytest.raises(KeyError, match="'c' not found"):
        read_subsampled(output, ["c"])
    with pytest.raises(ValueError, match="expected a subsampled artifact"):
        read_subsampled(source)
