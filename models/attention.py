"""Multi-head low-rank bilinear attention (BA) with relative position embeddings.

BA is the sequence-level half of the Channel-Gated Modality Interaction of PMI (Chen et al.,
"Learning Modality Interaction for Temporal Sentence Localization and Event Captioning in
Videos", ECCV 2020, Eq. 2-3). One module computes BA for a whole set of (query, key) input
pairs at once, as the modality pairs of PMI need. The projections of one input for all its
pairs are a single matrix product, and the attention maps of all pairs are one batched
tensor.

The helpers `masked_softmax`, `masked_log_softmax` and `masked_mean` are shared by every
module that normalises or pools over positions. A position whose mask is False gets zero
weight, and a row with no valid position gives zeros, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Softmax of `logits` over `dim` that gives zero weight where `mask` is False.

    logits: any shape. mask: bool, broadcastable to `logits`, True marks a valid entry;
    None means all valid. A slice along `dim` with no valid entry becomes all zeros.
    Returns probabilities with the shape of `logits`.
    """
    if mask is None:
        return torch.softmax(logits, dim=dim)
    # The finite minimum (not -inf) keeps a fully masked slice finite: its softmax is uniform
    # and the multiplication by the mask then zeroes it, with zero gradient.
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=dim) * mask.to(logits.dtype)


def masked_log_softmax(logits: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Log-softmax of `logits` over `dim` with masked entries set to 0 (not -inf).

    logits: any shape. mask: bool, broadcastable to `logits`, True marks a valid entry.
    Valid entries contain log r of `masked_softmax`. Masked entries contain 0, so a product with
    a target that is 0 there stays finite. Returns a tensor with the shape of `logits`.
    """
    if mask is None:
        return torch.log_softmax(logits, dim=dim)
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.log_softmax(filled, dim=dim).masked_fill(~mask, 0.0)


def masked_mean(values: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Mean of `values` over the valid positions of axis `dim`.

    values: (..., L, ...) with the positions on axis `dim`. mask: bool of the shape of
    `values` up to and including axis `dim` (for example (B, L) for values (B, L, d) and
    dim=1), True marks a valid position; None means all valid. A slice with no valid
    position gives zeros. Returns `values` with axis `dim` removed.
    """
    if mask is None:
        return values.mean(dim=dim)
    dim = dim % values.dim()
    weights = mask.to(values.dtype)
    weights = weights.reshape(weights.shape + (1,) * (values.dim() - weights.dim()))
    total = (values * weights).sum(dim=dim)
    count = weights.sum(dim=dim).clamp_min(1.0)
    return total / count


@dataclass(frozen=True)
class PairLayout:
    """Ordered (query input, key input) pairs that one grouped interaction computes together.

    query_dims[a]: feature size of query input a. key_dims[b]: feature size of key input b.
    pairs[k] = (a, b): pair k lets query input a attend to key input b. Pairs are ordered by
    query input (non-decreasing a), so the pairs of one query input are contiguous and form
    its group. Every input must take part in at least one pair.

    For PMI over M modalities, query_dims and key_dims are both the modality sizes and pair
    (p, q) is the interaction INT(X^p, X^q).
    """

    query_dims: tuple[int, ...]
    key_dims: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    # (query input, pair indices) per group, in pair order.
    groups: tuple[tuple[int, tuple[int, ...]], ...] = field(init=False, repr=False)
    # Pair indices of every key input, in pair order.
    key_groups: tuple[tuple[int, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "query_dims", tuple(int(d) for d in self.query_dims))
        object.__setattr__(self, "key_dims", tuple(int(d) for d in self.key_dims))
        object.__setattr__(self, "pairs", tuple((int(a), int(b)) for a, b in self.pairs))
        if not self.pairs:
            raise ValueError("a pair layout needs at least one (query, key) pair")
        if any(d < 1 for d in self.query_dims + self.key_dims):
            raise ValueError(f"feature sizes must be positive: {self.query_dims}, {self.key_dims}")
        if len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"duplicate pairs in {self.pairs}")
        for a, b in self.pairs:
            if not (0 <= a < len(self.query_dims) and 0 <= b < len(self.key_dims)):
                raise ValueError(
                    f"pair ({a}, {b}) is out of range for {len(self.query_dims)} query and "
                    f"{len(self.key_dims)} key inputs"
                )
        query_order = [a for a, _ in self.pairs]
        if query_order != sorted(query_order):
            raise ValueError(f"pairs must be ordered by query input, got {self.pairs}")
        unused_queries = set(range(len(self.query_dims))) - set(query_order)
        unused_keys = set(range(len(self.key_dims))) - {b for _, b in self.pairs}
        if unused_queries or unused_keys:
            raise ValueError(
                f"every input must be in a pair: unused query inputs {sorted(unused_queries)}, "
                f"unused key inputs {sorted(unused_keys)}"
            )

        groups = tuple(
            (a, tuple(k for k, (query, _) in enumerate(self.pairs) if query == a))
            for a in range(len(self.query_dims))
        )
        key_groups = tuple(
            tuple(k for k, (_, key) in enumerate(self.pairs) if key == b)
            for b in range(len(self.key_dims))
        )
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "key_groups", key_groups)

    @property
    def num_pairs(self) -> int:
        """Number of pairs P."""
        return len(self.pairs)

    def query_slot(self, pair: int) -> tuple[int, int]:
        """Return (group index, position inside the group) of pair index `pair`."""
        query = self.pairs[pair][0]
        return query, self.groups[query][1].index(pair)

    def key_slot(self, pair: int) -> int:
        """Return the position of pair index `pair` among the pairs of its key input."""
        return self.key_groups[self.pairs[pair][1]].index(pair)

    def key_order(self) -> list[int]:
        """Return the pair indices listed key input by key input (the key projection order)."""
        return [k for pair_ids in self.key_groups for k in pair_ids]


