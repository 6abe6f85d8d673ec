"""Tests of the HDF5 artifact layer: atomic writes, video groups, parts, failed.tsv, merging."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from extractors.artifacts import (
    FAILED_COLUMNS,
    PMI_VIDEO_VERSION,
    FailedVideo,
    PartsStore,
    artifact_attributes,
    atomic_output,
    list_videos,
    merge_shards,
    read_failed_tsv,
    read_file_attributes,
    read_video_group,
    write_failed_tsv,
    write_video_group,
)

# Ids a file stem can take: spaces, quotes, non-ASCII, a leading dash, tab, newline, backslash.
UNUSUAL_IDS = [
    "plain",
    "with space",
    "quote's \"double\"",
    "café 動画",
    "-leading-dash",
    "tab\there",
    "new\nline",
    "back\\slash",
    "..",
]


def feature_arrays(seed: int, steps: int = 5, dim: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "features": rng.standard_normal((steps, dim)).astype(np.float32),
        "times": np.arange(steps, dtype=np.float64) * 0.5,
    }


def write_artifact(path, videos: dict[str, dict[str, np.ndarray]], kind: str = "features") -> None:
    with h5py.File(path, "w") as h5file:
        h5file.attrs.update(artifact_attributes(kind))
        for video_id, arrays in videos.items():
            write_video_group(h5file, video_id, arrays, {"duration": 2.5, "has_audio": True})


# ---------------------------------------------------------------------------------------------
# atomic_output


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as tmp:
        assert tmp.name == "out.txt.tmp"
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert not tmp.exists()


def test_atomic_output_removes_tmp_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert not tmp.exists()


def test_atomic_output_clears_stale_tmp(tmp_path):
    target = tmp_path / "out.txt"
    stale = tmp_path / "out.txt.tmp"
    stale.write_text("left by a killed run")
    with atomic_output(target) as tmp:
        assert not tmp.exists()
        tmp.write_text("fresh")
    assert target.read_text() == "fresh"


def test_atomic_output_unwritten_tmp(tmp_path):
    with pytest.raises(FileNotFoundError, match="was not written"):
        with atomic_output(tmp_path / "out.txt"):
            pass


# ---------------------------------------------------------------------------------------------
# Video groups


def test_group_roundtrip_values_and_types(tmp_path):
    path = tmp_path / "a.h5"
    features = np.array([[0.1, -2.0], [3.25, 1000.0]], dtype=np.float64)
    times = np.array([0.0, 0.5], dtype=np.float32)
    attrs = {"extractor": "irv2", "fps": 2.0, "stride": 0, "has_audio": False, "path": "vidéo 1.mp4"}
    with h5py.File(path, "w") as h5file:
        write_video_group(h5file, "v1", {"features": features, "times": times}, attrs, "float16")

    group = read_video_group(path, "v1")
    assert group.datasets["features"].dtype == np.float16
    assert group.datasets["times"].dtype == np.float64
    np.testing.assert_allclose(group.datasets["features"], features, rtol=1e-3)
    np.testing.assert_array_equal(group.datasets["times"], [0.0, 0.5])
    assert group.attrs == attrs
    assert type(group.attrs["has_audio"]) is bool
    assert type(group.attrs["stride"]) is int
    assert type(group.attrs["fps"]) is float


def test_group_float32_features_exact(tmp_path):
    path = tmp_path / "a.h5"
    arrays = feature_arrays(seed=1)
    with h5py.File(path, "w") as h5file:
        write_video_group(h5file, "v", arrays, {}, "float32")
    group = read_video_group(path, "v")
    np.testing.assert_array_equal(group.datasets["features"], arrays["features"])


def test_group_storage_chunked_gzip(tmp_path):
    path = tmp_path / "a.h5"
    audio = np.sin(np.linspace(0, 100, 22050)).astype(np.float64)
    with h5py.File(path, "w") as h5file:
        write_video_group(h5file, "v", {"audio": audio, **feature_arrays(seed=2)}, {}, "float16")
    with h5py.File(path, "r") as h5file:
        for name in ("audio", "features", "times"):
            dataset = h5file["v"][name]
            assert dataset.chunks is not None, name
            assert dataset.compression == "gzip", name
        assert h5file["v"]["audio"].dtype == np.float32


def test_group_empty_audio(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5file:
        write_video_group(h5file, "silent", {"audio": np.zeros(0, np.float32)}, {"has_audio": False})
    group = read_video_group(path, "silent")
    assert group.datasets["audio"].shape == (0,)
    assert group.attrs["has_audio"] is False


def test_group_float16_overflow_rejected(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5file:
        with pytest.raises(ValueError, match="feature_dtype: float32"):
            write_video_group(h5file, "v", {"features": np.full((2, 2), 1e6)}, {}, "float16")


def test_group_unknown_dataset_rejected(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5file:
        with pytest.raises(ValueError, match="'logits'"):
            write_video_group(h5file, "v", {"logits": np.zeros(3)}, {})


def test_group_unknown_dtype_rejected(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5file:
        with pytest.raises(ValueError, match="'float64'"):
            write_video_group(h5file, "v", {"features": np.zeros((1, 1))}, {}, "float64")


def test_group_dict_attribute_rejected(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5file:
        with pytest.raises(TypeError, match="JSON"):
            write_video_group(h5file, "v", {}, {"preprocessing": {"mean": 1}})


@pytest.mark.parametrize("video_id", ["", ".", "a/b"])
def test_group_invalid_id_rejected(tmp_path, video_id):
    with h5py.File(tmp_path / "a.h5", "w") as h5file:
        with pytest.raises(ValueError, match="invalid video id"):
            write_video_group(h5file, video_id, {}, {})


def test_group_duplicate_id_rejected(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5file:
        write_video_group(h5file, "v", {}, {})
        with pytest.raises(ValueError, match="already in"):
            write_video_group(h5file, "v", {}, {})


def test_group_unusual_ids_roundtrip(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5file:
        for seed, video_id in enumerate(UNUSUAL_IDS):
            write_video_group(h5file, video_id, feature_arrays(seed), {"index": seed})
    assert list_videos(path) == sorted(UNUSUAL_IDS)
    for seed, video_id in enumerate(UNUSUAL_IDS):
        group = read_video_group(path, video_id)
        assert group.attrs["index"] == seed
        np.testing.assert_array_equal(group.datasets["features"], feature_arrays(seed)["features"])


def test_read_group_selected_datasets(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5file:
        write_video_group(h5file, "v", feature_arrays(0), {"duration": 1.0})
    group = read_video_group(path, "v", datasets=["times"])
    assert list(group.datasets) == ["times"]
    assert group.attrs["duration"] == 1.0


def test_read_group_missing_video(tmp_path):
    path = tmp_path / "a.h5"
    write_artifact(path, {"v": feature_arrays(0)})
    with pytest.raises(KeyError, match="'other' not found in .*a.h5"):
        read_video_group(path, "other")


def test_artifact_attributes_fields():
    attrs = artifact_attributes("decoded")
    assert attrs["artifact"] == "decoded"
    assert attrs["pmi_video_version"] == PMI_VIDEO_VERSION
    assert attrs["created_at"].endswith("+00:00")
    with pytest.raises(ValueError, match="invalid artifact kind"):
        artifact_attributes("raw")


# ---------------------------------------------------------------------------------------------
# failed.tsv


def test_failed_tsv_roundtrip_escapes(tmp_path):
    path = tmp_path / "failed.tsv"
    rows = [
        FailedVideo("tab\tid", "/v/tab\tid.mp4", "decode", "moov atom not found\nInvalid data"),
        FailedVideo("back\\slash", "/v/x.mp4", "extract_c3d", "shorter than one clip (16 frames)"),
        FailedVideo("café", "/v/café.mp4", "decode", "carriage\rreturn"),
    ]
    write_failed_tsv(path, rows)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "\t".join(FAILED_COLUMNS)
    assert len(lines) == 5  # header, three rows, empty string after the final newline
    assert all(line.count("\t") == 3 for line in lines[:-1])
    assert read_failed_tsv(path) == rows


def test_failed_tsv_header_only(tmp_path):
    path = tmp_path / "failed.tsv"
    write_failed_tsv(path, [])
    assert path.read_text() == "video_id\tpath\tstage\treason\n"
    assert read_failed_tsv(path) == []


def test_failed_tsv_bad_header(tmp_path):
    path = tmp_path / "failed.tsv"
    path.write_text("id\treason\n")
    with pytest.raises(ValueError, match="invalid header"):
        read_failed_tsv(path)


def test_failed_tsv_wrong_field_count(tmp_path):
    path = tmp_path / "failed.tsv"
    path.write_text("video_id\tpath\tstage\treason\na\tb\tc\n")
    with pytest.raises(ValueError, match=r"failed.tsv:2: expected 4"):
        read_failed_tsv(path)


# ---------------------------------------------------------------------------------------------
# PartsStore


def test_parts_done_ids_unusual(tmp_path):
    store = PartsStore(tmp_path / "shard0.h5")
    for seed, video_id in enumerate(UNUSUAL_IDS):
        store.write(video_id, feature_arrays(seed), {"index": seed})
    assert store.done_ids() == set(UNUSUAL_IDS)
    names = [path.name for path in store.folder.glob("*.h5")]
    assert not any(name.startswith("-") for name in names)
    assert all(name.isascii() for name in names)


def test_parts_long_id_hashed(tmp_path):
    long_id = "é" * 200  # 400 UTF-8 bytes, more than a file name can hold in hex
    store = PartsStore(tmp_path / "shard0.h5")
    part = store.write(long_id, feature_arrays(0), {})
    assert part.name.startswith("sha256-")
    assert len(part.name) < 255
    assert store.done_ids() == {long_id}


def test_parts_ignore_and_remove_tmp(tmp_path):
    output = tmp_path / "shard0.h5"
    store = PartsStore(output)
    store.write("done", feature_arrays(0), {})
    half = store.folder / ("half".encode().hex() + ".h5.tmp")
    half.write_bytes(b"\x89HDF truncated")
    assert store.done_ids() == {"done"}

    reopened = PartsStore(output)
    assert reopened.done_ids() == {"done"}
    assert not half.exists()


def test_parts_resume_same_settings(tmp_path):
    output = tmp_path / "shard0.h5"
    PartsStore(output, settings={"fps": 2.0}).write("a", feature_arrays(0), {})
    assert PartsStore(output, settings={"fps": 2.0}).done_ids() == {"a"}


def test_parts_cleared_on_new_settings(tmp_path, caplog):
    output = tmp_path / "shard0.h5"
    store = PartsStore(output, settings={"fps": 2.0})
    store.write("a", feature_arrays(0), {})
    store.add_failure(FailedVideo("b", "b.mp4", "decode", "no frames"))

    reopened = PartsStore(output, settings={"fps": 5.0})
    assert reopened.done_ids() == set()
    assert reopened.failures() == []
    assert "other settings" in caplog.text


def test_parts_failures_persist(tmp_path):
    output = tmp_path / "shard0.h5"
    rows = [FailedVideo("b", "b.mp4", "decode", "no frames"), FailedVideo("c", "c.mp4", "decode", "empty")]
    store = PartsStore(output)
    for row in rows:
        store.add_failure(row)
    assert PartsStore(output).failures() == rows


def test_parts_assemble_sorted(tmp_path):
    output = tmp_path / "shard0.h5"
    store = PartsStore(output)
    for seed, video_id in enumerate(["c", "a", "b"]):
        store.write(video_id, feature_arrays(seed), {"seed": seed}, feature_dtype="float16")
    store.assemble(output, artifact_attributes("features"))

    assert not store.folder.exists()
    assert not (tmp_path / "shard0.h5.tmp").exists()
    assert read_file_attributes(output)["artifact"] == "features"
    with h5py.File(output, "r") as h5file:
        assert list(h5file.keys()) == ["a", "b", "c"]
        assert h5file["c"].attrs["seed"] == 0
        assert h5file["c"]["features"].dtype == np.float16
        assert h5file["c"]["features"].compression == "gzip"
    np.testing.assert_allclose(
        read_video_group(output, "a").datasets["features"], feature_arrays(1)["features"], rtol=1e-3
    )


def test_parts_assemble_empty(tmp_path):
    output = tmp_path / "shard0.h5"
    PartsStore(output).assemble(output, artifact_attributes("decoded"))
    assert list_videos(output) == []
    assert read_file_attributes(output)["artifact"] == "decoded"


# ---------------------------------------------------------------------------------------------
# merge_shards


def test_merge_shards_combines(tmp_path):
    shard0, shard1 = tmp_path / "shard0.h5", tmp_path / "shard1.h5"
    write_artifact(shard0, {"a": feature_arrays(0), "b": feature_arrays(1)})
    write_artifact(shard1, {"c d": feature_arrays(2)})
    failed0, failed1 = tmp_path / "shard0.failed.tsv", tmp_path / "shard1.failed.tsv"
    rows0 = [FailedVideo("x", "x.mp4", "decode", "empty file")]
    rows1 = [FailedVideo("y\tz", "y.mp4", "extract_irv2", "no frames")]
    write_failed_tsv(failed0, rows0)
    write_failed_tsv(failed1, rows1)
    output, failed_output = tmp_path / "irv2.h5", tmp_path / "irv2.failed.tsv"

    merge_shards([shard0, shard1], [failed0, failed1], output, failed_output)

    assert list_videos(output) == ["a", "b", "c d"]
    np.testing.assert_array_equal(read_video_group(output, "c d").datasets["features"], feature_arrays(2)["features"])
    assert read_video_group(output, "a").attrs == {"duration": 2.5, "has_audio": True}
    assert read_file_attributes(output)["artifact"] == "features"
    assert read_failed_tsv(failed_output) == rows0 + rows1
    assert failed_output.read_text().count("video_id") == 1


def test_merge_shards_duplicate_id(tmp_path):
    shard0, shard1 = tmp_path / "shard0.h5", tmp_path / "shard1.h5"
    write_artifact(shard0, {"a": feature_arrays(0)})
    write_artifact(shard1, {"a": feature_arrays(1)})
    output = tmp_path / "merged.h5"
    with pytest.raises(ValueError, match=r"'a' is in two shards: .*shard0.h5 and .*shard1.h5"):
        merge_shards([shard0, shard1], [], output, tmp_path / "merged.failed.tsv")
    assert not output.exists()
    assert not (tmp_path / "merged.h5.tmp").exists()


def test_merge_shards_mixed_kinds(tmp_path):
    shard0, shard1 = tmp_path / "shard0.h5", tmp_path / "shard1.h5"
    write_artifact(shard0, {"a": feature_arrays(0)}, kind="features")
    write_artifact(shard1, {"b": {"audio": np.zeros(4)}}, kind="decoded")
    with pytest.raises(ValueError, match="different kinds"):
        merge_shards([shard0, shard1], [], tmp_path / "m.h5", tmp_path / "m.failed.tsv")


def test_merge_shards_none(tmp_path):
    with pytest.raises(ValueError, match="at least one shard"):
        merge_shards([], [], tmp_path / "m.h5", tmp_path / "m.failed.tsv")
