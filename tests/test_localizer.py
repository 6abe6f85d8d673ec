"""Tests of PMI-LOC: settings, model, targets, predictions and the localization loss."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.attention import masked_mean
from models.config import InteractionConfig, LocalizerConfig
from models.localizer import (
    LocalizationHead,
    LocalizerOutput,
    PMILocalizer,
    localization_loss,
    masked_instance_norm,
    pair_names,
    predict_spans,
    relevance_targets,
)

CONFIG_PATH = Path(__file__).resolve().parents[1] / "config.yaml"
DIMS = (6, 8, 4)
STEPS = 8
VOCAB = 20


def localizer_settings() -> dict:
    return dict(yaml.safe_load(CONFIG_PATH.read_text())["localizer"])


def tiny_config(**changes: object) -> LocalizerConfig:
    settings = localizer_settings()
    settings.update(
        d_model=12,
        heads=2,
        d_low=8,
        max_relative_position=3,
        gate_channels=4,
        head_channels=[8, 6],
        embedding="learned",
        embedding_dim=10,
        dropout=0.0,
    )
    settings.update(changes)
    return LocalizerConfig.from_dict(settings)


def make_model(config: LocalizerConfig) -> PMILocalizer:
    return PMILocalizer(config, DIMS, VOCAB, config.embedding_dim, STEPS)


def query_batch(batch: int = 3) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    video = [torch.randn(batch, STEPS, dim) for dim in DIMS]
    video_mask = torch.ones(batch, STEPS, dtype=torch.bool)
    video_mask[-1, 6:] = False
    words = torch.randint(0, VOCAB, (batch, 5))
    word_mask = torch.ones(batch, 5, dtype=torch.bool)
    word_mask[0, 3:] = False
    return video, video_mask, words, word_mask


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


# Settings


def test_config_from_project_file() -> None:
    config = LocalizerConfig.from_dict(localizer_settings(), "config.yaml localizer")
    assert config.interaction.heads == 8
    assert config.interaction.pairs == "all"
    assert config.head_channels == (256, 128)
    assert config.lambda_r == 5.0


def test_config_dataset_override() -> None:
    raw = yaml.safe_load(CONFIG_PATH.read_text())
    merged = {**raw["localizer"], **raw["datasets"]["demo"]["localizer"]}
    config = LocalizerConfig.from_dict(merged)
    assert config.embedding == "learned"
    assert config.learning_rate == 0.0005


def test_config_rejects_unknown_key() -> None:
    settings = localizer_settings() | {"head_chanels": [4]}
    with pytest.raises(ValueError, match="config.yaml localizer: unknown key\\(s\\) 'head_chanels'"):
        LocalizerConfig.from_dict(settings, "config.yaml localizer")


def test_config_rejects_missing_key() -> None:
    settings = localizer_settings()
    del settings["window"]
    with pytest.raises(ValueError, match="missing key\\(s\\) 'window'"):
        LocalizerConfig.from_dict(settings)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fusion", "max", "fusion must be one of weighted, sum, concat"),
        ("heads", 3, "d_low \\(256\\) must be a multiple of heads \\(3\\)"),
        ("window", -1, "window must be >= 0"),
        ("vtli", "yes", "vtli must be true or false"),
        ("dropout", 1.0, "dropout must be < 1"),
    ],
)
def test_config_rejects_invalid_value(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalizerConfig.from_dict(localizer_settings() | {key: value})


def test_config_round_trip() -> None:
    config = tiny_config()
    assert LocalizerConfig.from_dict(config.to_dict()) == config
    assert LocalizerConfig.from_dict(dataclasses.asdict(config)) == config


def test_interaction_config_frozen() -> None:
    config = tiny_config().interaction
    assert isinstance(config, InteractionConfig)
    with pytest.raises(AttributeError):
        config.heads = 4  # type: ignore[misc]


# Model


def test_output_shapes_and_relevance() -> None:
    model = make_model(tiny_config())
    video, video_mask, words, word_mask = query_batch()
    output = model(video, video_mask, words, word_mask)
    assert output.boundary.shape == (3, 2)
    assert output.alpha.shape == (3, STEPS, 9)
    assert [a.shape for a in output.head_activations] == [(3, 8, STEPS), (3, 6, STEPS)]
    assert torch.allclose(output.relevance.sum(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.equal(output.relevance[-1, 6:], torch.zeros(2))


def test_word_padding_ignored() -> None:
    model = make_model(tiny_config()).eval()
    video, video_mask, words, word_mask = query_batch()
    padded_words = torch.cat([words, torch.randint(0, VOCAB, (3, 4))], dim=1)
    padded_mask = torch.cat([word_mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    plain = model(video, video_mask, words, word_mask)
    padded = model(video, video_mask, padded_words, padded_mask)
    assert torch.allclose(padded.boundary, plain.boundary, atol=1e-5)
    assert torch.allclose(padded.relevance, plain.relevance, atol=1e-5)


def test_video_index_shares_videos() -> None:
    model = make_model(tiny_config()).eval()
    video, video_mask, words, word_mask = query_batch()
    video_index = torch.tensor([2, 0, 2])
    shared = model(video, video_mask, words, word_mask, video_index=video_index)
    repeated = model(
        [features[video_index] for features in video], video_mask[video_index], words, word_mask
    )
    assert torch.allclose(shared.boundary, repeated.boundary, atol=1e-5)
    assert torch.allclose(shared.alpha, repeated.alpha, atol=1e-6)
    assert torch.equal(shared.video_mask, video_mask[video_index])


def test_vtli_off_adds_sentence() -> None:
    model = make_model(tiny_config(vtli=False)).eval()
    video, video_mask, words, word_mask = query_batch()
    captured = {}
    model.head.register_forward_hook(lambda module, inputs, output: captured.update(inputs=inputs))
    model(video, video_mask, words, word_mask)

    features = model.video_interaction(video, video_mask).features
    text = model.text_interaction(model.word_embedding(words), word_mask)
    sentence = masked_mean(text, word_mask, dim=1)
    assert model.local_interaction is None
    expected = (features + sentence[:, None, :]) * video_mask[..., None]
    assert torch.allclose(captured["inputs"][0], expected, atol=1e-6)


def switch_combinations() -> list[dict]:
    combinations = []
    for vtli, l2_norm in itertools.product([True, False], repeat=2):
        for pairs, fusion in itertools.product(["all", "intra", "inter"], ["weighted", "sum", "concat"]):
            combinations.append(dict(vtli=vtli, l2_norm=l2_norm, pairs=pairs, fusion=fusion))
        for interaction in ("concat_intra", "none"):
            combinations.append(dict(vtli=vtli, l2_norm=l2_norm, interaction=interaction))
    return combinations


def test_gradients_reach_every_parameter() -> None:
    video, video_mask, words, word_mask = query_batch()
    targets = relevance_targets(
        torch.tensor([[1.0, 4.0], [0.0, 2.0], [3.0, 5.0]]), torch.full((3,), 8.0), STEPS
    )
    for switches in switch_combinations():
        config = tiny_config(**switches)
        model = make_model(config)
        output = model(video, video_mask, words, word_mask)
        losses = localization_loss(output, torch.rand(3, 2), targets, config)
        losses["total"].backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, (switches, name)
            assert parameter.grad.abs().sum() > 0, (switches, name)


def test_glove_embeddings_fixed() -> None:
    config = tiny_config(embedding="glove")
    vectors = torch.randn(VOCAB, config.embedding_dim)
    model = PMILocalizer(config, DIMS, VOCAB, config.embedding_dim, STEPS, vectors)
    assert torch.equal(model.word_embedding.weight, vectors)
    assert not model.word_embedding.weight.requires_grad


def test_rejects_wrong_embedding_shape() -> None:
    config = tiny_config()
    with pytest.raises(ValueError, match="pretrained_embeddings: expected shape \\(20, 10\\)"):
        PMILocalizer(config, DIMS, VOCAB, config.embedding_dim, STEPS, torch.randn(VOCAB, 7))


def test_rejects_wrong_steps() -> None:
    model = make_model(tiny_config())
    video, video_mask, words, word_mask = query_batch()
    video[0] = torch.randn(3, STEPS + 1, DIMS[0])
    with pytest.raises(ValueError, match="video\\[0\\]: expected shape \\(3, 8, 6\\)"):
        model(video, video_mask, words, word_mask)


def test_pair_names_follow_model_pairs() -> None:
    model = make_model(tiny_config(pairs="inter"))
    names = pair_names(["irv2", "c3d", "soundnet"], model.pairs)
    assert names == pair_names(["irv2", "c3d", "soundnet"], "inter")
    assert names[0] == "irv2-c3d"
    assert len(names) == 6


def test_instance_norm_matches_torch() -> None:
    inputs = torch.randn(2, 3, 7)
    full = torch.ones(2, 7, dtype=torch.bool)
    expected = torch.nn.InstanceNorm1d(3)(inputs)
    assert torch.allclose(masked_instance_norm(inputs, full), expected, atol=1e-5)
    mask = full.clone()
    mask[1, 5:] = False
    partial = masked_instance_norm(inputs, mask)
    assert torch.allclose(partial[1, :, :5], torch.nn.InstanceNorm1d(3)(inputs[1:, :, :5])[0], atol=1e-5)
    assert torch.equal(partial[1, :, 5:], torch.zeros(3, 2))


def test_head_layers_by_formula() -> None:
    config = tiny_config()
    head = LocalizationHead(12, config.head_channels)
    sequence, sentence = torch.randn(2, STEPS, 12), torch.randn(2, 12)
    mask = torch.ones(2, STEPS, dtype=torch.bool)
    logits, activations = head(sequence, mask, sentence)

    context = sentence[:, :, None].expand(-1, -1, STEPS)
    hidden = sequence.transpose(1, 2)
    norm = torch.nn.InstanceNorm1d
    for index, layer in enumerate(head.layers[:-1]):
        hidden = layer(torch.cat([hidden, context], dim=1))
        hidden = F.leaky_relu(norm(hidden.shape[1])(hidden), negative_slope=0.2)
        assert torch.allclose(activations[index], hidden, atol=1e-5), index
    expected = head.layers[-1](torch.cat([hidden, context], dim=1))[:, 0]
    assert torch.allclose(logits, expected, atol=1e-5)


def test_overfits_four_videos() -> None:
    torch.manual_seed(1)
    config = tiny_config(d_model=16, learning_rate=0.02)
    model = make_model(config)
    video, video_mask, words, word_mask = query_batch(batch=4)
    video_mask[:] = True
    starts = torch.tensor([0.0, 0.2, 0.4, 0.6])
    target_boundary = torch.stack([starts, starts + torch.tensor([0.3, 0.5, 0.2, 0.4])], dim=1)
    targets = relevance_targets(target_boundary * 10.0, torch.full((4,), 10.0), STEPS)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, foreach=True)
    history = []
    for _ in range(200):
        optimizer.zero_grad()
        losses = localization_loss(model(video, video_mask, words, word_mask), target_boundary, targets, config)
        losses["total"].backward()
        optimizer.step()
        history.append(losses["huber"].item())
    # 200 steps took 9-15 s on one core of a busy 2-core VM. The loss starts near 0.1. At
    # this learning rate it oscillates near its floor, between about 1e-6 and 3e-4 over the
    # last steps, so the check takes the lowest of the last 50.
    assert history[0] > 0.01
    assert min(history[-50:]) < 1e-4


# Targets and predictions


def test_relevance_targets_overlap() -> None:
    spans = torch.tensor([[3.0, 6.5], [4.0, 6.0], [0.0, 10.0]])
    targets = relevance_targets(spans, torch.full((3,), 10.0), steps=5)  # steps of 2 s
    assert targets[0].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert targets[1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]  # touching edges do not count
    assert targets[2].tolist() == [1.0] * 5


def test_relevance_targets_zero_length_span() -> None:
    targets = relevance_targets(torch.tensor([[5.0, 5.0]]), torch.tensor([10.0]), steps=5)
    assert targets[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_relevance_targets_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="durations must be positive"):
        relevance_targets(torch.tensor([[1.0, 2.0]]), torch.tensor([0.0]), steps=4)
    with pytest.raises(ValueError, match="start <= end"):
        relevance_targets(torch.tensor([[3.0, 2.0]]), torch.tensor([5.0]), steps=4)


def output_with(boundary: torch.Tensor, logits: torch.Tensor, activations: list, mask: torch.Tensor):
    return LocalizerOutput(
        boundary=boundary,
        relevance=torch.softmax(logits, dim=-1),
        relevance_logits=logits,
        alpha=None,
        head_activations=activations,
        video_mask=mask,
    )


def test_predict_spans_clamps_and_orders() -> None:
    output = output_with(torch.tensor([[0.8, 0.3], [-0.2, 1.4]]), torch.zeros(2, 4), [], torch.ones(2, 4, dtype=torch.bool))
    spans = predict_spans(output, torch.tensor([10.0, 20.0]))
    assert torch.allclose(spans, torch.tensor([[3.0, 8.0], [0.0, 20.0]]))


# Loss


def hand_example() -> tuple[LocalizerOutput, torch.Tensor, torch.Tensor]:
    """Two queries over 4 steps; the second query's last step is padding."""
    boundary = torch.tensor([[0.2, 0.9], [2.5, 0.5]])
    target_boundary = torch.tensor([[0.0, 0.5], [0.0, 0.5]])
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.25, 0.9]]))
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    target_relevance = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # Step vectors (columns) with l2 norms 5, 0, 1, 2 and 1, 3, 0, 4 (the last one padded).
    activation = torch.tensor(
        [
            [[3.0, 0.0, 1.0, 0.0], [4.0, 0.0, 0.0, 2.0]],
            [[1.0, 0.0, 0.0, 4.0], [0.0, 3.0, 0.0, 0.0]],
        ]
    )
    return output_with(boundary, logits, [activation], mask), target_boundary, target_relevance


