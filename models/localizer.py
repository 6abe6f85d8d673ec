"""PMI-LOC: temporal sentence localization with pairwise modality interaction.

Pipeline of one query (Chen et al., ECCV 2020, section 3.3):
1. Words -> embeddings Y (B, L, e) -> text feature Y_hat = INT(Y, Y) (B, L, d_model).
2. Video modalities -> PMI and fusion -> X_hat (B, N, d_model) and pair weights alpha.
3. VTLI(X_hat, Y_hat) -> Z (B, N, d_model); with VTLI off, Z = X_hat + mean(Y_hat).
4. Head: K Conv1d layers (kernel 3, padding 1), each fed the previous output concatenated
   with mean(Y_hat) at every step; InstanceNorm1d and LeakyReLU(0.2) after layers 1..K-1;
   the last layer has 1 channel whose softmax over time is the relevance r (B, N).
5. Boundary b = Linear(N, 2)(r): (start, end) in normalised time, [0, 1] after clamping.

`localization_loss` is Eq. 11-13 of the paper; `relevance_targets` builds r_gt and
`predict_spans` turns b into seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import masked_log_softmax, masked_mean, masked_softmax
from models.config import LocalizerConfig
from models.fusion import VideoModalityInteraction, pair_names
from models.interaction import SelfInteraction
from models.vtli import VideoTextLocalInteraction

__all__ = [
    "LocalizationHead",
    "LocalizerOutput",
    "PMILocalizer",
    "localization_loss",
    "masked_instance_norm",
    "pair_names",
    "predict_spans",
    "relevance_targets",
]

# torch.nn.InstanceNorm1d's default epsilon, added to the variance.
INSTANCE_NORM_EPS = 1e-5
# Negative slope of the head's LeakyReLU, as PMI-LOC specifies.
LEAKY_RELU_SLOPE = 0.2


@dataclass
class LocalizerOutput:
    """Predictions of `PMILocalizer` for a batch of B queries over N steps.

    boundary: (B, 2) predicted (start, end) in normalised time; not yet clamped to [0, 1]
        nor ordered (see `predict_spans`).
    relevance: (B, N) video-text relevance r, softmax over the valid steps (0 at padding).
    relevance_logits: (B, N) last head layer output before the softmax.
    alpha: (B, N, P) modality pair weights of the weighted fusion, or None when the model
        has no weighted fusion. The pair order is `pair_names(...)`.
    head_activations: one (B, C_k, N) tensor per head layer 1..K-1 after InstanceNorm and
        LeakyReLU, zero at padded steps: the C_k of the l2-norm loss.
    video_mask: (B, N) bool, True = valid step, as passed to forward.
    """

    boundary: Tensor
    relevance: Tensor
    relevance_logits: Tensor
    alpha: Tensor | None
    head_activations: list[Tensor]
    video_mask: Tensor


def masked_instance_norm(inputs: Tensor, mask: Tensor, eps: float = INSTANCE_NORM_EPS) -> Tensor:
    """Normalise every channel of every sequence to zero mean, unit variance over valid steps.

    inputs: (B, C, N). mask: bool (B, N), True = valid step. Equals torch.nn.InstanceNorm1d
    (no affine, biased variance, eps added to the variance) when every step is valid.
    Padded steps are left out of the statistics and set to 0. Returns (B, C, N).
    """
    weights = mask[:, None, :].to(inputs.dtype)
    count = weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = (inputs * weights).sum(dim=-1, keepdim=True) / count
    variance = ((inputs - mean).square() * weights).sum(dim=-1, keepdim=True) / count
    return (inputs - mean) * torch.rsqrt(variance + eps) * weights


class LocalizationHead(nn.Module):
    """Convolutional localization head: relevance logits and the activations of the norm loss.

    Layer k (k = 1..K) is Conv1d(C_{k-1} + d_model, C_k, kernel 3, padding 1) applied to the
    previous output concatenated with the sentence feature mean(Y_hat) at every step, where
    C_0 = d_model and C_1..C_{K-1} = head_channels, C_K = 1. Layers 1..K-1 are followed by
    InstanceNorm1d (statistics over the valid steps) and LeakyReLU(0.2). Inputs of every
    layer are zero at padded steps, as at the zero padding of the convolution. The last
    layer is bias-free (see __init__).
    """

    def __init__(self, d_model: int, head_channels: Sequence[int]) -> None:
        super().__init__()
        widths = [d_model, *head_channels, 1]
        # The last layer has no bias: a constant added to every logit leaves the softmax over
        # time unchanged, so that bias would get no gradient.
        last = len(widths) - 2
        self.layers = nn.ModuleList(
            nn.Conv1d(widths[k] + d_model, widths[k + 1], kernel_size=3, padding=1, bias=k < last)
            for k in range(len(widths) - 1)
        )

    def forward(
        self, sequence: Tensor, video_mask: Tensor, sentence: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """Return relevance logits (B, N) and the hidden activations [(B, C_k, N)].

        sequence: Z (B, N, d_model). video_mask: bool (B, N). sentence: mean(Y_hat) (B, d_model).
        """
        steps = sequence.shape[1]
        valid = video_mask[:, None, :].to(sequence.dtype)
        context = sentence[:, :, None].expand(-1, -1, steps)
        hidden = sequence.transpose(1, 2)
        activations = []
        for index, layer in enumerate(self.layers):
            hidden = layer(torch.cat([hidden, context], dim=1) * valid)
            if index < len(self.layers) - 1:
                hidden = masked_instance_norm(hidden, video_mask)
                hidden = F.leaky_relu(hidden, LEAKY_RELU_SLOPE) * valid
                activations.append(hidden)
        return hidden[:, 0, :], activations


class PMILocalizer(nn.Module):
    """PMI-LOC: localizes a sentence in a video from M modality feature sequences.

    config: model settings (`config.interaction` for INT and fusion, `vtli`, `window`,
        `head_channels`, `embedding`).
    modality_dims: feature size d_m of each video modality, in input order.
    vocab_size, embedding_dim: word embedding table size; embedding_dim must equal
        config.embedding_dim.
    steps: N, the number of steps of every video sequence (the boundary layer is
        Linear(N, 2)).
    pretrained_embeddings: (vocab_size, embedding_dim) initial word vectors, or None for a
        random N(0, 1) initialisation. With config.embedding `glove` the table stays fixed
        during training (requires_grad False); with `learned` it is trained.

    The text feature uses the same INT settings as the video (d_model, heads, d_low, K,
    gate channels, dropout). With config.vtli off, mean(Y_hat) is added to every valid step
    of X_hat in place of VTLI.
    """

    def __init__(
        self,
        config: LocalizerConfig,
        modality_dims: Sequence[int],
        vocab_size: int,
        embedding_dim: int,
        steps: int,
        pretrained_embeddings: Tensor | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim != config.embedding_dim:
            raise ValueError(
                f"embedding_dim {embedding_dim} differs from config embedding_dim "
                f"{config.embedding_dim}"
            )
        if vocab_size < 1 or steps < 1:
            raise ValueError(f"vocab_size and steps must be >= 1, got {vocab_size}, {steps}")
        self.config = config
        self.modality_dims = tuple(int(d) for d in modality_dims)
        self.steps = steps
        d_model = config.interaction.d_model

        self.word_embedding = nn.Embedding(vocab_size, embedding_dim)
        if pretrained_embeddings is not None:
            expected = (vocab_size, embedding_dim)
            if tuple(pretrained_embeddings.shape) != expected:
                raise ValueError(
                    f"pretrained_embeddings: expected shape {expected}, "
                    f"got {tuple(pretrained_embeddings.shape)}"
                )
            with torch.no_grad():
                self.word_embedding.weight.copy_(pretrained_embeddings)
        self.word_embedding.weight.requires_grad_(config.embedding == "learned")

        self.text_interaction = SelfInteraction(embedding_dim, config.interaction)
        self.video_interaction = VideoModalityInteraction(self.modality_dims, config.interaction)
        self.local_interaction: VideoTextLocalInteraction | None = None
        if config.vtli:
            self.local_interaction = VideoTextLocalInteraction(
                d_model,
                config.interaction.heads,
                config.interaction.d_low,
                config.interaction.max_relative_position,
                config.window,
            )
        self.head = LocalizationHead(d_model, config.head_channels)
        self.boundary = nn.Linear(steps, 2)

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """Modality index pairs (p, q) in the order of alpha's last axis; empty without PMI."""
        return self.video_interaction.pairs

    def forward(
        self,
        video: Sequence[Tensor],
        video_mask: Tensor,
        words: Tensor,
        word_mask: Tensor,
        video_index: Tensor | None = None,
    ) -> LocalizerOutput:
        """Predict relevance and boundary for a batch of (video, sentence) queries.

        video: one (V, N, d_m) float tensor per modality. video_mask: bool (V, N), True =
        valid step. words: long (B, L) word indices. word_mask: bool (B, L), True = valid word.
        video_index: long (B,), the video of each query, so a video asked about by several
        queries is encoded once; None means V = B and query b belongs to video b.
        """
        if video_index is None:
            video_index = torch.arange(words.shape[0], device=words.device)
        self._check_inputs(video, video_mask, words, word_mask, video_index)
        text = self.text_interaction(self.word_embedding(words), word_mask)  # (B, L, d)
        sentence = masked_mean(text, word_mask, dim=1)  # (B, d)

        encoded = self.video_interaction(video, video_mask)
        features = encoded.features[video_index]  # (B, N, d)
        alpha = None if encoded.alpha is None else encoded.alpha[video_index]
        video_mask = video_mask[video_index]
        valid = video_mask[..., None].to(features.dtype)
        if self.local_interaction is not None:
            local = self.local_interaction(features, video_mask, text, word_mask)
        else:
            local = (features + sentence[:, None, :]) * valid

        logits, activations = self.head(local, video_mask, sentence)
        relevance = masked_softmax(logits, video_mask, dim=-1)
        return LocalizerOutput(
            boundary=self.boundary(relevance),
            relevance=relevance,
            relevance_logits=logits,
            alpha=alpha,
            head_activations=activations,
            video_mask=video_mask,
        )

    def _check_inputs(
        self,
        video: Sequence[Tensor],
        video_mask: Tensor,
        words: Tensor,
        word_mask: Tensor,
        video_index: Tensor,
    ) -> None:
        if len(video) != len(self.modality_dims):
            raise ValueError(f"expected {len(self.modality_dims)} modalities, got {len(video)}")
        batch = video[0].shape[0]
        if video_index.dtype != torch.long or tuple(video_index.shape) != (words.shape[0],):
            raise ValueError(
                f"video_index: expected long ({words.shape[0]},), "
                f"got {video_index.dtype} {tuple(video_index.shape)}"
            )
        if video_index.numel() and (int(video_index.min()) < 0 or int(video_index.max()) >= batch):
            raise ValueError(f"video_index: values must lie in [0, {batch}), got {video_index.tolist()}")
        for index, (features, dim) in enumerate(zip(video, self.modality_dims)):
            if tuple(features.shape) != (batch, self.steps, dim):
                raise ValueError(
                    f"video[{index}]: expected shape ({batch}, {self.steps}, {dim}), "
                    f"got {tuple(features.shape)}"
                )
        if video_mask.dtype != torch.bool or tuple(video_mask.shape) != (batch, self.steps):
            raise ValueError(
                f"video_mask: expected bool ({batch}, {self.steps}), "
                f"got {video_mask.dtype} {tuple(video_mask.shape)}"
            )
        if words.dim() != 2 or words.dtype != torch.long:
            raise ValueError(f"words: expected long (B, L), got {words.dtype} {tuple(words.shape)}")
        if word_mask.dtype != torch.bool or word_mask.shape != words.shape:
            raise ValueError(
                f"word_mask: expected bool {tuple(words.shape)}, "
                f"got {word_mask.dtype} {tuple(word_mask.shape)}"
            )


