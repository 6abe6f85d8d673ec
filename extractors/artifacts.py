"""HDF5 artifacts of the pipeline: layout, atomic writes, per-video parts, merging, failed.tsv.

Every artifact is one HDF5 file with one group per video at the root, named by the video id
(the exact file stem, any characters except `/`). File attributes: `artifact` (`decoded`,
`features` or `subsampled`), `pmi_video_version` and `created_at` (ISO 8601 UTC).

Datasets of a video group and their storage types:
- `features` `(T, D)`: the configured feature dtype (float16 or float32).
- `times` `(T,)`: float64, seconds from the start of the video.
- `audio` `(samples,)`: float32 mono waveform, empty when the video has no audio stream.

A job never leaves a file that looks complete: `atomic_output` writes `<path>.tmp` and renames
it, and `PartsStore` keeps one finished HDF5 file per video under `<output>.parts/` so that a
killed job resumes from the videos it had finished.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

logger = logging.getLogger(__name__)

# Version of the artifact layout written into every file as `pmi_video_version`.
PMI_VIDEO_VERSION = "0.1.0"

ARTIFACT_KINDS = ("decoded", "features", "subsampled")
FEATURE_DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}

# Storage type of every dataset other than `features`, whose type comes from the config.
FIXED_DATASET_DTYPES: dict[str, type[np.floating]] = {"times": np.float64, "audio": np.float32}

# gzip level from 1 (fastest) to 9 (smallest). 4 is a middle setting, not a measured optimum.
# The byte-shuffle filter runs before gzip, which groups the exponent bytes of floats together.
GZIP_LEVEL = 4

FAILED_COLUMNS = ("video_id", "path", "stage", "reason")

# Longest hex-encoded id used directly as a part file name: 240 characters plus ".h5" stays
# under the 255-byte name limit of ext4, XFS and APFS. Longer ids are stored under a hash.
_MAX_HEX_NAME = 240
_HASHED_PREFIX = "sha256-"
_PART_SUFFIX = ".h5"
_PARTS_SETTINGS = "settings.json"
_PARTS_FAILED = "failed.tsv"


# ---------------------------------------------------------------------------------------------
# Atomic writes


def temporary_path(path: Path | str) -> Path:
    """Return `<path>.tmp`, the name a file is written under before it is renamed to `path`."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield `<path>.tmp` to write to and rename it to `path` when the block succeeds.

    The temporary file is removed when the block raises, and a leftover temporary file from a
    killed run is removed before the block starts. The parent folder is created if needed.
    """
    path = Path(path)
    tmp = temporary_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)

    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    if not tmp.exists():
        raise FileNotFoundError(f"{tmp} was not written, so {path} cannot be created from it")
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    """Flush `path` to disk, so that a rename after it never exposes a half-written file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Video groups


def check_video_id(video_id: str) -> None:
    """Raise ValueError when `video_id` cannot name an HDF5 group.

    HDF5 splits names at `/`, `.` is the group itself, and names are stored as UTF-8.
    """
    if not isinstance(video_id, str) or video_id in ("", "."):
        raise ValueError(f"invalid video id {video_id!r}: it must be a non-empty string, not '.'")
    if "/" in video_id:
        raise ValueError(f"invalid video id {video_id!r}: it must not contain '/'")
    try:
        video_id.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"invalid video id {video_id!r}: it is not valid UTF-8 ({error})"
        ) from error


