"""Tests of the pairwise modality interaction (PMI) and its fusion."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.config import InteractionConfig
from models.fusion import VideoModalityInteraction, pair_names, select_pairs
from models.interaction import ChannelGatedInteraction, FeedForward

DIMS = (5, 8, 3)
STEPS = 6


def small_config(**changes: object) -> InteractionConfig:
    settings = dict(
        d_model=12,
        heads=2,
        d_low=8,
        max_relative_position=2,
        gate_channels=4,
        dropout=0.0,
        interaction="pairwise",
        pairs="all",
        fusion="weighted",
    )
    settings.update(changes)
    return InteractionConfig(**settings)


def video_batch(batch: int = 2) -> tuple[list[torch.Tensor], torch.Tensor]:
    video = [torch.randn(batch, STEPS, dim) for dim in DIMS]
    mask = torch.ones(batch, STEPS, dtype=torch.bool)
    mask[1, 4:] = False
    return video, mask


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def test_select_pairs_counts() -> None:
    assert len(select_pairs(3, "all")) == 9
    assert select_pairs(3, "intra") == ((0, 0), (1, 1), (2, 2))
    assert len(select_pairs(3, "inter")) == 6
    assert all(p != q for p, q in select_pairs(3, "inter"))


def test_select_pairs_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="inter needs at least two"):
        select_pairs(1, "inter")
    with pytest.raises(ValueError, match="pairs must be one of"):
        select_pairs(2, "cross")


def test_pair_names_order() -> None:
    names = pair_names(["irv2", "c3d"], "all")
    assert names == ["irv2-irv2", "irv2-c3d", "c3d-irv2", "c3d-c3d"]
    assert pair_names(["irv2", "c3d"], [(1, 0)]) == ["c3d-irv2"]


def test_weighted_alpha_sums_over_pairs() -> None:
    model = VideoModalityInteraction(DIMS, small_config())
    video, mask = video_batch()
    output = model(video, mask)
    assert output.features.shape == (2, STEPS, 12)
    assert output.alpha.shape == (2, STEPS, 9)
    assert torch.allclose(output.alpha[mask].sum(dim=-1), torch.ones(int(mask.sum())), atol=1e-6)
    assert torch.equal(output.alpha[1, 4:], torch.zeros(2, 9))
    assert torch.equal(output.features[1, 4:], torch.zeros(2, 12))


def test_weighted_fusion_uses_alpha() -> None:
    model = VideoModalityInteraction(DIMS, small_config()).eval()
    video, mask = video_batch()
    output = model(video, mask)
    pair_values = model.interaction(video, video, mask, mask).values  # (P, B, N, d)
    expected = torch.einsum("bnp,pbnd->bnd", output.alpha, pair_values)
    assert torch.allclose(output.features, expected, atol=1e-5)


@pytest.mark.parametrize(("mode", "count"), [("intra", 3), ("inter", 6), ("all", 9)])
def test_pair_modes_alpha_width(mode: str, count: int) -> None:
    model = VideoModalityInteraction(DIMS, small_config(pairs=mode))
    video, mask = video_batch()
    assert model(video, mask).alpha.shape[-1] == count
    assert model.interaction.layout.num_pairs == count


def test_sum_fusion_plain_sum() -> None:
    model = VideoModalityInteraction(DIMS, small_config(fusion="sum")).eval()
    video, mask = video_batch()
    output = model(video, mask)
    pair_values = model.interaction(video, video, mask, mask).values
    assert output.alpha is None
    assert torch.allclose(output.features, pair_values.sum(dim=0), atol=1e-5)


def test_concat_fusion_linear() -> None:
    model = VideoModalityInteraction(DIMS, small_config(fusion="concat")).eval()
    video, mask = video_batch()
    output = model(video, mask)
    pair_values = model.interaction(video, video, mask, mask).values
    flat = pair_values.permute(1, 2, 0, 3).flatten(start_dim=2)
    expected = model.fusion(flat) * mask[..., None]
    assert torch.allclose(output.features, expected, atol=1e-5)


def test_no_interaction_linear() -> None:
    model = VideoModalityInteraction(DIMS, small_config(interaction="none"))
    video, mask = video_batch()
    output = model(video, mask)
    expected = model.interaction(torch.cat(video, dim=-1)) * mask[..., None]
    assert output.alpha is None
    assert torch.allclose(output.features, expected, atol=1e-6)


def test_concat_intra_single_pair() -> None:
    model = VideoModalityInteraction(DIMS, small_config(interaction="concat_intra")).eval()
    video, mask = video_batch()
    output = model(video, mask)
    expected = model.interaction(torch.cat(video, dim=-1), mask)
    assert output.alpha is None
    assert model.interaction.interaction.layout.query_dims == (sum(DIMS),)
    assert torch.allclose(output.features, expected, atol=1e-6)


def test_pair_depends_on_its_modalities() -> None:
    model = VideoModalityInteraction(DIMS, small_config()).eval()
    video, mask = video_batch()
    before = model.interaction(video, video, mask, mask).values
    changed = [video[0], video[1], video[2] + torch.randn_like(video[2])]
    after = model.interaction(changed, changed, mask, mask).values
    for k, (p, q) in enumerate(model.pairs):
        if 2 in (p, q):
            assert not torch.allclose(after[k], before[k]), (p, q)
        else:
            assert torch.allclose(after[k], before[k], atol=1e-6), (p, q)


def feed_forward_at(network: FeedForward, group: int, inputs: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(inputs @ network.weight1[group] + network.bias1[group])
    output = F.layer_norm(hidden @ network.weight2[group] + network.bias2[group], (network.d_out,))
    return output * network.norm_scale[group] + network.norm_shift[group]


def reference_pair(
    interaction: ChannelGatedInteraction, pair: int, video: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """INT of one pair from the grouped module's weights, without grouping or head padding."""
    layout, attention, gate = interaction.layout, interaction.attention, interaction.gate
    p, q = layout.pairs[pair]
    group, position = layout.query_slot(pair)
    key_position = layout.key_slot(pair)
    d_low, channels = attention.d_low, gate.channels
    xp, xq = video[p], video[q]
    size = xp.shape[-1]
    steps = xp.shape[1]

    up = attention.query_projections[group].weight[position * d_low : (position + 1) * d_low]
    key_weight = attention.key_projections[q].weight
    uq = key_weight[key_position * d_low : (key_position + 1) * d_low]
    value_start = len(layout.key_groups[q]) * d_low + sum(attention.value_sizes[q][:key_position])
    wq = key_weight[value_start : value_start + size]
    heads, head_low = attention.heads, attention.head_low
    hp = torch.relu(xp @ up.T).unflatten(-1, (heads, head_low))
    hq = torch.relu(xq @ uq.T).unflatten(-1, (heads, head_low))
    scores = torch.einsum("biht,ht,bjht->bhij", hp, attention.scorers[pair], hq)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    limit = attention.max_relative_position
    offsets = torch.arange(steps)[None, :] - torch.arange(steps)[:, None]
    embeddings = attention.relative_embeddings[group][position][offsets.clamp(-limit, limit) + limit]
    head_of_channel = torch.arange(size) // math.ceil(size / heads)
    per_channel = weights[:, head_of_channel]  # (B, d_p, i, j)
    attended = torch.einsum("bcij,bjc->bic", per_channel, xq @ wq.T)
    attended = attended + torch.einsum("bcij,ijc->bic", per_channel, embeddings)

    vp = gate.query_projections[group].weight[position * channels : (position + 1) * channels]
    vq = gate.key_projections[q].weight[key_position * channels : (key_position + 1) * channels]
    valid = mask[..., None].float()
    query_mean = ((xp @ vp.T) * valid).sum(1) / valid.sum(1)
    key_mean = ((xq @ vq.T) * valid).sum(1) / valid.sum(1)
    channel_map = torch.softmax(-(query_mean[:, :, None] - key_mean[:, None, :]) ** 2, dim=1)
    gates = torch.sigmoid(feed_forward_at(gate.gate_networks[group], position, (xp @ vp.T) @ channel_map))

    output = feed_forward_at(interaction.output_networks[group], position, attended * gates + xp)
    return output * valid


def test_grouped_pairs_match_reference() -> None:
    model = VideoModalityInteraction(DIMS, small_config()).eval()
    with torch.no_grad():
        for embeddings in model.interaction.attention.relative_embeddings:
            embeddings.normal_()
    video, mask = video_batch()
    with torch.no_grad():
        values = model.interaction(video, video, mask, mask).values
        for k in range(len(model.pairs)):
            expected = reference_pair(model.interaction, k, video, mask)
            assert torch.allclose(values[k], expected, atol=1e-5), model.pairs[k]


def test_rejects_wrong_modality_size() -> None:
    model = VideoModalityInteraction(DIMS, small_config())
    video, mask = video_batch()
    video[1] = torch.randn(2, STEPS, 7)
    with pytest.raises(ValueError, match=r"video\[1\]: expected 8 features, got 7"):
        model(video, mask)
