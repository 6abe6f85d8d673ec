"""Tests of the bilinear attention BA, the channel gate CG and the interaction INT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import (
    BilinearAttention,
    PairLayout,
    masked_log_softmax,
    masked_mean,
    masked_softmax,
)
from models.config import InteractionConfig
from models.interaction import ChannelGatedInteraction, FeedForward, SelfInteraction

SINGLE = ((0, 0),)


def small_config(**changes: object) -> InteractionConfig:
    settings = dict(
        d_model=12,
        heads=2,
        d_low=8,
        max_relative_position=3,
        gate_channels=5,
        dropout=0.0,
        interaction="pairwise",
        pairs="all",
        fusion="weighted",
    )
    settings.update(changes)
    return InteractionConfig(**settings)


def pair_attention(d_query: int, d_key: int, heads: int = 2, d_low: int = 8, limit: int | None = 2):
    layout = PairLayout(query_dims=(d_query,), key_dims=(d_key,), pairs=SINGLE)
    return BilinearAttention(layout, heads=heads, d_low=d_low, max_relative_position=limit)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def test_masked_softmax_fully_masked_row() -> None:
    logits = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False, False, False, False]])
    probs = masked_softmax(logits, mask, dim=-1)
    probs.sum().backward()
    assert torch.allclose(probs[0].sum(), torch.tensor(1.0))
    assert torch.equal(probs[0, [1, 3]], torch.zeros(2))
    assert torch.equal(probs[1], torch.zeros(4))
    assert torch.isfinite(logits.grad).all()


def test_masked_log_softmax_matches_log() -> None:
    logits = torch.randn(3, 5)
    mask = torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    log_probs = masked_log_softmax(logits, mask, dim=-1)
    probs = masked_softmax(logits, mask, dim=-1)
    assert torch.allclose(log_probs[mask], probs[mask].log(), atol=1e-6)
    assert torch.equal(log_probs[~mask], torch.zeros(int((~mask).sum())))


def test_masked_mean_skips_padding() -> None:
    values = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    mean = masked_mean(values, mask, dim=1)
    assert mean[0, 0].item() == 2.0
    assert mean[1, 0].item() == 0.0


def test_attention_rows_sum_over_keys() -> None:
    attention = pair_attention(5, 3)
    queries, keys = torch.randn(2, 4, 5), torch.randn(2, 6, 3)
    key_mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    weights = attention([queries], [keys], None, key_mask).weights  # (P, B, H, Lp, Lq)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(1, 2, 2, 4), atol=1e-6)
    assert torch.equal(weights[0, 1, :, :, 3:], torch.zeros(2, 4, 3))
    # The softmax is over keys j, not queries i: columns do not sum to 1.
    assert not torch.allclose(weights.sum(dim=-2), torch.ones(1, 2, 2, 6))


def reference_attention(attention: BilinearAttention, queries, keys, key_mask):
    """BA of a single pair written with explicit loops over batch, head and query position."""
    heads, head_low, d_low = attention.heads, attention.head_low, attention.d_low
    limit = attention.max_relative_position
    up = attention.query_projections[0].weight  # (d_low, d_p)
    key_weight = attention.key_projections[0].weight
    uq, wq = key_weight[:d_low], key_weight[d_low:]  # (d_low, d_q), (d_p, d_q)
    scorer = attention.scorers[0]  # (H, d_low / H)
    embeddings = attention.relative_embeddings[0][0]  # (2K + 1, d_p)
    batch, query_length, size = queries.shape[0], queries.shape[1], wq.shape[0]
    key_length = keys.shape[1]
    head_size = math.ceil(size / heads)
    output = torch.zeros(batch, query_length, size)
    for b in range(batch):
        hp = torch.relu(queries[b] @ up.T)
        hq = torch.relu(keys[b] @ uq.T)
        values = keys[b] @ wq.T
        valid = [j for j in range(key_length) if key_mask[b, j]]
        for h in range(heads):
            low = slice(h * head_low, (h + 1) * head_low)
            channels = slice(h * head_size, min((h + 1) * head_size, size))
            for i in range(query_length):
                scores = torch.stack([(scorer[h] * hp[i, low] * hq[j, low]).sum() for j in valid])
                weights = torch.softmax(scores, dim=0)
                for weight, j in zip(weights, valid):
                    offset = max(-limit, min(limit, j - i)) + limit
                    output[b, i, channels] += weight * (values[j, channels] + embeddings[offset, channels])
    return output


def test_attention_matches_reference_loops() -> None:
    # d_p = 5 with 2 heads checks the narrower last head; K = 2 < 5 checks the clipping.
    attention = pair_attention(5, 3, heads=2, d_low=4, limit=2)
    queries, keys = torch.randn(2, 4, 5), torch.randn(2, 6, 3)
    key_mask = torch.tensor([[True] * 6, [True, False, True, True, False, True]])
    with torch.no_grad():
        attention.relative_embeddings[0].normal_()
        output = attention([queries], [keys], None, key_mask).values[0][0]
        expected = reference_attention(attention, queries, keys, key_mask)
    assert torch.allclose(output, expected, atol=1e-5)


def test_attention_relative_offsets_are_key_minus_query() -> None:
    # Identical keys give uniform attention; with W^q = 0 the output is mean_j r_clip(j - i).
    attention = pair_attention(4, 4, heads=1, d_low=4, limit=1)
    with torch.no_grad():
        attention.key_projections[0].weight[4:].zero_()
        attention.relative_embeddings[0].copy_(torch.tensor([[[1.0] * 4, [10.0] * 4, [100.0] * 4]]))
    queries = torch.randn(1, 3, 4)
    keys = torch.randn(1, 1, 4).expand(1, 3, 4)
    output = attention([queries], [keys]).values[0][0, 0, :, 0]
    # i = 0: offsets 0, 1, 2 -> r_0, r_1, r_1; i = 2: offsets -2, -1, 0 -> r_-1, r_-1, r_0.
    expected = torch.tensor([(10 + 100 + 100) / 3, (1 + 10 + 100) / 3, (1 + 1 + 10) / 3])
    assert torch.allclose(output, expected, atol=1e-4)


def test_attention_shift_equivariant() -> None:
    attention = pair_attention(6, 6, heads=2, d_low=8, limit=2)
    with torch.no_grad():
        attention.relative_embeddings[0].normal_()
    sequence = torch.randn(2, 7, 6)
    shift = 3
    shifted = torch.cat([torch.randn(2, shift, 6), sequence], dim=1)
    mask = torch.ones(2, 7 + shift, dtype=torch.bool)
    mask[:, :shift] = False
    plain = attention([sequence], [sequence]).values[0][0]
    moved = attention([shifted], [shifted], mask, mask).values[0][0]
    assert torch.allclose(moved[:, shift:], plain, atol=1e-5)
    assert torch.equal(moved[:, :shift], torch.zeros(2, shift, 6))


def test_attention_key_padding_ignored() -> None:
    attention = pair_attention(5, 3)
    queries, keys = torch.randn(2, 4, 5), torch.randn(2, 6, 3)
    padded = torch.cat([keys, 50 * torch.randn(2, 3, 3)], dim=1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 6:] = False
    plain = attention([queries], [keys]).values[0]
    masked = attention([queries], [padded], None, mask).values[0]
    assert torch.allclose(masked, plain, atol=1e-5)


def test_channel_gate_columns_normalised() -> None:
    interaction = ChannelGatedInteraction.from_config(
        PairLayout((6,), (4,), SINGLE), small_config(gate_channels=5)
    )
    queries, keys = torch.randn(2, 7, 6), torch.randn(2, 3, 4)
    channel_map = interaction([queries], [keys]).channel_attention  # (P, B, c, c)
    assert torch.allclose(channel_map.sum(dim=-2), torch.ones(1, 2, 5), atol=1e-6)
    assert not torch.allclose(channel_map.sum(dim=-1), torch.ones(1, 2, 5))


def test_channel_gate_matches_formula() -> None:
    interaction = ChannelGatedInteraction.from_config(PairLayout((6,), (4,), SINGLE), small_config())
    gate = interaction.gate
    queries, keys = torch.randn(2, 7, 6), torch.randn(2, 3, 4)
    key_mask = torch.tensor([[True, True, False], [True, True, True]])
    output = gate([queries], [keys], None, key_mask)

    projected_queries = queries @ gate.query_projections[0].weight.T  # (B, Lp, c)
    projected_keys = keys @ gate.key_projections[0].weight.T
    query_mean = projected_queries.mean(dim=1)
    key_mean = torch.stack([projected_keys[0, :2].mean(0), projected_keys[1].mean(0)])
    channel_map = torch.softmax(-(query_mean[:, :, None] - key_mean[:, None, :]) ** 2, dim=1)
    mixed = projected_queries @ channel_map
    expected = torch.sigmoid(gate.gate_networks[0](mixed[None]))[0]
    assert torch.allclose(output.channel_attention[0], channel_map, atol=1e-6)
    assert torch.allclose(output.gates[0][0], expected, atol=1e-6)


def test_interaction_residual_only() -> None:
    interaction = ChannelGatedInteraction.from_config(PairLayout((6,), (4,), SINGLE), small_config())
    with torch.no_grad():
        # BA output is sum_j A_ij (X^q_j W^q + r): zero W^q and r make BA * CG = 0.
        interaction.attention.key_projections[0].weight[interaction.attention.d_low :].zero_()
        interaction.attention.relative_embeddings[0].zero_()
    queries, keys = torch.randn(2, 7, 6), torch.randn(2, 3, 4)
    output = interaction([queries], [keys]).values[0]
    expected = interaction.output_networks[0](queries[None])[0]
    assert torch.allclose(output, expected, atol=1e-6)


def test_interaction_query_padding_ignored() -> None:
    text = SelfInteraction(10, small_config()).eval()
    words = torch.randn(2, 5, 10)
    padded = torch.cat([words, 30 * torch.randn(2, 4, 10)], dim=1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[:, 5:] = False
    plain = text(words)
    masked = text(padded, mask)
    assert torch.allclose(masked[:, :5], plain, atol=1e-5)
    assert torch.equal(masked[:, 5:], torch.zeros(2, 4, 12))


def test_interaction_fully_masked_zero() -> None:
    text = SelfInteraction(10, small_config())
    words = torch.randn(2, 5, 10, requires_grad=True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    output = text(words, mask)
    output.sum().backward()
    assert torch.equal(output, torch.zeros(2, 5, 12))
    assert torch.isfinite(words.grad).all()
    for name, parameter in text.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def test_interaction_shift_equivariant() -> None:
    text = SelfInteraction(8, small_config(max_relative_position=2)).eval()
    with torch.no_grad():
        text.interaction.attention.relative_embeddings[0].normal_()
    sequence = torch.randn(2, 6, 8)
    shifted = torch.cat([torch.randn(2, 2, 8), sequence], dim=1)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, :2] = False
    assert torch.allclose(text(shifted, mask)[:, 2:], text(sequence), atol=1e-5)


def test_feed_forward_groups_independent() -> None:
    network = FeedForward(4, 3, dropout=0.0, groups=2)
    inputs = torch.randn(2, 5, 6, 4)
    output = network(inputs)
    first = F.linear(torch.relu(inputs[0] @ network.weight1[0] + network.bias1[0]), network.weight2[0].T)
    first = F.layer_norm(first + network.bias2[0], (3,))
    assert torch.allclose(output[0], first * network.norm_scale[0] + network.norm_shift[0], atol=1e-6)
    assert torch.allclose(output.mean(dim=-1), torch.zeros(2, 5, 6), atol=1e-5)


def test_feed_forward_group_gradients() -> None:
    torch.manual_seed(0)
    grouped = FeedForward(4, 3, dropout=0.0, groups=3)
    single = FeedForward(4, 3, dropout=0.0, groups=1)
    with torch.no_grad():
        for name, parameter in single.named_parameters():
            parameter.copy_(getattr(grouped, name)[1:2])
    inputs = torch.randn(3, 2, 5, 4)

    grouped(inputs)[1].square().sum().backward()
    single(inputs[1:2]).square().sum().backward()

    for name, parameter in grouped.named_parameters():
        assert torch.allclose(parameter.grad[1:2], getattr(single, name).grad, atol=1e-5), name
        assert torch.count_nonzero(parameter.grad[0]) == 0, name
        assert torch.count_nonzero(parameter.grad[2]) == 0, name


def test_pair_layout_rejects_unordered() -> None:
    with pytest.raises(ValueError, match="ordered by query"):
        PairLayout((3, 4), (3, 4), ((1, 0), (0, 1)))


def test_pair_layout_rejects_unused_input() -> None:
    with pytest.raises(ValueError, match="unused key inputs \\[1\\]"):
        PairLayout((3, 4), (3, 4), ((0, 0), (1, 0)))


def test_attention_rejects_wrong_size() -> None:
    attention = pair_attention(5, 3)
    with pytest.raises(ValueError, match="expected 3 features, got 4"):
        attention([torch.randn(1, 2, 5)], [torch.randn(1, 2, 4)])