def artifact_attributes(kind: str) -> dict[str, str]:
    """Return the file attributes of a new artifact of `kind` (decoded, features, subsampled)."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"invalid artifact kind {kind!r}: expected one of {ARTIFACT_KINDS}")
    created_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"artifact": kind, "pmi_video_version": PMI_VIDEO_VERSION, "created_at": created_at}


def _storage_dtype(name: str, feature_dtype: str) -> type[np.floating]:
    if name == "features":
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(
                f"invalid feature dtype {feature_dtype!r}: expected one of {sorted(FEATURE_DTYPES)}"
            )
        return FEATURE_DTYPES[feature_dtype]
    if name in FIXED_DATASET_DTYPES:
        return FIXED_DATASET_DTYPES[name]
    expected = ["features", *FIXED_DATASET_DTYPES]
    raise ValueError(f"invalid dataset name {name!r}: expected one of {expected}")


def _check_attribute(video_id: str, key: str, value: Any) -> None:
    allowed = (str, bool, int, float, np.bool_, np.integer, np.floating)
    if not isinstance(value, allowed):
        raise TypeError(
            f"invalid attribute {key!r} of video {video_id!r}: type {type(value).__name__} is not "
            "str, bool, int or float (encode mappings as JSON strings)"
        )


def write_video_group(
    h5file: h5py.File | h5py.Group,
    video_id: str,
    datasets: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    dtype: str = "float32",
) -> h5py.Group:
    """Write one video as a group of `h5file` with chunked, gzip-compressed datasets.

    `datasets` maps `features` (T, D), `times` (T,) and `audio` (samples,) to arrays;
    `features` is stored as `dtype` (float16 or float32), `times` as float64 and `audio` as
    float32. Raises ValueError for an invalid id, an unknown dataset name, or features beyond
    the float16 range when `dtype` is float16.
    """
    check_video_id(video_id)
    if video_id in h5file:
        raise ValueError(f"video {video_id!r} is already in {h5file.file.filename}")
    for key, value in attrs.items():
        _check_attribute(video_id, key, value)

    group = h5file.create_group(video_id)
    for name, array in datasets.items():
        storage = _storage_dtype(name, dtype)
        values = np.asarray(array)
        if storage is np.float16 and values.size:
            largest = float(np.nanmax(np.abs(values)))
            float16_max = float(np.finfo(np.float16).max)
            if largest > float16_max:
                raise ValueError(
                    f"features of video {video_id!r} reach {largest:g}, beyond the float16 "
                    f"maximum {float16_max:g}; set feature_dtype: float32"
                )
        group.create_dataset(
            name,
            data=values.astype(storage, copy=False),
            chunks=True,
            compression="gzip",
            compression_opts=GZIP_LEVEL,
            shuffle=True,
        )
    for key, value in attrs.items():
        group.attrs[key] = value
    return group


def _python_value(value: Any) -> Any:
    """Convert an attribute as h5py returns it (NumPy scalars, bytes) to a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class VideoGroup:
    """One video read from an artifact: its arrays by dataset name and its attributes."""

    video_id: str
    datasets: dict[str, np.ndarray]
    attrs: dict[str, Any]


def read_video_group(
    source: h5py.File | h5py.Group | Path | str,
    video_id: str,
    datasets: Iterable[str] | None = None,
) -> VideoGroup:
    """Read the group of `video_id` from an open artifact or an artifact path.

    `datasets` limits which arrays are loaded (all of them when None); attributes are
    returned as plain Python values. Raises KeyError naming the file when the video is absent.
    """
    if isinstance(source, (str, Path)):
        with h5py.File(source, "r") as h5file:
            return read_video_group(h5file, video_id, datasets)

    if video_id not in source:
        raise KeyError(f"video {video_id!r} not found in {source.file.filename}")
    group = source[video_id]
    names = list(group.keys()) if datasets is None else list(datasets)
    arrays = {}
    for name in names:
        if name not in group:
            raise KeyError(
                f"dataset {name!r} of video {video_id!r} not found in {source.file.filename}"
            )
        arrays[name] = group[name][()]
    attrs = {key: _python_value(value) for key, value in group.attrs.items()}
    return VideoGroup(video_id=video_id, datasets=arrays, attrs=attrs)


def list_videos(path: Path | str) -> list[str]:
    """Return the sorted video ids (group names) of the artifact at `path`."""
    with h5py.File(path, "r") as h5file:
        return sorted(h5file.keys())


def read_file_attributes(path: Path | str) -> dict[str, Any]:
    """Return the file attributes (artifact, pmi_video_version, created_at) of an artifact."""
    with h5py.File(path, "r") as h5file:
        return {key: _python_value(value) for key, value in h5file.attrs.items()}


