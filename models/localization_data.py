"""Queries and aligned video features of a localization dataset, ready for PMI-LOC.

A `LocalizationDataSpec` names everything a localization job reads: annotation files,
duration files and subsampled feature artifacts. The functions here turn it into query
lists, torch datasets, the GloVe table and the metrics file.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from eval.annotations import (
    Query,
    ReadReport,
    activitynet_split_files,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
)
from eval.localization import evaluate_predictions, read_missing_videos
from models.text import Vocabulary, cache_glove

logger = logging.getLogger(__name__)

# Attributes of a feature artifact that identify how its features were made.
PROVENANCE_ATTRIBUTES = ("extractor", "weights", "weights_sha256", "layer", "fps", "clip_length", "stride", "sample_rate")


@dataclass(frozen=True)
class LocalizationDataSpec:
    """Files and settings of one localization dataset, as the workflow passes them.

    `annotations` maps split names to annotation files. `durations` maps split names (or
    `all`) to duration CSV files, and is empty when durations come from the videos.
    `features` maps each modality (extractor name) to its subsampled artifact of `steps` rows
    per video.
    """

    dataset: str
    format: str
    annotations: dict[str, Path]
    durations: dict[str, Path]
    evaluation_split: str
    modalities: tuple[str, ...]
    features: dict[str, Path]
    steps: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalizationDataSpec:
        return cls(
            dataset=str(data["dataset"]),
            format=str(data["format"]),
            annotations={split: Path(path) for split, path in data["annotations"].items()},
            durations={split: Path(path) for split, path in data["durations"].items()},
            evaluation_split=str(data.get("evaluation_split", "merged")),
            modalities=tuple(data["modalities"]),
            features={name: Path(path) for name, path in data["features"].items()},
            steps=int(data["steps"]),
        )


def read_artifact_durations(path: Path) -> dict[str, float]:
    """Return each video's duration (s) as recorded in a feature artifact."""
    with h5py.File(path, "r") as artifact:
        return {video_id: float(artifact[video_id].attrs["duration"]) for video_id in artifact}


def _metadata_durations(spec: LocalizationDataSpec, split: str) -> dict[str, float]:
    path = spec.durations.get(split) or spec.durations.get("all")
    if path is None:
        return {}
    return read_charades_durations(path)


def _latest_end_times(path: Path, known: set[str]) -> dict[str, float]:
    """Stand-in durations (s) for videos with neither metadata nor features.

    Such a video is missing or failed extraction. Its queries must still count in the
    evaluation's denominator, so its duration is taken as its latest annotated end time.
    """
    latest: dict[str, float] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            fields = line.partition("##")[0].split()
            if len(fields) == 3 and fields[0] not in known:
                try:
                    end = float(fields[2])
                except ValueError:
                    continue
                latest[fields[0]] = max(latest.get(fields[0], 0.0), end)
    if latest:
        logger.warning(
            "%d videos in %s have no duration (no metadata, no features); their latest "
            "annotated end time stands in (first: %s)",
            len(latest),
            path,
            ", ".join(sorted(latest)[:5]),
        )
    return latest


def load_queries(spec: LocalizationDataSpec, role: str) -> tuple[list[Query], ReadReport]:
    """Read the queries of the training (`role="train"`) or test (`role="test"`) split.

    Durations come from the dataset's metadata where it has them, else from the duration
    the feature artifacts recorded when the video was probed.
    """
    if role not in ("train", "test"):
        raise ValueError(f"invalid role {role!r}: expected train or test")

    probed = read_artifact_durations(next(iter(spec.features.values())))
    if spec.format == "charades_sta":
        split = role
        metadata = _metadata_durations(spec, split)
        fallback = _latest_end_times(spec.annotations[split], set(metadata) | set(probed))
        queries, report = read_charades_sta(
            spec.annotations[split], metadata, probe_durations={**fallback, **probed}
        )
        # The reader counts the stand-ins as probed: they were passed as probe durations.
        report.durations_probed -= len(fallback)
        report.durations_from_annotation_end = len(fallback)
    elif spec.format == "activitynet_captions":
        split = "train" if role == "train" else spec.evaluation_split
        files = activitynet_split_files(spec.annotations, split)
        queries, report = read_activitynet_captions(files, probe_durations=probed)
    else:
        raise ValueError(f"{spec.dataset}: format {spec.format!r} is not a localization format")

    logger.info(
        "%s %s split: %d queries on %d videos, %d clipped, %d dropped",
        spec.dataset,
        split,
        report.queries,
        report.videos_with_queries,
        report.clipped,
        report.dropped,
    )
    return queries, report


