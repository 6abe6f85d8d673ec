"""Captions and aligned video features of a captioning dataset, ready for PMI-CAP.

Splits (the conventions that make MSVD and MSR-VTT results comparable):

- MSVD (format `msvd`) is split by video order. Clips are ranked by their mapping number N
  (`vidN` in youtube_mapping.txt), or by their sorted clip ids when there is no mapping. The
  first `split_sizes.train` ranks are training, the next `split_sizes.validation` ranks
  validation and the next `split_sizes.test` ranks test (1,200 / 100 / 670 for MSVD). Ranks
  are positions in the full order, so a corpus file holding only some clips keeps each clip
  in its standard split. Clips ranked beyond the three sizes belong to no split.
- MSR-VTT (format `msrvtt`) is split by the `split` field of its 2016 release (train,
  validate, test: 6,513 / 497 / 2,990 videos).
- The offline demo captions (`demo_captions`, one caption per generated video, no mapping
  file) follow the MSVD rule on the sorted video ids with the sizes its config entry gives.

Video ids: a caption's video is the feature group named by its MSVD clip id
`<VideoID>_<Start>_<End>` or MSR-VTT `videoN`. When no group has the clip id but one has the
clip's VideoID and the VideoID has no other clip, that group is used: the clip is the whole
file `<VideoID>.mp4`, as in the demo dataset.

Text: captions are tokenized by `models.text.tokenize` (lowercase, Penn Treebank style
clitics), and tokens without a letter or digit (punctuation) are dropped, as the PTB
tokenizer of the evaluation drops them. The vocabulary is built from the training captions
only: `<pad>` = 0, `<unk>` = 1, `<bos>` = 2, `<eos>` = 3, then every word seen at least
`min_count` times, by decreasing count, ties alphabetically. Captions longer than
`max_length` words are cut to their first `max_length` words.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from eval.caption_annotations import (
    CaptionReadReport,
    CaptionVideo,
    read_msrvtt_videodatainfo,
    read_msvd_corpus,
)
from models.localization_data import VideoFeatureStore
from models.text import PAD_INDEX, PAD_TOKEN, UNK_TOKEN, Vocabulary, has_words, tokenize

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CAPTION_FORMATS = ("msvd", "msrvtt")
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
BOS_INDEX = 2
EOS_INDEX = 3
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN)


def caption_tokens(caption: str) -> list[str]:
    """Return the words of a caption: `tokenize` output without punctuation-only tokens."""
    return [token for token in tokenize(caption) if has_words([token])]


def build_caption_vocabulary(captions: Iterable[str], min_count: int) -> Vocabulary:
    """Build the captioning vocabulary of the training captions (rule in the module docstring)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = Counter(token for caption in captions for token in caption_tokens(caption))
    for reserved in SPECIAL_TOKENS:
        counts.pop(reserved, None)
    frequent = sorted((token for token, count in counts.items() if count >= min_count), key=lambda token: (-counts[token], token))
    logger.info("caption vocabulary: %d of %d distinct words seen at least %d times", len(frequent), len(counts), min_count)
    return Vocabulary([*SPECIAL_TOKENS, *frequent], min_count=min_count)