# ---------------------------------------------------------------------------------------------
# failed.tsv


@dataclass(frozen=True)
class FailedVideo:
    """One row of failed.tsv: a video left out of an artifact, the stage and the reason."""

    video_id: str
    path: str
    stage: str
    reason: str


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _escape_field(text: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in text)


def _unescape_field(text: str, path: Path, line_number: int) -> str:
    chars = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            code = text[position + 1 : position + 2]
            if code not in _UNESCAPES:
                raise ValueError(f"{path}:{line_number}: invalid escape '\\{code}'")
            chars.append(_UNESCAPES[code])
            position += 2
        else:
            chars.append(char)
            position += 1
    return "".join(chars)


def write_failed_tsv(path: Path | str, rows: Iterable[FailedVideo]) -> None:
    """Write failed.tsv atomically: a header line, then one line per row.

    Backslash, tab, newline and carriage return inside a field are written as `\\\\`, `\\t`,
    `\\n` and `\\r`, so every row stays on one line with four fields.
    """
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("\t".join(FAILED_COLUMNS) + "\n")
        for row in rows:
            fields = (row.video_id, str(row.path), row.stage, row.reason)
            handle.write("\t".join(_escape_field(field) for field in fields) + "\n")


def read_failed_tsv(path: Path | str) -> list[FailedVideo]:
    """Read a failed.tsv written by `write_failed_tsv`; raises ValueError on a malformed line."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="\n") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    if not lines or tuple(lines[0].split("\t")) != FAILED_COLUMNS:
        raise ValueError(f"{path}: invalid header, expected {chr(9).join(FAILED_COLUMNS)!r}")

    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(FAILED_COLUMNS):
            raise ValueError(
                f"{path}:{line_number}: expected {len(FAILED_COLUMNS)} tab-separated fields, "
                f"found {len(fields)}"
            )
        values = [_unescape_field(field, path, line_number) for field in fields]
        rows.append(FailedVideo(*values))
    return rows


# ---------------------------------------------------------------------------------------------
# Per-video parts of an interrupted job


def _part_file_name(video_id: str) -> str:
    """Encode `video_id` as a file name that any file system accepts.

    Hex of the UTF-8 bytes survives case-insensitive file systems and never starts with a dash.
    Ids too long for that are named by their SHA-256, and the id is read from the group inside.
    """
    encoded = video_id.encode("utf-8").hex()
    if len(encoded) <= _MAX_HEX_NAME:
        return encoded + _PART_SUFFIX
    return _HASHED_PREFIX + hashlib.sha256(video_id.encode("utf-8")).hexdigest() + _PART_SUFFIX


class PartsStore:
    """Finished videos of one job, one HDF5 file each under `<output>.parts/`.

    Each part is written as `<part>.tmp`, flushed to disk and renamed, so a file with the
    final name is always complete. `settings` (JSON-serialisable) records what the parts were
    computed with. Opening the store deletes parts left by a run with other settings, with a
    warning, so a resumed job never mixes two configurations. Failed videos are recorded
    too, so a resumed job does not retry them.
    """

    def __init__(self, output: Path | str, settings: Mapping[str, Any] | None = None) -> None:
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".parts")
        self._settings = json.dumps(settings or {}, sort_keys=True, default=str)
        self._open()

    def _open(self) -> None:
        settings_path = self.folder / _PARTS_SETTINGS
        if self.folder.exists():
            previous = settings_path.read_text(encoding="utf-8") if settings_path.exists() else None
            if previous is not None and previous != self._settings:
                logger.warning(
                    "deleting %s: its parts were computed with other settings (%s, now %s)",
                    self.folder, previous, self._settings,
                )
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

        for leftover in self.folder.glob("*.tmp"):
            leftover.unlink()
        if not settings_path.exists():
            with atomic_output(settings_path) as tmp:
                tmp.write_text(self._settings, encoding="utf-8")

    def _part_paths(self) -> list[Path]:
        return sorted(path for path in self.folder.glob("*" + _PART_SUFFIX) if path.is_file())

    @staticmethod
    def _video_id_of(part: Path) -> str:
        name = part.name[: -len(_PART_SUFFIX)]
        if name.startswith(_HASHED_PREFIX):
            with h5py.File(part, "r") as h5file:
                return next(iter(h5file.keys()))
        return bytes.fromhex(name).decode("utf-8")

    def done_ids(self) -> set[str]:
        """Return the ids of the videos whose part is complete."""
        return {self._video_id_of(part) for part in self._part_paths()}

    def write(
        self,
        video_id: str,
        datasets: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any],
        feature_dtype: str = "float32",
    ) -> Path:
        """Write the part of one video (see `write_video_group`) and return its path."""
        check_video_id(video_id)
        part = self.folder / _part_file_name(video_id)
        tmp = temporary_path(part)
        try:
            with h5py.File(tmp, "w") as h5file:
                write_video_group(h5file, video_id, datasets, attrs, feature_dtype)
            _fsync_file(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, part)
        return part

    def failures(self) -> list[FailedVideo]:
        """Return the failures recorded so far, in the order they were added."""
        path = self.folder / _PARTS_FAILED
        return read_failed_tsv(path) if path.exists() else []

    def add_failure(self, row: FailedVideo) -> None:
        """Record a failed video, rewriting the store's failure list atomically."""
        write_failed_tsv(self.folder / _PARTS_FAILED, [*self.failures(), row])

    def assemble(self, output: Path | str, file_attrs: Mapping[str, Any]) -> None:
        """Write every part into the artifact `output` in sorted id order, then delete the parts.

        `output` is written through `atomic_output`, so it appears only once it is complete.
        """
        parts = {self._video_id_of(part): part for part in self._part_paths()}
        with atomic_output(output) as tmp, h5py.File(tmp, "w") as destination:
            for key, value in file_attrs.items():
                destination.attrs[key] = value
            for video_id in sorted(parts):
                with h5py.File(parts[video_id], "r") as source:
                    source.copy(source[video_id], destination, name=video_id)
        shutil.rmtree(self.folder)
        logger.info("wrote %d videos to %s", len(parts), output)