def relevance_targets(spans_seconds: Tensor, durations: Tensor, steps: int) -> Tensor:
    """Build r_gt: 1 at every step that overlaps the ground-truth span, else 0.

    spans_seconds: (B, 2) (start, end) in seconds. durations: (B,) video lengths in seconds.
    Step n covers [n, n + 1) * duration / steps. It overlaps the span when the two share an
    interval of positive length, so a span that only touches a step's edge leaves that step
    out. A zero-length span marks the step that contains it. Returns (B, steps)
    float32 on the device of `spans_seconds`.
    """
    if spans_seconds.dim() != 2 or spans_seconds.shape[1] != 2:
        raise ValueError(f"spans_seconds: expected shape (B, 2), got {tuple(spans_seconds.shape)}")
    if tuple(durations.shape) != (spans_seconds.shape[0],):
        raise ValueError(
            f"durations: expected shape ({spans_seconds.shape[0]},), got {tuple(durations.shape)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    durations = durations.to(device=spans_seconds.device, dtype=torch.float64)
    if bool((durations <= 0).any()):
        raise ValueError(f"durations must be positive, got {durations.tolist()}")
    spans = spans_seconds.to(torch.float64)
    if bool((spans[:, 1] < spans[:, 0]).any()):
        raise ValueError(f"spans must have start <= end, got {spans.tolist()}")

    fractions = torch.arange(steps + 1, device=spans.device, dtype=torch.float64) / steps
    edges = fractions[None, :] * durations[:, None]  # (B, steps + 1)
    starts, ends = spans[:, :1], spans[:, 1:]
    overlap = (edges[:, :-1] < ends) & (edges[:, 1:] > starts)
    empty = ~overlap.any(dim=1)
    if bool(empty.any()):
        containing = (spans[:, 0] / durations * steps).floor().long().clamp(0, steps - 1)
        overlap[empty, containing[empty]] = True
    return overlap.to(torch.float32)


def predict_spans(output: LocalizerOutput, durations: Tensor) -> Tensor:
    """Turn predicted boundaries into spans in seconds.

    durations: (B,) video lengths in seconds. The boundary is clamped to [0, 1], its two
    values are ordered so start <= end, and both are multiplied by the duration.
    Returns (B, 2) (start, end) in seconds, in the dtype of the boundary.
    """
    boundary = output.boundary.detach().clamp(0.0, 1.0)
    if tuple(durations.shape) != (boundary.shape[0],):
        raise ValueError(f"durations: expected shape ({boundary.shape[0]},), got {tuple(durations.shape)}")
    ordered, _ = boundary.sort(dim=1)
    return ordered * durations.to(device=boundary.device, dtype=boundary.dtype)[:, None]


def localization_loss(
    output: LocalizerOutput,
    target_boundary: Tensor,
    target_relevance: Tensor,
    config: LocalizerConfig,
) -> dict[str, Tensor]:
    """Compute the PMI-LOC loss terms (Eq. 11-13) for a batch.

    target_boundary: (B, 2) ground-truth (start, end) in normalised time.
    target_relevance: (B, N) r_gt, 1 at steps inside the ground-truth span.
    Returns scalar tensors:
      huber: Huber loss (delta 1) of b - b_gt, mean over the batch and the two values.
      relevance: -sum_n r_gt_n log r_n / sum_n r_gt_n, mean over the batch (a query with no
        positive step adds 0).
      norm: sum over head layers 1..K-1 and valid steps n of (||C_k[:, n]||_2 - beta)^2, mean
        over the batch (0 for a head with one layer).
      total: huber + lambda_r * relevance, plus lambda_n * norm when config.l2_norm is on.
        With l2_norm off, norm is still returned for monitoring but not added.
    """
    boundary, mask = output.boundary, output.video_mask
    if target_boundary.shape != boundary.shape:
        raise ValueError(
            f"target_boundary: expected shape {tuple(boundary.shape)}, "
            f"got {tuple(target_boundary.shape)}"
        )
    if target_relevance.shape != output.relevance_logits.shape:
        raise ValueError(
            f"target_relevance: expected shape {tuple(output.relevance_logits.shape)}, "
            f"got {tuple(target_relevance.shape)}"
        )
    huber = F.huber_loss(boundary, target_boundary.to(boundary.dtype), delta=1.0)

    log_relevance = masked_log_softmax(output.relevance_logits, mask, dim=-1)
    targets = target_relevance.to(log_relevance.dtype) * mask.to(log_relevance.dtype)
    positives = targets.sum(dim=-1).clamp_min(torch.finfo(targets.dtype).eps)
    relevance = (-(targets * log_relevance).sum(dim=-1) / positives).mean()

    norm = boundary.new_zeros(())
    valid = mask.to(boundary.dtype)
    for activation in output.head_activations:
        lengths = torch.linalg.vector_norm(activation, dim=1)  # (B, N)
        norm = norm + (((lengths - config.beta).square() * valid).sum(dim=-1)).mean()

    total = huber + config.lambda_r * relevance
    if config.l2_norm:
        total = total + config.lambda_n * norm
    return {"total": total, "huber": huber, "relevance": relevance, "norm": norm}