def check_caption_vocabulary(vocabulary: Vocabulary) -> None:
    """Raise ValueError when the vocabulary does not start with the four special tokens."""
    if vocabulary.tokens[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
        raise ValueError(
            f"a captioning vocabulary must start with {list(SPECIAL_TOKENS)}, got {vocabulary.tokens[:4]}"
        )


def encode_caption(vocabulary: Vocabulary, caption: str, max_length: int) -> list[int]:
    """Return the word indices of a caption, cut to `max_length` words (no `<bos>`/`<eos>`)."""
    return [vocabulary.index(token) for token in caption_tokens(caption)[:max_length]]


def decode_caption(vocabulary: Vocabulary, indices: Iterable[int]) -> str:
    """Return the caption text of word indices, stopping at `<eos>` and skipping `<pad>`/`<bos>`."""
    words = []
    tokens = vocabulary.tokens
    for index in indices:
        index = int(index)
        if index == EOS_INDEX:
            break
        if index in (PAD_INDEX, BOS_INDEX):
            continue
        words.append(tokens[index])
    return " ".join(words)


@dataclass(frozen=True)
class CaptionDataSpec:
    """Files and settings of one captioning dataset, as the workflow passes them.

    annotations: config keys to files (`corpus` and optionally `mapping` for msvd; any keys,
    each a videodatainfo file, for msrvtt). features: modality (extractor name) -> subsampled
    artifact of `steps` rows per video. split_sizes: train/validation/test video counts of
    the msvd split by order; unused for msrvtt.
    """

    dataset: str
    format: str
    annotations: dict[str, Path]
    modalities: tuple[str, ...]
    features: dict[str, Path]
    steps: int
    split_sizes: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.format not in CAPTION_FORMATS:
            raise ValueError(f"{self.dataset}: format {self.format!r} is not a captioning format {CAPTION_FORMATS}")
        if self.format == "msvd":
            if "corpus" not in self.annotations:
                raise ValueError(f"{self.dataset}: an msvd dataset needs the annotation key 'corpus' (the corpus CSV)")
            sizes = self.split_sizes or {}
            missing = [split for split in SPLITS if split not in sizes]
            if missing:
                raise ValueError(
                    f"{self.dataset}: an msvd dataset needs split_sizes with {', '.join(SPLITS)} "
                    f"(MSVD: 1200, 100, 670); missing {missing}"
                )
            if any(not isinstance(sizes[split], int) or sizes[split] < 0 for split in SPLITS):
                raise ValueError(f"{self.dataset}: split_sizes must be non-negative integers, got {sizes}")
        if list(self.features) != list(self.modalities):
            raise ValueError(
                f"{self.dataset}: features {list(self.features)} must name the modalities {list(self.modalities)} in order"
            )

    @classmethod
    def from_config(cls, dataset: str, entry: Mapping[str, Any], feature_paths: Sequence[Path | str]) -> CaptionDataSpec:
        """Build the spec from a dataset's config.yaml entry and its subsampled artifacts.

        feature_paths: one artifact per modality, in the order of the entry's `modalities`.
        """
        modalities = list(entry["modalities"])
        if len(feature_paths) != len(modalities):
            raise ValueError(f"{dataset}: {len(feature_paths)} feature artifacts for modalities {modalities}")
        sizes = entry.get("split_sizes")
        return cls(
            dataset=dataset,
            format=str(entry["format"]),
            annotations={key: Path(path) for key, path in entry["annotations"].items()},
            modalities=tuple(modalities),
            features={name: Path(path) for name, path in zip(modalities, feature_paths)},
            steps=int(entry["steps"]),
            split_sizes=None if sizes is None else {key: int(value) for key, value in sizes.items()},
        )


def read_dataset_captions(spec: CaptionDataSpec) -> tuple[dict[str, CaptionVideo], list[CaptionReadReport]]:
    """Read every caption of the dataset's annotation files, keyed by clip or video id."""
    if spec.format == "msvd":
        videos, report = read_msvd_corpus(spec.annotations["corpus"], spec.annotations.get("mapping"))
        return videos, [report]
    videos, report = read_msrvtt_videodatainfo(list(spec.annotations.values()))
    return videos, [report]


def split_videos(spec: CaptionDataSpec, videos: Mapping[str, CaptionVideo]) -> dict[str, list[CaptionVideo]]:
    """Assign every video to train, validation or test by the dataset's rule.

    Returns split -> videos in split order. MSVD ranks are mapping numbers when every clip
    has one, else positions (from 1) in the sorted clip ids.
    """
    result: dict[str, list[CaptionVideo]] = {split: [] for split in SPLITS}
    if spec.format == "msrvtt":
        for video_id in sorted(videos, key=lambda video_id: (videos[video_id].order or 0, video_id)):
            video = videos[video_id]
            if video.split not in result:
                raise ValueError(f"{spec.dataset}: video {video_id} has no split field")
            result[video.split].append(video)
        return result

    sizes = spec.split_sizes or {}
    bounds = np.cumsum([sizes[split] for split in SPLITS])
    if all(video.order is not None for video in videos.values()):
        ranked = sorted(videos.values(), key=lambda video: video.order)
        ranks = [int(video.order) for video in ranked]
    else:
        ranked = [videos[video_id] for video_id in sorted(videos)]
        ranks = list(range(1, len(ranked) + 1))
    beyond = 0
    for rank, video in zip(ranks, ranked):
        position = int(np.searchsorted(bounds, rank, side="left"))
        if position >= len(SPLITS):
            beyond += 1
            continue
        result[SPLITS[position]].append(video)
    if beyond:
        logger.warning("%s: %d videos ranked beyond the %d of split_sizes belong to no split", spec.dataset, beyond, int(bounds[-1]))
    return result


def feature_ids(videos: Sequence[CaptionVideo], available: set[str]) -> dict[str, str]:
    """Map each video id to its feature group (rule in the module docstring); absent videos are left out."""
    clips_of_source = Counter(video.source_id for video in videos if video.source_id is not None)
    matched = {}
    for video in videos:
        if video.video_id in available:
            matched[video.video_id] = video.video_id
        elif video.source_id in available and clips_of_source[video.source_id] == 1:
            matched[video.video_id] = video.source_id
    return matched


@dataclass
class CaptionSplit:
    """The videos of one split that have features, with their captions.

    captions: feature id -> cleaned captions. missing: video ids of the split without
    features in every modality. videos: number of videos of the split in the annotations.
    """

    name: str
    captions: dict[str, list[str]]
    missing: list[str] = field(default_factory=list)
    videos: int = 0

    def caption_count(self) -> int:
        """Return the number of captions of the videos with features."""
        return sum(len(captions) for captions in self.captions.values())


def load_caption_split(spec: CaptionDataSpec, split: str, store: VideoFeatureStore) -> tuple[CaptionSplit, list[CaptionReadReport]]:
    """Read one split's captions, keyed by feature id, keeping the videos that have features."""
    if split not in SPLITS:
        raise ValueError(f"invalid split {split!r}: expected one of {SPLITS}")
    videos, reports = read_dataset_captions(spec)
    members = split_videos(spec, videos)[split]
    matched = feature_ids(members, store.available)
    missing = [video.video_id for video in members if video.video_id not in matched]
    if missing:
        logger.warning(
            "%s %s split: %d of %d videos have no features and are left out (first: %s)",
            spec.dataset,
            split,
            len(missing),
            len(members),
            ", ".join(missing[:5]),
        )
    captions = {matched[video.video_id]: list(video.captions) for video in members if video.video_id in matched}
    result = CaptionSplit(split, captions, missing, len(members))
    logger.info("%s %s split: %d videos with features, %d captions", spec.dataset, split, len(captions), result.caption_count())
    return result, reports


class CaptionTrainingSet(Dataset):
    """One item per (video, caption) pair: the video's features and the caption's word indices."""

    def __init__(self, split: CaptionSplit, store: VideoFeatureStore, vocabulary: Vocabulary, max_length: int) -> None:
        check_caption_vocabulary(vocabulary)
        self.store = store
        self.items: list[tuple[str, list[int]]] = []
        for video_id in sorted(split.captions):
            for caption in split.captions[video_id]:
                words = encode_caption(vocabulary, caption, max_length)
                if words:
                    self.items.append((video_id, words))
        skipped = split.caption_count() - len(self.items)
        if skipped:
            logger.warning("%d captions without words are left out of training", skipped)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, words = self.items[index]
        return {"index": index, "video": self.store.load(video_id), "words": words}


class CaptionVideoSet(Dataset):
    """One item per video, for decoding."""

    def __init__(self, video_ids: Sequence[str], store: VideoFeatureStore) -> None:
        self.video_ids = list(video_ids)
        self.store = store

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "video": self.store.load(self.video_ids[index])}


