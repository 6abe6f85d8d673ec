"""Tests of PMI-CAP: config, text pipeline, model, decoding, training, prediction and metrics."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import models.train_captioner as train_module
from eval.caption_annotations import CaptionVideo
from models.caption_config import CaptionerConfig
from models.caption_data import (
    BOS_INDEX,
    EOS_INDEX,
    CaptionDataSpec,
    build_caption_vocabulary,
    caption_tokens,
    collate_captions,
    decode_caption,
    encode_caption,
    feature_ids,
    split_videos,
    write_caption_metrics,
)
from models.captioner import PMICaptioner
from models.runtime import seed_everything
from models.text import PAD_INDEX, UNK_INDEX
from models.train_captioner import load_captioner, predict_captioner, train_captioner

REPOSITORY = Path(__file__).resolve().parents[1]
DIMS = (12, 7)
STEPS = 8
TINY = {
    "d_model": 32,
    "heads": 2,
    "d_low": 16,
    "max_relative_position": 4,
    "gate_channels": 8,
    "interaction_dropout": 0.0,
    "interaction": "pairwise",
    "pairs": "all",
    "fusion": "weighted",
    "ffn_expansion": 2.0,
    "embedding_dim": 32,
    "encoder_hidden": 16,
    "decoder_hidden": 32,
    "decoder_layers": 2,
    "attention_dim": 16,
    "dropout": 0.0,
    "min_count": 1,
    "max_length": 8,
    "beam_size": 3,
    "learning_rate": 0.003,
    "batch_size": 4,
    "epochs": 2,
    "max_grad_norm": 5.0,
}
CAPTIONS = [
    "a man plays a guitar",
    "a cat sleeps on the bed",
    "two dogs run in a field",
    "a woman cuts an onion",
]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def tiny_config(**overrides) -> CaptionerConfig:
    return CaptionerConfig.from_dict({**TINY, **overrides})


def random_model(seed: int = 0, vocab_size: int = 20, **overrides) -> PMICaptioner:
    torch.manual_seed(seed)
    return PMICaptioner(tiny_config(**overrides), DIMS, vocab_size).eval()


def random_video(batch: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, STEPS, dim, generator=generator) for dim in DIMS]


# Config


def test_config_yaml_defaults() -> None:
    section = yaml.safe_load((REPOSITORY / "config.yaml").read_text())["captioner"]

    config = CaptionerConfig.from_dict(section)

    assert config.embedding_dim == 512
    assert config.encoder_hidden == 256
    assert config.decoder_hidden == 512
    assert config.decoder_layers == 2
    assert config.dropout == 0.5
    assert config.min_count == 2
    assert config.max_length == 20
    assert config.beam_size == 5
    assert config.interaction.d_model == 512
    assert config.interaction.fusion == "weighted"


def test_config_unknown_key() -> None:
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'beam'"):
        CaptionerConfig.from_dict({**TINY, "beam": 3}, source="config.yaml captioner")


def test_config_missing_key() -> None:
    values = dict(TINY)
    del values["attention_dim"]

    with pytest.raises(ValueError, match="missing key\\(s\\) 'attention_dim'"):
        CaptionerConfig.from_dict(values)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dropout", 1.0, "dropout must be < 1.0"),
        ("beam_size", 0, "beam_size must be >= 1"),
        ("fusion", "max", "fusion must be one of"),
        ("learning_rate", 0, "learning_rate must be > 0.0"),
        ("interaction_dropout", -0.1, "dropout must be >= 0.0"),
    ],
)
def test_config_invalid_value(key: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        CaptionerConfig.from_dict({**TINY, key: value}, source="test captioner")

    assert "test captioner" in str(error.value)


def test_config_round_trip() -> None:
    config = tiny_config(interaction_dropout=0.2)

    values = config.to_dict()

    assert values["interaction_dropout"] == 0.2
    assert "interaction" in values
    assert CaptionerConfig.from_dict(values) == config


# Text


def test_vocabulary_min_count() -> None:
    vocabulary = build_caption_vocabulary(["A dog runs.", "A dog sits!", "a cat"], min_count=2)

    assert vocabulary.tokens == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "dog"]
    assert encode_caption(vocabulary, "A cat runs.", 20) == [4, UNK_INDEX, UNK_INDEX]


def test_caption_tokens_drop_punctuation() -> None:
    assert caption_tokens("A man's car, parked.") == ["a", "man", "'s", "car", "parked"]


def test_encode_cuts_length() -> None:
    vocabulary = build_caption_vocabulary(["one two three four five"], min_count=1)

    assert len(encode_caption(vocabulary, "one two three four five", 3)) == 3


def test_decode_stops_at_eos() -> None:
    vocabulary = build_caption_vocabulary(["a dog"], min_count=1)

    assert decode_caption(vocabulary, [BOS_INDEX, 4, 5, EOS_INDEX, 4]) == "a dog"


def test_collate_teacher_forcing() -> None:
    items = [
        {"index": 0, "video": [np.zeros((STEPS, d), np.float32) for d in DIMS], "words": [5, 6, 7]},
        {"index": 1, "video": [np.ones((STEPS, d), np.float32) for d in DIMS], "words": [8]},
    ]

    batch = collate_captions(items)

    assert batch["inputs"].tolist() == [[BOS_INDEX, 5, 6, 7], [BOS_INDEX, 8, PAD_INDEX, PAD_INDEX]]
    assert batch["targets"].tolist() == [[5, 6, 7, EOS_INDEX], [8, EOS_INDEX, PAD_INDEX, PAD_INDEX]]
    assert batch["video"][1].shape == (2, STEPS, DIMS[1])
    assert bool(batch["video_mask"].all())


# Model


def test_forward_weights_normalised() -> None:
    model = random_model()
    inputs = torch.tensor([[BOS_INDEX, 5, 6], [BOS_INDEX, 7, PAD_INDEX]])

    output = model(random_video(2), None, inputs)

    assert output.logits.shape == (2, 3, 20)
    assert torch.allclose(output.attention.sum(-1), torch.ones(2, 3), atol=1e-5)
    assert output.alpha.shape == (2, STEPS, 4)
    assert torch.allclose(output.alpha.sum(-1), torch.ones(2, STEPS), atol=1e-5)


def test_attention_ignores_masked_steps() -> None:
    model = random_model()
    mask = torch.ones(2, STEPS, dtype=torch.bool)
    mask[1, 5:] = False

    output = model(random_video(2), mask, torch.tensor([[BOS_INDEX, 5], [BOS_INDEX, 6]]))

    assert float(output.attention[1, :, 5:].detach().abs().max()) == 0.0
    assert torch.allclose(output.attention[1].sum(-1), torch.ones(2), atol=1e-5)


def test_loss_ignores_padding() -> None:
    model = random_model()
    inputs = torch.tensor([[BOS_INDEX, 5, 6], [BOS_INDEX, 7, PAD_INDEX]])
    targets = torch.tensor([[5, 6, EOS_INDEX], [7, EOS_INDEX, PAD_INDEX]])

    output = model(random_video(2), None, inputs)
    loss = model.caption_loss(output, targets)

    unpadded = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    manual = torch.stack([F.cross_entropy(output.logits[b, t][None], targets[b, t][None]) for b, t in unpadded]).mean()
    assert float(loss.detach()) == pytest.approx(float(manual.detach()), rel=1e-6)


# Decoding


@pytest.mark.parametrize("max_length", [3, 8])
def test_beam_one_equals_greedy(max_length: int) -> None:
    model = random_model(seed=3)
    video = random_video(12, seed=4)

    greedy = model.greedy_decode(video, None, max_length)
    beam = model.beam_search(video, None, 1, max_length)

    assert beam.tokens == greedy.tokens
    assert beam.ended == greedy.ended
    assert torch.allclose(beam.log_probs, greedy.log_probs, atol=1e-9)
    for beam_rows, greedy_rows in zip(beam.attention, greedy.attention):
        assert torch.allclose(beam_rows, greedy_rows, atol=1e-6)


def test_beam_scores_match_model() -> None:
    model = random_model(seed=5)
    video = random_video(10, seed=6)

    beam = model.beam_search(video, None, 4, 8)
    rescored = model.sequence_log_probs(video, None, beam.tokens, beam.ended)

    assert torch.allclose(beam.log_probs, rescored, atol=1e-6)


def all_sequences(words: list[int], max_length: int) -> list[tuple[list[int], bool]]:
    """Every caption decoding can return: up to max_length words ended by <eos>, or max_length words cut."""
    sequences: list[tuple[list[int], bool]] = []
    prefixes: list[list[int]] = [[]]
    for length in range(max_length + 1):
        sequences += [(prefix, True) for prefix in prefixes]
        if length == max_length:
            sequences += [(prefix, False) for prefix in prefixes]
        else:
            prefixes = [prefix + [word] for prefix in prefixes for word in words]
    return sequences


def test_wide_beam_is_exact() -> None:
    # Vocabulary: the 4 special tokens and 4 words; captions of at most 3 words. A beam of 100
    # never prunes (at most 16 prefixes x 5 extensions per step), so it must return the best
    # of all 149 possible captions, and no narrower beam may beat it. Scores agree to 1e-6
    # because float32 sums differ slightly between batch sizes.
    model = random_model(seed=12, vocab_size=8)
    with torch.no_grad():
        model.output.bias[EOS_INDEX] -= 1.5
    sequences = all_sequences([4, 5, 6, 7], 3)
    video = random_video(3, seed=13)

    exact = model.beam_search(video, None, 100, 3)

    for row in range(3):
        repeated = [modality[row : row + 1].expand(len(sequences), -1, -1) for modality in video]
        scores = model.sequence_log_probs(repeated, None, [s[0] for s in sequences], [s[1] for s in sequences])
        best = int(scores.argmax())
        assert float(exact.log_probs[row]) == pytest.approx(float(scores[best]), abs=1e-6)
        assert (exact.tokens[row], exact.ended[row]) == sequences[best]
    for size in (1, 2, 3, 5):
        narrow = model.beam_search(video, None, size, 3)
        assert bool((exact.log_probs >= narrow.log_probs - 1e-6).all()), size


def test_decoding_cut_at_max_length() -> None:
    model = random_model(seed=9)
    with torch.no_grad():
        model.output.bias[EOS_INDEX] = -1e4

    greedy = model.greedy_decode(random_video(3), None, 5)
    beam = model.beam_search(random_video(3), None, 3, 5)

    assert [len(tokens) for tokens in greedy.tokens] == [5, 5, 5]
    assert greedy.ended == [False, False, False]
    assert [len(tokens) for tokens in beam.tokens] == [5, 5, 5]
    assert beam.ended == [False, False, False]
    assert [rows.shape for rows in greedy.attention] == [(5, STEPS)] * 3


def test_decoding_immediate_eos() -> None:
    model = random_model(seed=9)
    with torch.no_grad():
        model.output.bias[EOS_INDEX] = 1e4

    beam = model.beam_search(random_video(2), None, 3, 5)

    assert beam.tokens == [[], []]
    assert beam.ended == [True, True]
    assert torch.allclose(beam.log_probs, torch.zeros(2, dtype=torch.float64), atol=1e-6)


def test_decoding_blocks_special_tokens() -> None:
    model = random_model(seed=10)
    with torch.no_grad():
        for index in (PAD_INDEX, UNK_INDEX, BOS_INDEX):
            model.output.bias[index] = 1e4

    greedy = model.greedy_decode(random_video(4), None, 6)
    beam = model.beam_search(random_video(4), None, 3, 6)

    emitted = {token for tokens in greedy.tokens + beam.tokens for token in tokens}
    assert emitted.isdisjoint({PAD_INDEX, UNK_INDEX, BOS_INDEX})
    assert emitted


def test_overfit_tiny_set() -> None:
    started = time.perf_counter()
    torch.manual_seed(11)
    vocabulary = build_caption_vocabulary(CAPTIONS, min_count=1)
    items = [
        {"index": i, "video": [np.random.default_rng(i).standard_normal((STEPS, d)).astype(np.float32) for d in DIMS],
         "words": encode_caption(vocabulary, caption, 8)}
        for i, caption in enumerate(CAPTIONS)
    ]  # fmt: skip
    batch = collate_captions(items)
    model = PMICaptioner(tiny_config(), DIMS, len(vocabulary))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    reproduced: list[str] = []
    for step in range(400):
        model.train()
        loss = model.caption_loss(model(batch["video"], batch["video_mask"], batch["inputs"]), batch["targets"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 19:
            model.eval()
            decoded = model.greedy_decode(batch["video"], batch["video_mask"], 8)
            reproduced = [decode_caption(vocabulary, tokens) for tokens in decoded.tokens]
            if reproduced == CAPTIONS:
                break

    assert reproduced == CAPTIONS
    assert time.perf_counter() - started < 30.0


# Splits and ids


def msvd_spec(tmp_path: Path, sizes: dict[str, int], mapping: bool = False) -> CaptionDataSpec:
    annotations = {"corpus": tmp_path / "corpus.csv"}
    if mapping:
        annotations["mapping"] = tmp_path / "mapping.txt"
    return CaptionDataSpec(
        dataset="tiny",
        format="msvd",
        annotations=annotations,
        modalities=("irv2", "c3d"),
        features={"irv2": tmp_path / "irv2_n8.h5", "c3d": tmp_path / "c3d_n8.h5"},
        steps=STEPS,
        split_sizes=sizes,
    )


def test_msvd_split_by_order(tmp_path: Path) -> None:
    spec = msvd_spec(tmp_path, {"train": 2, "validation": 1, "test": 2})
    videos = {f"c{i}": CaptionVideo(f"c{i}", ("x",), order=order) for i, order in enumerate([5, 1, 3, 2, 4, 6])}

    splits = split_videos(spec, videos)

    assert [video.video_id for video in splits["train"]] == ["c1", "c3"]
    assert [video.video_id for video in splits["validation"]] == ["c2"]
    assert [video.video_id for video in splits["test"]] == ["c4", "c0"]


def test_msvd_split_partial_corpus(tmp_path: Path) -> None:
    spec = msvd_spec(tmp_path, {"train": 1200, "validation": 100, "test": 670})
    videos = {f"c{n}": CaptionVideo(f"c{n}", ("x",), order=n) for n in (1200, 1201, 1300, 1301, 1970, 1971)}

    splits = split_videos(spec, videos)

    assert [video.order for video in splits["train"]] == [1200]
    assert [video.order for video in splits["validation"]] == [1201, 1300]
    assert [video.order for video in splits["test"]] == [1301, 1970]


def test_msvd_split_without_mapping(tmp_path: Path) -> None:
    spec = msvd_spec(tmp_path, {"train": 1, "validation": 1, "test": 1})
    videos = {name: CaptionVideo(name, ("x",)) for name in ("b_0_1", "a_0_1", "c_0_1")}

    splits = split_videos(spec, videos)

    assert [video.video_id for split in ("train", "validation", "test") for video in splits[split]] == ["a_0_1", "b_0_1", "c_0_1"]


def test_msrvtt_split_field(tmp_path: Path) -> None:
    spec = CaptionDataSpec("m", "msrvtt", {"test": tmp_path / "t.json"}, ("irv2",), {"irv2": tmp_path / "i.h5"}, STEPS)
    videos = {
        "video2": CaptionVideo("video2", ("x",), order=2, split="test"),
        "video0": CaptionVideo("video0", ("x",), order=0, split="train"),
        "video1": CaptionVideo("video1", ("x",), order=1, split="validation"),
    }

    splits = split_videos(spec, videos)

    assert [video.video_id for video in splits["train"]] == ["video0"]
    assert [video.video_id for video in splits["validation"]] == ["video1"]
    assert [video.video_id for video in splits["test"]] == ["video2"]


def test_msvd_spec_needs_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs split_sizes"):
        msvd_spec(tmp_path, {"train": 1, "test": 1})


def test_feature_ids_whole_video() -> None:
    videos = [
        CaptionVideo("demo_0000_0_12", ("x",), source_id="demo_0000"),
        CaptionVideo("abc_1_5", ("x",), source_id="abc"),
        CaptionVideo("abc_6_9", ("x",), source_id="abc"),
        CaptionVideo("gone_0_1", ("x",), source_id="gone"),
    ]

    matched = feature_ids(videos, {"demo_0000", "abc_1_5", "abc"})

    assert matched == {"demo_0000_0_12": "demo_0000", "abc_1_5": "abc_1_5"}


# Training, prediction and metrics on files


def write_artifact(path: Path, extractor: str, arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as artifact:
        artifact.attrs["artifact"] = "subsampled"
        for video_id, array in arrays.items():
            group = artifact.create_group(video_id)
            group.create_dataset("features", data=array.astype(np.float16))
            group.create_dataset("times", data=np.arange(STEPS, dtype=np.float64))
            group.attrs["extractor"] = extractor
            group.attrs["weights"] = "random-init"
            group.attrs["weights_sha256"] = "random-init"
            group.attrs["layer"] = "test"
            group.attrs["steps"] = STEPS


def tiny_dataset(tmp_path: Path) -> CaptionDataSpec:
    """Eight clips (4 train, 2 validation, 2 test), the last test clip without features."""
    clips = [f"clip{i}_0_5" for i in range(8)]
    with (tmp_path / "corpus.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"])
        for i, clip in enumerate(clips):
            for caption in (CAPTIONS[i % 4], CAPTIONS[i % 4].replace("a ", "the ", 1)):
                writer.writerow([f"clip{i}", "0", "5", "1", "clean", "5", "English", caption])
    spec = msvd_spec(tmp_path, {"train": 4, "validation": 2, "test": 2})
    for name, dim in zip(spec.modalities, DIMS):
        rng = np.random.default_rng(dim)
        arrays = {clip: rng.standard_normal((STEPS, dim)) + (i % 4) for i, clip in enumerate(clips[:-1])}
        write_artifact(spec.features[name], name, arrays)
    return spec


def test_train_writes_checkpoint(tmp_path: Path) -> None:
    spec = tiny_dataset(tmp_path)
    model_path = tmp_path / "results" / "model.pt"

    result = train_captioner(spec, tiny_config(), model_path=model_path, history_path=tmp_path / "results" / "history.json",
                             device=torch.device("cpu"), seed=3)  # fmt: skip

    state = torch.load(model_path, weights_only=True)
    assert state["config"] == tiny_config().to_dict()
    assert state["vocabulary"]["tokens"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert state["modalities"] == ["irv2", "c3d"]
    assert state["modality_dims"] == list(DIMS)
    assert isinstance(state["git_commit"], str)
    assert len(result["epochs"]) == 2
    assert all(record["val_cider"] is not None for record in result["epochs"])
    assert result["selection"] == "validation CIDEr (greedy)"
    assert not model_path.with_name("model.pt.last").exists()
    history = json.loads((tmp_path / "results" / "history.json").read_text())
    assert history["best"] == max(record["val_cider"] for record in history["epochs"])


def test_train_resumes_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    spec = tiny_dataset(tmp_path)
    config = tiny_config(dropout=0.3, interaction_dropout=0.1, epochs=3)
    cpu = torch.device("cpu")
    straight = tmp_path / "straight" / "model.pt"
    seed_everything(5)
    train_captioner(spec, config, model_path=straight, history_path=straight.with_name("history.json"), device=cpu, seed=5)

    original = train_module.validation_cider
    calls = {"count": 0}

    def fail_on_second_epoch(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    resumed = tmp_path / "resumed" / "model.pt"
    monkeypatch.setattr(train_module, "validation_cider", fail_on_second_epoch)
    seed_everything(5)
    with pytest.raises(KeyboardInterrupt):
        train_captioner(spec, config, model_path=resumed, history_path=resumed.with_name("history.json"), device=cpu, seed=5)
    assert resumed.with_name("model.pt.last").exists()
    monkeypatch.setattr(train_module, "validation_cider", original)
    with caplog.at_level(logging.INFO, logger="models.train_captioner"):
        train_captioner(spec, config, model_path=resumed, history_path=resumed.with_name("history.json"), device=cpu, seed=5)

    assert "resuming from" in caplog.text
    first = torch.load(straight.with_name("model.pt"), weights_only=True)
    second = torch.load(resumed, weights_only=True)
    assert first["epoch"] == second["epoch"]
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    # Equal losses in every epoch show that the resumed run continued the same trajectory.
    first_history = json.loads(straight.with_name("history.json").read_text())["epochs"]
    second_history = json.loads(resumed.with_name("history.json").read_text())["epochs"]
    assert len(second_history) == 3
    assert [record["loss"] for record in first_history] == [record["loss"] for record in second_history]


def test_predict_and_score(tmp_path: Path) -> None:
    spec = tiny_dataset(tmp_path)
    model_path = tmp_path / "model.pt"
    train_captioner(spec, tiny_config(epochs=1), model_path=model_path, history_path=tmp_path / "history.json",
                    device=torch.device("cpu"), seed=1)  # fmt: skip
    predictions_path = tmp_path / "predictions.json"

    predict_captioner(spec, model_path=model_path, predictions_path=predictions_path, device=torch.device("cpu"))
    metrics = write_caption_metrics(spec, predictions_path=predictions_path, metrics_path=tmp_path / "metrics.json",
                                    index_path=None, seed=1)  # fmt: skip

    document = json.loads(predictions_path.read_text())
    assert [entry["video_id"] for entry in document["videos"]] == ["clip6_0_5"]
    assert document["videos_without_features"] == ["clip7_0_5"]
    assert document["decoding"]["beam_size"] == 3
    assert document["pair_names"] == ["irv2-irv2", "irv2-c3d", "c3d-irv2", "c3d-c3d"]
    entry = document["videos"][0]
    assert len(entry["attention"]) == len(entry["caption"].split())
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in entry["attention"])
    assert np.array(entry["alpha"]).shape == (STEPS, 4)
    model, state, vocabulary = load_captioner(model_path, torch.device("cpu"))
    assert model.training is False
    assert len(vocabulary) == state["model"]["output.weight"].shape[0]

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert set(written["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert written["counts"]["videos_scored"] == 1
    assert written["counts"]["videos_in_split"] == 2
    assert written["videos_without_features"] == ["clip7_0_5"]
    assert written["counts"]["references_used"] == 2
    assert written["features"]["irv2"]["weights_sha256"] == "random-init"
    assert written["decoding"]["beam_size"] == 3
    assert written["seed"] == 1
    assert "pycocoevalcap" in written["versions"]