# ---------------------------------------------------------------------------------------------
# Merging shards


def merge_shards(
    shard_paths: Sequence[Path | str],
    failed_paths: Sequence[Path | str],
    output: Path | str,
    failed_output: Path | str,
) -> None:
    """Copy the video groups of all shard artifacts into `output` and join their failed.tsv files.

    All shards must be artifacts of the same kind. Raises ValueError when a video id occurs in
    two shards, naming both files. Both outputs are written atomically.
    """
    if not shard_paths:
        raise ValueError("merge_shards needs at least one shard artifact")

    kinds = {}
    for shard in shard_paths:
        kinds[str(shard)] = read_file_attributes(shard).get("artifact")
    if len(set(kinds.values())) != 1:
        raise ValueError(f"shards are artifacts of different kinds: {kinds}")
    kind = next(iter(kinds.values()))

    owner: dict[str, str] = {}
    with atomic_output(output) as tmp, h5py.File(tmp, "w") as destination:
        for key, value in artifact_attributes(kind).items():
            destination.attrs[key] = value
        for shard in shard_paths:
            with h5py.File(shard, "r") as source:
                for video_id in sorted(source.keys()):
                    if video_id in owner:
                        raise ValueError(
                            f"video {video_id!r} is in two shards: {owner[video_id]} and {shard}"
                        )
                    owner[video_id] = str(shard)
                    source.copy(source[video_id], destination, name=video_id)

    rows: list[FailedVideo] = []
    for failed in failed_paths:
        rows.extend(read_failed_tsv(failed))
    write_failed_tsv(failed_output, rows)
    logger.info(
        "merged %d videos from %d shards into %s; %d failed videos listed in %s",
        len(owner), len(shard_paths), output, len(rows), failed_output,
    )