def split_by_video(
    queries: Sequence[Query], validation_fraction: float, seed: int
) -> tuple[list[Query], list[Query]]:
    """Hold out a fraction of the training videos (never single queries) for validation."""
    videos = sorted({query.video_id for query in queries})
    random.Random(seed).shuffle(videos)
    held_out = set(videos[: round(len(videos) * validation_fraction)])
    if validation_fraction > 0 and not held_out and len(videos) > 1:
        held_out = {videos[0]}
    train = [query for query in queries if query.video_id not in held_out]
    validation = [query for query in queries if query.video_id in held_out]
    logger.info(
        "validation hold-out: %d of %d videos (%d queries)", len(held_out), len(videos), len(validation)
    )
    return train, validation


class VideoFeatureStore:
    """Reads the subsampled features of every modality, one video at a time.

    Each artifact contains `(steps, D_p)` rows per video, and `available` lists the videos present
    in every modality's artifact.
    """

    def __init__(self, features: Mapping[str, Path], steps: int) -> None:
        self.paths = dict(features)
        self.steps = steps
        self._files: dict[str, h5py.File] = {}
        id_sets = []
        self.dims: list[int] = []
        for name, path in self.paths.items():
            with h5py.File(path, "r") as artifact:
                ids = set(artifact)
                id_sets.append(ids)
                dims = {artifact[video_id]["features"].shape[1] for video_id in ids}
                if len(dims) > 1:
                    raise ValueError(f"{path}: videos have different feature sizes {sorted(dims)}")
                self.dims.append(dims.pop() if dims else 0)
        self.available = set.intersection(*id_sets) if id_sets else set()

    def load(self, video_id: str) -> list[np.ndarray]:
        """Return one float32 `(steps, D_p)` array per modality for a video."""
        arrays = []
        for name, path in self.paths.items():
            if name not in self._files:
                self._files[name] = h5py.File(path, "r")
            array = self._files[name][video_id]["features"][()].astype(np.float32)
            if array.shape[0] != self.steps:
                raise ValueError(
                    f"{path}: video {video_id} has {array.shape[0]} steps, expected {self.steps}"
                )
            arrays.append(array)
        return arrays

    def provenance(self) -> dict[str, dict[str, Any]]:
        """Return how each modality's features were made (extractor, weights, layer, ...)."""
        result = {}
        for name, path in self.paths.items():
            with h5py.File(path, "r") as artifact:
                first = next(iter(artifact.values()), None)
                attrs = {} if first is None else dict(first.attrs)
            result[name] = {
                key: _json_value(attrs[key]) for key in PROVENANCE_ATTRIBUTES if key in attrs
            }
            result[name]["artifact"] = str(path)
        return result

    def __getstate__(self) -> dict[str, Any]:
        # Open HDF5 handles cannot be pickled into DataLoader workers; each reopens its own.
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def keep_available(queries: Sequence[Query], store: VideoFeatureStore) -> list[Query]:
    """Drop queries whose video has no features, logging how many and which videos."""
    kept = [query for query in queries if query.video_id in store.available]
    missing = sorted({query.video_id for query in queries} - store.available)
    if missing:
        logger.warning(
            "%d queries on %d videos without features are left out (first: %s)",
            len(queries) - len(kept),
            len(missing),
            ", ".join(missing[:5]),
        )
    return kept


class LocalizationDataset(Dataset):
    """Queries paired with their video's features, word indices and normalised span."""

    def __init__(self, queries: Sequence[Query], store: VideoFeatureStore, vocabulary: Vocabulary) -> None:
        self.queries = list(queries)
        self.store = store
        self.words = [vocabulary.encode(query.sentence, query.query_id) for query in self.queries]

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        query = self.queries[index]
        return {
            "index": index,
            "video_id": query.video_id,
            "video": self.store.load(query.video_id),
            "words": self.words[index],
            "span": (query.start, query.end),
            "duration": query.duration,
        }