def test_loss_huber_by_hand() -> None:
    output, target_boundary, target_relevance = hand_example()
    losses = localization_loss(output, target_boundary, target_relevance, tiny_config())
    # Differences 0.2, 0.4 -> 0.02, 0.08; 2.5 (> delta 1) -> 2.5 - 0.5 = 2.0; 0 -> 0.
    assert losses["huber"].item() == pytest.approx((0.02 + 0.08 + 2.0 + 0.0) / 4)


def test_loss_relevance_by_hand() -> None:
    output, target_boundary, target_relevance = hand_example()
    losses = localization_loss(output, target_boundary, target_relevance, tiny_config())
    first = -(math.log(0.2) + math.log(0.3)) / 2
    second = -math.log(0.5)  # the padded step is left out of the softmax: 0.5 / (0.5 + 0.25 + 0.25)
    assert losses["relevance"].item() == pytest.approx((first + second) / 2, rel=1e-5)


def test_loss_norm_by_hand() -> None:
    output, target_boundary, target_relevance = hand_example()
    losses = localization_loss(output, target_boundary, target_relevance, tiny_config())
    first = (5 - 1) ** 2 + (0 - 1) ** 2 + (1 - 1) ** 2 + (2 - 1) ** 2
    second = (1 - 1) ** 2 + (3 - 1) ** 2 + (0 - 1) ** 2
    assert losses["norm"].item() == pytest.approx((first + second) / 2)


def test_loss_total_weights() -> None:
    output, target_boundary, target_relevance = hand_example()
    on = localization_loss(output, target_boundary, target_relevance, tiny_config(l2_norm=True))
    off = localization_loss(output, target_boundary, target_relevance, tiny_config(l2_norm=False))
    base = on["huber"].item() + 5.0 * on["relevance"].item()
    assert on["total"].item() == pytest.approx(base + 0.001 * on["norm"].item())
    assert off["total"].item() == pytest.approx(base)
    assert off["norm"].item() == pytest.approx(on["norm"].item())


def test_loss_rejects_wrong_target_shape() -> None:
    output, target_boundary, _ = hand_example()
    with pytest.raises(ValueError, match="target_relevance: expected shape \\(2, 4\\)"):
        localization_loss(output, target_boundary, torch.zeros(2, 5), tiny_config())
