"""Shard jobs of the pipeline: decode the videos of a shard, then run one extractor over them.

Both jobs keep each finished video under `<output>.parts/` (see `extractors.artifacts.PartsStore`),
so a killed job resumes where it stopped, and write the artifact and its failed.tsv only at the
end. A video that cannot be used either stops the job (`on_bad_video: fail`) with an error
naming the file and the reason, or is listed in failed.tsv (`on_bad_video: skip`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from extractors.artifacts import (
    FEATURE_DTYPES,
    FailedVideo,
    PartsStore,
    artifact_attributes,
    check_video_id,
    read_failed_tsv,
    read_file_attributes,
    read_video_group,
    write_failed_tsv,
)
from extractors import registry
from extractors.base import FeatureExtractor, FeatureSequence, VideoInput
from extractors.decode import decode_audio
from extractors.errors import BadVideoError
from extractors.probe import VideoProbe, probe_video
from extractors.video_index import VideoIndexEntry, read_video_index

logger = logging.getLogger(__name__)

BAD_VIDEO_POLICIES = ("skip", "fail")

# Group attributes every extractor must provide (see FeatureExtractor.attributes).
EXTRACTOR_ATTRIBUTES = (
    "extractor",
    "weights",
    "weights_sha256",
    "layer",
    "fps",
    "clip_length",
    "stride",
    "sample_rate",
    "preprocessing",
)


def _check_policy(on_bad_video: str) -> None:
    if on_bad_video not in BAD_VIDEO_POLICIES:
        raise ValueError(
            f"invalid on_bad_video {on_bad_video!r}: expected one of {BAD_VIDEO_POLICIES}"
        )


def _reject_video(
    store: PartsStore, row: FailedVideo, on_bad_video: str, error: Exception | None = None
) -> None:
    """Apply the bad-video policy: raise (fail) or record the video as failed (skip)."""
    if on_bad_video == "fail":
        raise RuntimeError(
            f"{row.stage} failed on {row.path} (video {row.video_id!r}): {row.reason}. "
            "Set on_bad_video: skip to list such videos in failed.tsv and go on."
        ) from error
    logger.warning(
        "skipping video %r (%s) at stage %s: %s", row.video_id, row.path, row.stage, row.reason
    )
    store.add_failure(row)


def _log_summary(job: str, total: int, failures: list[FailedVideo], failed_output: Path) -> None:
    if failures:
        logger.warning(
            "%s: %d of %d videos failed, listed in %s", job, len(failures), total, failed_output
        )
    else:
        logger.info("%s: all %d videos done, none failed", job, total)


def _invalid_id_reason(video_id: str) -> str | None:
    try:
        check_video_id(video_id)
    except ValueError as error:
        return str(error)
    return None


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_shard(
    index_path: Path | str,
    shard: int,
    output: Path | str,
    failed_output: Path | str,
    *,
    sample_rate: int,
    video_stream: int,
    audio_stream: int,
    on_bad_video: str,
) -> None:
    """Probe every video of `shard` in the video index and decode its audio into `output`.

    Each video becomes a group with dataset `audio`: float32 `(samples,)`, mono, at
    `sample_rate` Hz, and empty when the video has no audio stream. Its attributes are path,
    duration (s), probe (JSON of VideoProbe), has_audio and sample_rate. Videos marked
    missing in the index and videos that raise BadVideoError are handled by `on_bad_video`.
    `failed_output` is always written, with only its header when nothing failed.
    """
    _check_policy(on_bad_video)
    if sample_rate <= 0:
        raise ValueError(f"invalid sample_rate {sample_rate}: expected a positive rate in Hz")
    output = Path(output)
    failed_output = Path(failed_output)

    entries = [entry for entry in read_video_index(index_path) if entry.shard == shard]
    counts = collections.Counter(entry.video_id for entry in entries)
    duplicates = sorted(video_id for video_id, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(
            f"{index_path}: video ids listed more than once in shard {shard}: {duplicates}"
        )
    if not entries:
        logger.warning(
            "%s lists no videos in shard %d, so the artifact is empty",
            index_path,
            shard,
        )

    # The listing of the shard is part of the settings, so parts of videos that a changed
    # index moved out of this shard are never assembled into it.
    listing_rows = [[entry.video_id, entry.path, entry.status] for entry in entries]
    listing = hashlib.sha256(json.dumps(listing_rows).encode("utf-8"))
    store = PartsStore(
        output,
        settings={
            "job": "decode",
            "shard": shard,
            "videos_sha256": listing.hexdigest(),
            "sample_rate": sample_rate,
            "video_stream": video_stream,
            "audio_stream": audio_stream,
        },
    )
    finished = store.done_ids() | {row.video_id for row in store.failures()}
    pending = [entry for entry in entries if entry.video_id not in finished]
    if len(pending) < len(entries):
        done = len(entries) - len(pending)
        logger.info("resuming %s: %d of %d videos already done", output, done, len(entries))

    for entry in tqdm(pending, desc=f"decode shard {shard}", unit="video"):
        _decode_one(store, entry, sample_rate, video_stream, audio_stream, on_bad_video)

    failures = sorted(store.failures(), key=lambda row: row.video_id)
    write_failed_tsv(failed_output, failures)
    store.assemble(output, artifact_attributes("decoded"))
    _log_summary(f"decode shard {shard}", len(entries), failures, failed_output)


def _decode_one(
    store: PartsStore,
    entry: VideoIndexEntry,
    sample_rate: int,
    video_stream: int,
    audio_stream: int,
    on_bad_video: str,
) -> None:
    """Decode one index entry into a part, or apply the bad-video policy to it."""
    path = Path(entry.path)

    def reject(reason: str, error: Exception | None = None) -> None:
        row = FailedVideo(entry.video_id, str(path), "decode", reason)
        _reject_video(store, row, on_bad_video, error)

    invalid_reason = _invalid_id_reason(entry.video_id)
    if invalid_reason is not None:
        reject(invalid_reason)
        return
    if entry.status != "found":
        reject("video file not found")
        return

    try:
        probe = probe_video(path, video_stream=video_stream, audio_stream=audio_stream)
        audio = decode_audio(path, probe, sample_rate)
    except BadVideoError as error:
        reject(error.reason, error)
        return

    has_audio = audio is not None
    if not has_audio:
        logger.warning(
            "video %r (%s) has no audio stream, so its audio dataset is empty", entry.video_id, path
        )
        audio = np.zeros(0, dtype=np.float32)

    attrs = {
        "path": str(path),
        "duration": float(probe.duration),
        "probe": probe.to_json(),
        "has_audio": has_audio,
        "sample_rate": int(sample_rate),
    }
    store.write(entry.video_id, {"audio": audio}, attrs)


# ---------------------------------------------------------------------------------------------
# Extraction


def extract_shard(
    extractor_name: str,
    settings: Mapping[str, Any],
    decoded_path: Path | str,
    output: Path | str,
    failed_output: Path | str,
    *,
    decode_failed: Path | str,
    device: Any,
    frame_chunk: int,
    on_bad_video: str,
    feature_dtype: str,
) -> None:
    """Run the extractor `extractor_name` over every video of a decoded shard artifact.

    Each video becomes a group with datasets `features` `(T, D)` stored as `feature_dtype`
    and `times` float64 `(T,)` in seconds, and attributes `extractor.attributes()` plus
    duration (s) and has_audio. The rows of `decode_failed`, the failed.tsv of the decode
    job, are copied into `failed_output`, so videos that failed decoding stay listed.
    Videos whose extraction raises BadVideoError are handled by `on_bad_video`. `device` is
    the torch.device the extractor runs on and `frame_chunk` the frames decoded ahead of it.
    """
    _check_policy(on_bad_video)
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(
            f"invalid feature_dtype {feature_dtype!r}: expected one of {sorted(FEATURE_DTYPES)}"
        )
    decoded_path = Path(decoded_path)
    output = Path(output)
    failed_output = Path(failed_output)
    decoded_attributes = read_file_attributes(decoded_path)
    kind = decoded_attributes.get("artifact")
    if kind != "decoded":
        raise ValueError(f"{decoded_path} is a {kind!r} artifact, expected a decoded artifact")
    decode_failures = read_failed_tsv(decode_failed)

    extractor = registry.build_extractor(extractor_name, settings, device, frame_chunk=frame_chunk)
    attributes = extractor.attributes()
    missing = [key for key in EXTRACTOR_ATTRIBUTES if key not in attributes]
    if missing:
        raise RuntimeError(f"extractor {extractor_name!r} returned attributes without {missing}")

    store = PartsStore(
        output,
        settings={
            "job": "extract",
            "extractor": extractor_name,
            "settings": dict(settings),
            "attributes": attributes,
            "feature_dtype": feature_dtype,
            "decoded": str(decoded_path),
            # A rerun of the decode job gives a new creation time, which invalidates the parts.
            "decoded_created_at": decoded_attributes.get("created_at"),
        },
    )
    stage = f"extract_{extractor_name}"

    with h5py.File(decoded_path, "r") as decoded:
        video_ids = sorted(decoded.keys())
        finished = store.done_ids() | {row.video_id for row in store.failures()}
        pending = [video_id for video_id in video_ids if video_id not in finished]
        if len(pending) < len(video_ids):
            done = len(video_ids) - len(pending)
            logger.info("resuming %s: %d of %d videos already done", output, done, len(video_ids))

        for video_id in tqdm(pending, desc=stage, unit="video"):
            video = _video_input(decoded, video_id, load_audio=extractor.input_kind == "audio")
            try:
                sequence = extractor.extract(video)
            except BadVideoError as error:
                row = FailedVideo(video_id, str(video.path), stage, error.reason)
                _reject_video(store, row, on_bad_video, error)
                continue
            _check_sequence(sequence, extractor, video)

            attrs = {
                **attributes,
                "duration": float(video.probe.duration),
                "has_audio": bool(decoded[video_id].attrs["has_audio"]),
            }
            datasets = {"features": sequence.features, "times": sequence.times}
            store.write(video_id, datasets, attrs, feature_dtype)

    extraction_failures = sorted(store.failures(), key=lambda row: row.video_id)
    failures = [*decode_failures, *extraction_failures]
    write_failed_tsv(failed_output, failures)
    store.assemble(output, artifact_attributes("features"))
    total = len(video_ids) + len(decode_failures)
    _log_summary(f"{stage} on {decoded_path}", total, failures, failed_output)


def _video_input(decoded: h5py.File, video_id: str, load_audio: bool) -> VideoInput:
    """Build the extractor input of one decoded video.

    The waveform is loaded only for audio extractors, because frame extractors decode from
    the file and a 10-minute waveform at 22,050 Hz alone is 53 MB.
    """
    group = read_video_group(decoded, video_id, datasets=["audio"] if load_audio else [])
    attrs = group.attrs
    audio = group.datasets["audio"] if load_audio and attrs["has_audio"] else None
    return VideoInput(
        video_id=video_id,
        path=Path(attrs["path"]),
        probe=VideoProbe.from_json(attrs["probe"]),
        audio=audio,
        sample_rate=int(attrs["sample_rate"]),
    )


def _check_sequence(
    sequence: FeatureSequence, extractor: FeatureExtractor, video: VideoInput
) -> None:
    """Raise RuntimeError for features of the wrong size or non-finite features or times."""
    if sequence.features.shape[1] != extractor.dim:
        raise RuntimeError(
            f"extractor {extractor.name!r} returned {sequence.features.shape[1]}-d features for "
            f"{video.path}, but declares dim {extractor.dim}"
        )
    if not np.all(np.isfinite(sequence.features)):
        raise RuntimeError(
            f"extractor {extractor.name!r} returned non-finite features for {video.path}"
        )
    if not np.all(np.isfinite(sequence.times)):
        raise RuntimeError(
            f"extractor {extractor.name!r} returned non-finite times for {video.path}"
        )