def check_inputs(
    name: str, inputs: Sequence[Tensor], dims: Sequence[int], mask: Tensor | None
) -> tuple[int, int]:
    """Raise ValueError unless `inputs` match `dims`, share (B, L) and agree with `mask`.

    inputs: one (B, L, dims[i]) tensor per input. mask: bool (B, L) or None.
    Returns (B, L).
    """
    if len(inputs) != len(dims):
        raise ValueError(f"{name}: expected {len(dims)} inputs, got {len(inputs)}")
    batch, length = inputs[0].shape[:2]
    for index, (tensor, dim) in enumerate(zip(inputs, dims)):
        if tensor.dim() != 3 or tensor.shape[0] != batch or tensor.shape[1] != length:
            raise ValueError(
                f"{name}[{index}]: expected shape ({batch}, {length}, {dim}), "
                f"got {tuple(tensor.shape)}"
            )
        if tensor.shape[2] != dim:
            raise ValueError(f"{name}[{index}]: expected {dim} features, got {tensor.shape[2]}")
    if mask is not None and tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} mask: expected shape ({batch}, {length}), got {tuple(mask.shape)}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"{name} mask: expected dtype torch.bool, got {mask.dtype}")
    return batch, length


def relative_offsets(query_length: int, key_length: int, device: torch.device) -> Tensor:
    """Return the offsets j - i of key position j from query position i: long (Lp, Lq)."""
    keys = torch.arange(key_length, device=device)
    queries = torch.arange(query_length, device=device)
    return keys[None, :] - queries[:, None]


@dataclass
class BilinearAttentionOutput:
    """Result of `BilinearAttention` for P pairs.

    values: one tensor per query group, (G, B, Lp, d_a): the attended values of the G pairs
        of query input a, in the query input's own size d_a, zero at padded query positions.
    weights: (P, B, H, Lp, Lq) attention maps. Each row i sums to 1 over the valid key
        positions j. Rows of padded queries or of fully masked keys are zero.
    """

    values: list[Tensor]
    weights: Tensor


