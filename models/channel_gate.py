"""Channel gate CG: the channel-level half of the Channel-Gated Modality Interaction.

CG(X^p, X^q) = sigmoid(FFN_gate((X^p V^p) S^pq)) modulates the bilinear attention output of
the same pair element-wise (PMI, Chen et al. ECCV 2020, Eq. 4-6). Like `BilinearAttention`,
one module computes the gates of every pair of a `PairLayout` together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.attention import PairLayout, check_inputs, masked_mean


@dataclass
class ChannelGateOutput:
    """Result of `ChannelGate` for P pairs.

    gates: one tensor per query group, (G, B, Lp, d_a), values in (0, 1): the gates of the G
        pairs of query input a in that input's size d_a.
    channel_attention: (P, B, c, c) channel-to-channel map S; entry [i, j] is the weight of
        query channel i for output channel j, and each column j sums to 1 over i.
    """

    gates: list[Tensor]
    channel_attention: Tensor


class ChannelGate(nn.Module):
    """Channel gate CG(X^p, X^q) for every pair of a `PairLayout`.

    For pair (p, q) with c = `channels`:
        xp_bar = mean over valid positions of X^p V^p   (c,)
        xq_bar = mean over valid positions of X^q V^q   (c,)
        S_ij = -(xp_bar_i - xq_bar_j)^2, softmax over i (down each column j)
        CG = sigmoid(FFN_gate((X^p V^p) S))              (Lp, d_p)
    V^p (d_p x c) and V^q (d_q x c) are bias-free projections initialised as torch.nn.Linear.
    Padded positions (mask False) are left out of both means; a fully masked sequence has a
    zero mean. The channel softmax runs over channels, not positions, so it needs no mask.

    gate_networks: one module per query group of the layout (in group order) mapping
    (G, B, Lp, c) to (G, B, Lp, d_a); `ChannelGatedInteraction` passes the grouped
    position-wise FFN (c -> 2 d_a -> d_a with LayerNorm) of `models.interaction`.
    """

    def __init__(
        self, layout: PairLayout, channels: int, gate_networks: Sequence[nn.Module]
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if len(gate_networks) != len(layout.groups):
            raise ValueError(
                f"expected one gate network per query group ({len(layout.groups)}), "
                f"got {len(gate_networks)}"
            )
        self.layout = layout
        self.channels = channels
        self.query_projections = nn.ModuleList(
            nn.Linear(layout.query_dims[a], len(pair_ids) * channels, bias=False)
            for a, pair_ids in layout.groups
        )
        self.key_projections = nn.ModuleList(
            nn.Linear(layout.key_dims[b], len(pair_ids) * channels, bias=False)
            for b, pair_ids in enumerate(layout.key_groups)
        )
        self.gate_networks = nn.ModuleList(gate_networks)
        inverse = torch.empty(layout.num_pairs, dtype=torch.long)
        inverse[torch.tensor(layout.key_order())] = torch.arange(layout.num_pairs)
        self.register_buffer("key_to_pair_order", inverse, persistent=False)

    def forward(
        self,
        queries: Sequence[Tensor],
        keys: Sequence[Tensor],
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> ChannelGateOutput:
        """Compute the gates of every pair.

        queries: one (B, Lp, d_a) tensor per query input. keys: one (B, Lq, d_b) tensor per
        key input. query_mask: bool (B, Lp), key_mask: bool (B, Lq), True = valid position,
        None = all valid.
        """
        batch, query_length = check_inputs("queries", queries, self.layout.query_dims, query_mask)
        key_batch, key_length = check_inputs("keys", keys, self.layout.key_dims, key_mask)
        if key_batch != batch:
            raise ValueError(f"queries have batch size {batch} but keys have {key_batch}")
        pairs, channels = self.layout.num_pairs, self.channels

        # Channel projections of every pair: (B, L, P, c), pairs in pair order.
        query_channels = torch.cat(
            [
                projection(queries[a])
                for (a, _), projection in zip(self.layout.groups, self.query_projections)
            ],
            dim=-1,
        ).view(batch, query_length, pairs, channels)
        key_channels = torch.cat(
            [projection(keys[b]) for b, projection in enumerate(self.key_projections)], dim=-1
        ).view(batch, key_length, pairs, channels)
        key_channels = key_channels.index_select(2, self.key_to_pair_order)

        query_summary = masked_mean(query_channels, query_mask, dim=1)  # (B, P, c)
        key_summary = masked_mean(key_channels, key_mask, dim=1)  # (B, P, c)
        scores = -(query_summary[..., :, None] - key_summary[..., None, :]).square()
        channel_attention = torch.softmax(scores, dim=-2).permute(1, 0, 2, 3)  # (P, B, c, c)

        mixed = torch.einsum("bipc,pbcd->pbid", query_channels, channel_attention)
        gates = [
            torch.sigmoid(network(mixed[pair_ids[0] : pair_ids[-1] + 1]))
            for (_, pair_ids), network in zip(self.layout.groups, self.gate_networks)
        ]
        return ChannelGateOutput(gates=gates, channel_attention=channel_attention)
