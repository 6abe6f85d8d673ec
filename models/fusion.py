"""Pairwise Modality Interaction (PMI) of a video's feature sequences and their fusion.

Given M modality sequences X^1..X^M of N steps each, PMI computes INT(X^p, X^q) for the
selected ordered modality pairs (all M^2 by default, p may equal q). The result, a
(N, P, d_model) tensor, is fused into one (N, d_model) video feature (Chen et al.,
ECCV 2020, Eq. 7). The weighted fusion also returns the per-step pair weights alpha, the
explainability output that predictions save.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.attention import PairLayout, check_inputs
from models.config import PAIR_MODES, InteractionConfig
from models.interaction import ChannelGatedInteraction, SelfInteraction


def select_pairs(num_modalities: int, mode: str) -> tuple[tuple[int, int], ...]:
    """Return the ordered modality pairs (p, q) of `mode`, sorted by p, then q.

    mode: `all` (every ordered pair, M^2), `intra` (p = q, M pairs) or `inter` (p != q,
    M^2 - M pairs). Raises ValueError for an unknown mode or when `inter` has one modality.
    """
    if num_modalities < 1:
        raise ValueError(f"need at least one modality, got {num_modalities}")
    if mode not in PAIR_MODES:
        raise ValueError(f"pairs must be one of {', '.join(PAIR_MODES)}, got {mode!r}")
    pairs = tuple(
        (p, q)
        for p in range(num_modalities)
        for q in range(num_modalities)
        if mode == "all" or (mode == "intra") == (p == q)
    )
    if not pairs:
        raise ValueError(f"pairs: inter needs at least two modalities, got {num_modalities}")
    return pairs


def pair_names(
    modality_names: Sequence[str], pairs: str | Sequence[tuple[int, int]]
) -> list[str]:
    """Return a name "p-q" per pair (for example "irv2-c3d"), in the order of alpha's last axis.

    modality_names: the names of the modalities, in the order of the model's inputs.
    pairs: a pair mode (`all`, `intra` or `inter`) or explicit (p, q) index pairs.
    """
    if isinstance(pairs, str):
        pairs = select_pairs(len(modality_names), pairs)
    names = []
    for p, q in pairs:
        if not (0 <= p < len(modality_names) and 0 <= q < len(modality_names)):
            raise ValueError(f"pair ({p}, {q}) is out of range for modalities {list(modality_names)}")
        names.append(f"{modality_names[p]}-{modality_names[q]}")
    return names


@dataclass
class VideoInteractionOutput:
    """Fused video feature and, for weighted fusion, the pair weights.

    features: (B, N, d_model) fused video feature X_hat, zero at padded steps.
    alpha: (B, N, P) weight of each modality pair at each step, summing to 1 over pairs at
        valid steps and zero at padded steps; None unless interaction is `pairwise` with
        `weighted` fusion.
    """

    features: Tensor
    alpha: Tensor | None


class VideoModalityInteraction(nn.Module):
    """Video encoder of PMI: modality interaction followed by fusion, with ablation switches.

    interaction `pairwise`: INT(X^p, X^q) for the pairs of `config.pairs`, computed together,
    then fused by `config.fusion`:
      - `weighted`: one linear layer shared by all steps maps the flattened P * d_model vector
        of step n to P logits e_n, alpha_n = softmax over pairs of e_n, and
        X_hat_n = sum_m alpha_nm INT_m(n).
      - `sum`: X_hat_n = sum over pairs of INT_m(n).
      - `concat`: a linear layer maps the flattened P * d_model vector to d_model.
    interaction `concat_intra`: the modalities are concatenated along channels into one
      sequence X and X_hat = INT(X, X).
    interaction `none`: the concatenated raw features go through one linear layer to d_model.
    Outputs at padded steps are zero.
    """

    def __init__(self, modality_dims: Sequence[int], config: InteractionConfig) -> None:
        super().__init__()
        self.modality_dims = tuple(int(d) for d in modality_dims)
        if not self.modality_dims:
            raise ValueError("need at least one modality feature size")
        self.config = config
        self.pairs: tuple[tuple[int, int], ...] = ()
        total = sum(self.modality_dims)
        if config.interaction == "pairwise":
            self.pairs = select_pairs(len(self.modality_dims), config.pairs)
            layout = PairLayout(self.modality_dims, self.modality_dims, self.pairs)
            self.interaction = ChannelGatedInteraction.from_config(layout, config)
            flat = len(self.pairs) * config.d_model
            if config.fusion == "weighted":
                self.fusion = nn.Linear(flat, len(self.pairs))
            elif config.fusion == "concat":
                self.fusion = nn.Linear(flat, config.d_model)
            else:
                self.fusion = None
        elif config.interaction == "concat_intra":
            self.interaction = SelfInteraction(total, config)
        else:
            self.interaction = nn.Linear(total, config.d_model)

    def forward(self, video: Sequence[Tensor], video_mask: Tensor | None = None) -> VideoInteractionOutput:
        """Encode the modality sequences of a batch of videos.

        video: one (B, N, d_m) tensor per modality, in the order of `modality_dims`.
        video_mask: bool (B, N), True = valid step, None = all valid.
        """
        check_inputs("video", video, self.modality_dims, video_mask)
        valid = None if video_mask is None else video_mask[..., None].to(video[0].dtype)
        mode = self.config.interaction
        if mode == "none":
            features = self.interaction(torch.cat(list(video), dim=-1))
            if valid is not None:
                features = features * valid
            return VideoInteractionOutput(features=features, alpha=None)
        if mode == "concat_intra":
            features = self.interaction(torch.cat(list(video), dim=-1), video_mask)
            return VideoInteractionOutput(features=features, alpha=None)

        pair_values = self.interaction(video, video, video_mask, video_mask).values  # (P, B, N, d)
        alpha = None
        if self.config.fusion == "sum":
            features = pair_values.sum(dim=0)
        else:
            stacked = pair_values.permute(1, 2, 0, 3)  # (B, N, P, d)
            flat = stacked.flatten(start_dim=2)
            if self.config.fusion == "concat":
                features = self.fusion(flat)
            else:
                alpha = torch.softmax(self.fusion(flat), dim=-1)  # (B, N, P)
                features = torch.einsum("bnp,bnpd->bnd", alpha, stacked)
        if valid is not None:
            features = features * valid
            alpha = None if alpha is None else alpha * valid
        return VideoInteractionOutput(features=features, alpha=alpha)