def _stack_video(items: Sequence[Mapping[str, Any]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    modalities = len(items[0]["video"])
    video = [torch.from_numpy(np.stack([item["video"][m] for item in items])) for m in range(modalities)]
    # Every video has exactly N steps after subsampling, so every step is valid.
    return video, torch.ones(len(items), video[0].shape[1], dtype=torch.bool)


def collate_videos(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a batch of videos: one float32 (B, N, D_p) tensor per modality and a (B, N) mask."""
    video, video_mask = _stack_video(items)
    return {"index": torch.tensor([item["index"] for item in items]), "video": video, "video_mask": video_mask}


def collate_captions(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a training batch with teacher-forcing inputs and targets.

    inputs (B, L + 1): `<bos>` then the words; targets (B, L + 1): the words then `<eos>`;
    L is the longest caption of the batch and both are padded with `<pad>` (0).
    """
    batch = collate_videos(items)
    lengths = [len(item["words"]) for item in items]
    inputs = torch.full((len(items), max(lengths) + 1), PAD_INDEX, dtype=torch.long)
    targets = torch.full_like(inputs, PAD_INDEX)
    for row, item in enumerate(items):
        words = torch.tensor(item["words"], dtype=torch.long)
        inputs[row, 0] = BOS_INDEX
        inputs[row, 1 : lengths[row] + 1] = words
        targets[row, : lengths[row]] = words
        targets[row, lengths[row]] = EOS_INDEX
    batch["inputs"] = inputs
    batch["targets"] = targets
    return batch


def write_caption_metrics(
    spec: CaptionDataSpec,
    *,
    predictions_path: Path,
    metrics_path: Path,
    index_path: Path | None,
    seed: int,
) -> dict[str, Any]:
    """Score the test predictions with pycocoevalcap and write metrics.json.

    All test videos with a prediction are scored in one call per scorer. metrics.json gives
    the scores x100, the split, the counts (videos scored and in the split, references),
    the videos without features or prediction, the decoding settings, the feature
    provenance, the seed, the git commits and the software versions.
    """
    from eval.captioning import read_predictions, score_captions, software_versions
    from eval.localization import read_missing_videos
    from models.checkpoint import git_commit

    store = VideoFeatureStore(spec.features, spec.steps)
    split, reports = load_caption_split(spec, "test", store)
    predictions, header = read_predictions(predictions_path)
    unpredicted = sorted(set(split.captions) - set(predictions))
    if unpredicted:
        logger.warning("%d test videos with features have no prediction (first: %s)", len(unpredicted), ", ".join(unpredicted[:5]))

    scores = score_captions(split.captions, predictions)
    failed = sorted(set(read_missing_videos([index_path])) & set(split.missing)) if index_path else []
    metrics = {
        "dataset": spec.dataset,
        "task": "captioning",
        "format": spec.format,
        "split": "test",
        "metrics": scores.percent(),
        "scale": "percent (pycocoevalcap score x 100)",
        "tokenizer": "pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1), lowercased, punctuation removed",
        "counts": {
            "videos_scored": scores.videos,
            "videos_in_split": split.videos,
            "references_used": scores.references,
            "videos_without_features": len(split.missing),
            "videos_without_prediction": len(unpredicted),
        },
        "videos_without_features": split.missing,
        "videos_not_in_folder": failed,
        "videos_without_prediction": unpredicted,
        "split_rule": "split_sizes by video order" if spec.format == "msvd" else "split field of the release",
        "split_sizes": spec.split_sizes if spec.format == "msvd" else None,
        "annotation_report": [report.to_dict() for report in reports],
        "steps": spec.steps,
        "modalities": list(spec.modalities),
        "features": store.provenance(),
        "decoding": header.get("decoding"),
        "training": header.get("training", {}),
        "seed": seed,
        "git_commit": git_commit(),
        "versions": software_versions(),
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = metrics_path.with_name(metrics_path.name + ".tmp")
    temporary.write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    temporary.replace(metrics_path)
    logger.info("wrote %s: %s", metrics_path, ", ".join(f"{name} {value:.2f}" for name, value in metrics["metrics"].items()))
    return metrics