def collate_queries(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a batch, encoding each distinct video once.

    `video` contains one `(V, N, D_p)` tensor per modality for the V distinct videos of the
    batch, and `video_index` `(B,)` maps each query to its video. Every video has exactly N
    steps after subsampling, so `video_mask` `(V, N)` is all True; the word mask marks real
    words of the padded `words` `(B, L)`. `spans` are seconds `(B, 2)`, `durations` seconds
    `(B,)`.
    """
    video_ids = list(dict.fromkeys(item["video_id"] for item in items))
    first_item = {}
    for item in items:
        first_item.setdefault(item["video_id"], item)
    modalities = len(items[0]["video"])
    video = [
        torch.from_numpy(np.stack([first_item[video_id]["video"][m] for video_id in video_ids]))
        for m in range(modalities)
    ]
    position = {video_id: row for row, video_id in enumerate(video_ids)}

    lengths = [len(item["words"]) for item in items]
    words = torch.zeros(len(items), max(lengths), dtype=torch.long)
    for row, item in enumerate(items):
        words[row, : lengths[row]] = torch.tensor(item["words"], dtype=torch.long)
    return {
        "index": torch.tensor([item["index"] for item in items]),
        "video": video,
        "video_mask": torch.ones(len(video_ids), video[0].shape[1], dtype=torch.bool),
        "video_index": torch.tensor([position[item["video_id"]] for item in items]),
        "words": words,
        "word_mask": words != 0,
        "spans": torch.tensor([item["span"] for item in items], dtype=torch.float32),
        "durations": torch.tensor([item["duration"] for item in items], dtype=torch.float32),
    }


class VideoGroupedBatches(Sampler[list[int]]):
    """Batches of about `batch_size` queries that keep all queries of a video together.

    The video encoder then runs once per video instead of once per query, which matters
    when datasets have several queries per video (2.4 on Charades-STA, 4 on the demo). The
    order of videos is shuffled each epoch when `shuffle` is set.
    """

    def __init__(self, queries: Sequence[Query], batch_size: int, shuffle: bool, seed: int) -> None:
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.groups: dict[str, list[int]] = {}
        for index, query in enumerate(queries):
            self.groups.setdefault(query.video_id, []).append(index)

    def _batches(self) -> list[list[int]]:
        video_ids = list(self.groups)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(video_ids)
        batches: list[list[int]] = []
        current: list[int] = []
        for video_id in video_ids:
            if current and len(current) + len(self.groups[video_id]) > self.batch_size:
                batches.append(current)
                current = []
            current = current + self.groups[video_id]
        if current:
            batches.append(current)
        return batches

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


def training_vocabulary(spec: LocalizationDataSpec) -> Vocabulary:
    """Build the vocabulary from the training queries' sentences."""
    queries, _ = load_queries(spec, "train")
    return Vocabulary.build(query.sentence for query in queries)


def build_glove_table(
    spec: LocalizationDataSpec, glove_path: Path, embedding_dim: int, output: Path
) -> None:
    """Cache the GloVe vectors of the training vocabulary as an HDF5 artifact."""
    cache_glove(glove_path, training_vocabulary(spec), embedding_dim, output)


def write_localization_metrics(
    spec: LocalizationDataSpec,
    *,
    predictions_path: Path,
    index_path: Path,
    metrics_path: Path,
    evaluation: Mapping[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Score the test predictions and write metrics.json with the protocol in force."""
    queries, report = load_queries(spec, "test")
    store = VideoFeatureStore(spec.features, spec.steps)
    missing = sorted({query.video_id for query in queries} - store.available)
    failed = sorted(set(read_missing_videos([index_path])) & {query.video_id for query in queries})

    protocol = {
        "dataset": spec.dataset,
        "format": spec.format,
        "split": "test" if spec.format == "charades_sta" else spec.evaluation_split,
        "duration_source": "metadata" if spec.durations else "probed from the video files",
        "annotation_report": {key: value for key, value in report.to_dict().items() if key != "dropped_entries"},
        "dropped_annotations": report.to_dict()["dropped_entries"],
        "steps": spec.steps,
        "modalities": list(spec.modalities),
        "features": store.provenance(),
        "videos_not_in_folder": failed,
    }
    metrics = evaluate_predictions(
        predictions_path,
        queries,
        thresholds=evaluation["iou_thresholds"],
        rule=evaluation["iou_rule"],
        random_trials=evaluation["random_trials"],
        seed=seed,
        missing_videos=missing,
        protocol=protocol,
        order_spans=bool(evaluation.get("order_spans", False)),
    )
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = metrics_path.with_name(metrics_path.name + ".tmp")
    temporary.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    temporary.replace(metrics_path)
    logger.info("wrote %s", metrics_path)
    return metrics