class BilinearAttention(nn.Module):
    """Multi-head low-rank bilinear attention BA(X^p, X^q) for every pair of a `PairLayout`.

    For pair (p, q), head h, query position i and key position j:
        A_ij = s_h^T (relu(X^p_i U^p)_h * relu(X^q_j U^q)_h)
        weights_ij = softmax over j of A_ij (padded key positions j excluded)
        BA_i = sum_j weights_ij (X^q_j W^q + r_clip(j - i))_h, heads concatenated.
    U^p (d_p x d_low) and U^q (d_q x d_low) are bias-free low-rank projections; the rank d_low
    is split evenly into heads of d_low / H. s_h is the per-head scoring vector (p in the
    paper). W^q (d_q x d_p, bias-free) maps the keys into the query's own size d_p, so the
    residual + X^p of INT adds in X^p's space. r_k (k in [-K, K], K = max_relative_position)
    are learned relative position embeddings on the value side (Shaw et al. 2018): offset
    j - i is clipped to [-K, K]. With max_relative_position None no embedding is added.

    The value channels d_p are split into H heads of ceil(d_p / H) channels. When d_p is not
    a multiple of H, the values are zero-padded and the padding is cut off after the heads
    are concatenated, so the last head is narrower.

    All query inputs of one call share the length Lp and all key inputs the length Lq, as
    the modalities of a subsampled video do. The attention weights get no dropout, because
    dropout sits in the feed-forward networks of INT. Projections are initialised as
    torch.nn.Linear, the scoring vectors uniformly in ±1/sqrt(d_low / H), the position
    embeddings from N(0, 0.02^2).
    """

    def __init__(
        self,
        layout: PairLayout,
        heads: int,
        d_low: int,
        max_relative_position: int | None,
    ) -> None:
        super().__init__()
        if heads < 1 or d_low % heads:
            raise ValueError(f"d_low ({d_low}) must be a positive multiple of heads ({heads})")
        if max_relative_position is not None and max_relative_position < 0:
            raise ValueError(f"max_relative_position must be >= 0, got {max_relative_position}")
        self.layout = layout
        self.heads = heads
        self.d_low = d_low
        self.head_low = d_low // heads
        self.max_relative_position = max_relative_position

        self.query_projections = nn.ModuleList(
            nn.Linear(layout.query_dims[a], len(pair_ids) * d_low, bias=False)
            for a, pair_ids in layout.groups
        )
        # One matrix per key input contains [U^q of its pairs | W^q of its pairs].
        self.value_sizes = [
            [layout.query_dims[layout.pairs[k][0]] for k in pair_ids]
            for pair_ids in layout.key_groups
        ]
        self.key_projections = nn.ModuleList(
            nn.Linear(layout.key_dims[b], len(pair_ids) * d_low + sum(sizes), bias=False)
            for b, (pair_ids, sizes) in enumerate(zip(layout.key_groups, self.value_sizes))
        )
        self.scorers = nn.Parameter(torch.empty(layout.num_pairs, heads, self.head_low))
        bound = 1.0 / math.sqrt(self.head_low)
        nn.init.uniform_(self.scorers, -bound, bound)

        if max_relative_position is None:
            self.relative_embeddings = None
        else:
            self.relative_embeddings = nn.ParameterList(
                nn.Parameter(
                    torch.randn(len(pair_ids), 2 * max_relative_position + 1, layout.query_dims[a])
                    * 0.02
                )
                for a, pair_ids in layout.groups
            )
        inverse = torch.empty(layout.num_pairs, dtype=torch.long)
        inverse[torch.tensor(layout.key_order())] = torch.arange(layout.num_pairs)
        self.register_buffer("key_to_pair_order", inverse, persistent=False)

    def forward(
        self,
        queries: Sequence[Tensor],
        keys: Sequence[Tensor],
        query_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        offsets: Tensor | None = None,
    ) -> BilinearAttentionOutput:
        """Attend from every query input to its paired key inputs.

        queries: one (B, Lp, d_a) tensor per query input. keys: one (B, Lq, d_b) tensor per
        key input. query_mask: bool (B, Lp), key_mask: bool (B, Lq), True = valid position,
        None = all valid. offsets: long (Lp, Lq) relative offset of key j from query i,
        default j - i (both sequences on one time axis).
        """
        batch, query_length = check_inputs("queries", queries, self.layout.query_dims, query_mask)
        key_batch, key_length = check_inputs("keys", keys, self.layout.key_dims, key_mask)
        if key_batch != batch:
            raise ValueError(f"queries have batch size {batch} but keys have {key_batch}")
        pairs = self.layout.num_pairs
        heads, head_low = self.heads, self.head_low

        # Low-rank features of every pair: (B, L, P, H, d_low / H), pairs in pair order.
        query_low = torch.cat(
            [
                torch.relu(projection(queries[a]))
                for (a, _), projection in zip(self.layout.groups, self.query_projections)
            ],
            dim=-1,
        ).view(batch, query_length, pairs, heads, head_low)
        key_low_parts = []
        values_by_pair: list[Tensor | None] = [None] * pairs
        for b, (projection, pair_ids) in enumerate(zip(self.key_projections, self.layout.key_groups)):
            projected = projection(keys[b])
            low, values = projected.split(
                [len(pair_ids) * self.d_low, sum(self.value_sizes[b])], dim=-1
            )
            key_low_parts.append(torch.relu(low))
            for k, value in zip(pair_ids, values.split(self.value_sizes[b], dim=-1)):
                values_by_pair[k] = value
        key_low = torch.cat(key_low_parts, dim=-1).view(batch, key_length, pairs, heads, head_low)
        key_low = key_low.index_select(2, self.key_to_pair_order)

        logits = torch.einsum("bipht,bjpht->pbhij", query_low * self.scorers, key_low)
        key_valid = None if key_mask is None else key_mask[None, :, None, None, :]
        weights = masked_softmax(logits, key_valid, dim=-1)
        if query_mask is not None:
            weights = weights * query_mask[None, :, None, :, None].to(weights.dtype)

        binned = None
        if self.relative_embeddings is not None:
            if offsets is None:
                offsets = relative_offsets(query_length, key_length, weights.device)
            if tuple(offsets.shape) != (query_length, key_length):
                raise ValueError(
                    f"offsets: expected shape ({query_length}, {key_length}), "
                    f"got {tuple(offsets.shape)}"
                )
            limit = self.max_relative_position
            buckets = F.one_hot(offsets.clamp(-limit, limit) + limit, 2 * limit + 1)
            # Attention mass per clipped offset: (P, B, H, Lp, 2K + 1).
            binned = torch.einsum("pbhij,ijk->pbhik", weights, buckets.to(weights.dtype))

        outputs = []
        for group, (a, pair_ids) in enumerate(self.layout.groups):
            size = self.layout.query_dims[a]
            head_size = math.ceil(size / heads)
            padding = heads * head_size - size
            first, last = pair_ids[0], pair_ids[-1] + 1
            values = torch.stack([values_by_pair[k] for k in pair_ids], dim=0)
            values = F.pad(values, (0, padding)).view(len(pair_ids), batch, key_length, heads, head_size)
            attended = torch.einsum("gbhij,gbjhd->gbihd", weights[first:last], values)
            if binned is not None:
                embeddings = F.pad(self.relative_embeddings[group], (0, padding))
                embeddings = embeddings.view(len(pair_ids), -1, heads, head_size)
                attended = attended + torch.einsum("gbhik,gkhd->gbihd", binned[first:last], embeddings)
            attended = attended.reshape(len(pair_ids), batch, query_length, heads * head_size)
            outputs.append(attended[..., :size])
        return BilinearAttentionOutput(values=outputs, weights=weights)
