"""PMI-CAP: event captioning with Pairwise Modality Interaction (Chen et al., ECCV 2020, section 3.4).

Architecture (every size comes from `CaptionerConfig`; paper values in brackets):

- Video encoder: the video PMI (`VideoModalityInteraction`) turns the M modality sequences of
  N steps [N = 32] into one (B, N, d_model) feature and the pair weights alpha (B, N, P).
  A 1-layer bidirectional LSTM [hidden 256 per direction] reads it; its outputs, with
  dropout, are the attention memory V = (v_1..v_N), each of 2 * encoder_hidden channels.
- Decoder state: the initial (h, c) of every decoder layer is tanh of a linear map of the
  mean of V over the valid steps.
- Decoder: a stack of LSTM cells [2 layers, hidden 512]. At step t, additive temporal
  attention (Yao et al., 2015, "Describing Videos by Exploiting Temporal Structure") scores
  every step i from the top layer's previous hidden state:
  e_ti = w^T tanh(W_a h_{t-1} + U_a v_i + b_a), a_t = softmax_i(e_t) over valid steps, and
  the context is phi_t = sum_i a_ti v_i. The first layer's input is [embedding(y_{t-1}); phi_t]
  with the word embedding [512-d, randomly initialised, trained jointly]. The output layer
  maps [h_t; phi_t] to vocabulary logits.
- Dropout [0.5] on the word embeddings, on V, between decoder layers and before the output
  layer. The interaction's own feed-forward networks use `interaction_dropout`.
- Training: teacher forcing, cross-entropy over the target words and `<eos>`, padding
  ignored, averaged over the target tokens of the batch.

Decoding (`greedy_decode`, `beam_search`): the score of a caption is the sum of the model's
log-probabilities of its words and, when it ends with `<eos>`, of `<eos>`. Log-probabilities
are the log-softmax over the full vocabulary, not renormalised, and there is no length
normalisation. Decoding never emits
`<pad>`, `<bos>` or `<unk>`. A caption that reaches `max_length` words ends there without an
`<eos>` term. Beam search keeps `beam_size` unfinished hypotheses per video: at each step it
ranks the 2 * beam_size best extensions, moves an `<eos>` extension ranked within the first
beam_size to the finished list, and keeps the first beam_size other extensions. It stops for a
video when its best finished score is at least the best unfinished score (scores only
decrease as words are added, so no unfinished hypothesis can win then) and returns the best
finished caption. With beam_size 1 this is exactly greedy decoding.
NOTE: beam search is a heuristic: a wider beam usually finds a caption with a higher score,
but pruning can make it miss the one a narrower beam found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.caption_config import CaptionerConfig
from models.caption_data import BOS_INDEX, EOS_INDEX
from models.fusion import VideoModalityInteraction
from models.text import PAD_INDEX, UNK_INDEX

# Tokens that decoding never emits.
BLOCKED_TOKENS = (PAD_INDEX, BOS_INDEX, UNK_INDEX)


@dataclass
class CaptionerOutput:
    """Teacher-forced outputs of a batch.

    logits: (B, T, V) next-word scores for each input position.
    attention: (B, T, N) temporal attention weights over the video steps at each position.
    alpha: (B, N, P) modality pair weights of the video PMI, or None for other fusions.
    """

    logits: Tensor
    attention: Tensor
    alpha: Tensor | None


@dataclass
class EncodedVideo:
    """Encoder results that every decoding step reads.

    memory: (B, N, 2 * encoder_hidden) BiLSTM outputs V. keys: (B, N, attention_dim) U_a V + b_a.
    mask: (B, N) bool, True at valid steps. alpha: (B, N, P) pair weights or None.
    state: initial decoder (h, c), each a list of one (B, decoder_hidden) tensor per layer.
    """

    memory: Tensor
    keys: Tensor
    mask: Tensor
    alpha: Tensor | None
    state: tuple[list[Tensor], list[Tensor]]

    def repeat(self, times: int) -> EncodedVideo:
        """Repeat every video `times` times in a row (row b * times + j is a copy of video b)."""
        def expand(tensor: Tensor) -> Tensor:
            return tensor.repeat_interleave(times, dim=0)

        hidden, cell = self.state
        return EncodedVideo(
            memory=expand(self.memory),
            keys=expand(self.keys),
            mask=expand(self.mask),
            alpha=None if self.alpha is None else expand(self.alpha),
            state=([expand(h) for h in hidden], [expand(c) for c in cell]),
        )


@dataclass
class DecodedCaptions:
    """Captions decoded for a batch of B videos.

    tokens: word indices of each caption, without `<eos>`.
    log_probs: (B,) float64 score of each caption (module docstring).
    ended: whether each caption ended with `<eos>` (False: cut at max_length).
    attention: per caption, a (len(tokens), N) tensor of the attention weights with which
        each word was generated.
    alpha: (B, N, P) modality pair weights, or None for other fusions.
    """

    tokens: list[list[int]]
    log_probs: Tensor
    ended: list[bool]
    attention: list[Tensor]
    alpha: Tensor | None


class TemporalAttention(nn.Module):
    """Additive attention over video steps: e_i = w^T tanh(W_a q + U_a v_i + b_a)."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key = nn.Linear(memory_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """Project the memory (B, N, memory_dim) once per video: (B, N, attention_dim)."""
        return self.key(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Return the context (B, memory_dim) and the weights (B, N), zero at invalid steps.

        query: (B, query_dim); keys: (B, N, attention_dim); memory: (B, N, memory_dim);
        mask: (B, N) bool. A video without valid steps gets zero weights and context.
        """
        energy = self.score(torch.tanh(keys + self.query(query)[:, None, :])).squeeze(-1)
        energy = energy.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(energy, dim=-1)
        weights = torch.nan_to_num(weights, nan=0.0)
        context = torch.bmm(weights[:, None, :], memory).squeeze(1)
        return context, weights


class PMICaptioner(nn.Module):
    """PMI-CAP: video PMI, BiLSTM encoder and attention LSTM decoder (module docstring)."""

    def __init__(self, config: CaptionerConfig, modality_dims: Sequence[int], vocab_size: int) -> None:
        super().__init__()
        if vocab_size <= EOS_INDEX:
            raise ValueError(f"vocab_size must exceed the special tokens (> {EOS_INDEX}), got {vocab_size}")
        self.config = config
        self.vocab_size = vocab_size
        d_model = config.interaction.d_model
        memory_dim = 2 * config.encoder_hidden
        hidden = config.decoder_hidden

        self.video_interaction = VideoModalityInteraction(modality_dims, config.interaction)
        self.encoder = nn.LSTM(d_model, config.encoder_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.initial_state = nn.Linear(memory_dim, 2 * config.decoder_layers * hidden)
        self.word_embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=PAD_INDEX)
        self.attention = TemporalAttention(hidden, memory_dim, config.attention_dim)
        self.decoder = nn.ModuleList(
            nn.LSTMCell(config.embedding_dim + memory_dim if layer == 0 else hidden, hidden)
            for layer in range(config.decoder_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(hidden + memory_dim, vocab_size)

    def encode(self, video: Sequence[Tensor], video_mask: Tensor | None = None) -> EncodedVideo:
        """Encode a batch of videos.

        video: one (B, N, d_p) tensor per modality; video_mask: (B, N) bool with the valid
        steps first, None = all valid. Raises ValueError for a video without valid steps.
        """
        if video_mask is None:
            video_mask = torch.ones(video[0].shape[:2], dtype=torch.bool, device=video[0].device)
        interaction = self.video_interaction(video, video_mask)
        features = interaction.features
        lengths = video_mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every video needs at least one valid step")
        steps = features.shape[1]
        if bool((lengths == steps).all()):
            memory, _ = self.encoder(features)
        else:
            packed = pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
            memory, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=steps)
        memory = self.dropout(memory)

        valid = video_mask[..., None].to(memory.dtype)
        mean = (memory * valid).sum(dim=1) / lengths[:, None].to(memory.dtype)
        initial = torch.tanh(self.initial_state(mean)).chunk(2 * self.config.decoder_layers, dim=-1)
        layers = self.config.decoder_layers
        state = (list(initial[:layers]), list(initial[layers:]))
        return EncodedVideo(
            memory=memory,
            keys=self.attention.keys(memory),
            mask=video_mask,
            alpha=interaction.alpha,
            state=state,
        )

    def step(
        self, tokens: Tensor, state: tuple[list[Tensor], list[Tensor]], encoded: EncodedVideo
    ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]], Tensor]:
        """Run one decoder step.

        tokens: (B,) previous words; state: (h, c) per layer, each (B, decoder_hidden).
        Returns logits (B, V), the new state and the attention weights (B, N).
        """
        hidden, cell = state
        context, weights = self.attention(hidden[-1], encoded.keys, encoded.memory, encoded.mask)
        layer_input = torch.cat([self.dropout(self.word_embedding(tokens)), context], dim=-1)
        new_hidden, new_cell = [], []
        for layer, lstm in enumerate(self.decoder):
            h, c = lstm(layer_input, (hidden[layer], cell[layer]))
            new_hidden.append(h)
            new_cell.append(c)
            layer_input = self.dropout(h)
        logits = self.output(self.dropout(torch.cat([new_hidden[-1], context], dim=-1)))
        return logits, (new_hidden, new_cell), weights

    def forward(self, video: Sequence[Tensor], video_mask: Tensor | None, inputs: Tensor) -> CaptionerOutput:
        """Teacher-forced pass: inputs (B, T) are `<bos>` and the words, padded with `<pad>`."""
        encoded = self.encode(video, video_mask)
        state = encoded.state
        logits, attention = [], []
        for position in range(inputs.shape[1]):
            step_logits, state, weights = self.step(inputs[:, position], state, encoded)
            logits.append(step_logits)
            attention.append(weights)
        return CaptionerOutput(torch.stack(logits, dim=1), torch.stack(attention, dim=1), encoded.alpha)

    @staticmethod
    def caption_loss(output: CaptionerOutput, targets: Tensor) -> Tensor:
        """Cross-entropy of the targets (B, T), mean over the non-padding positions."""
        return F.cross_entropy(output.logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_INDEX)

    def _log_probs(self, logits: Tensor) -> Tensor:
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        return log_probs

    @staticmethod
    def _blocked(log_probs: Tensor) -> Tensor:
        blocked = log_probs.clone()
        blocked[:, list(BLOCKED_TOKENS)] = float("-inf")
        return blocked

    @torch.no_grad()
    def sequence_log_probs(
        self,
        video: Sequence[Tensor],
        video_mask: Tensor | None,
        tokens: Sequence[Sequence[int]],
        ended: Sequence[bool],
    ) -> Tensor:
        """Score given captions under the model, as decoding scores them: (B,) float64.

        tokens: the words of each caption; ended: whether to add the `<eos>` term.
        """
        encoded = self.encode(video, video_mask)
        length = max(len(words) for words in tokens) + 1
        device = encoded.memory.device
        inputs = torch.full((len(tokens), length), PAD_INDEX, dtype=torch.long, device=device)
        targets = torch.full_like(inputs, PAD_INDEX)
        for row, words in enumerate(tokens):
            inputs[row, 0] = BOS_INDEX
            inputs[row, 1 : len(words) + 1] = torch.tensor(words, dtype=torch.long)
            targets[row, : len(words)] = torch.tensor(words, dtype=torch.long)
            if ended[row]:
                targets[row, len(words)] = EOS_INDEX
        state = encoded.state
        total = torch.zeros(len(tokens), dtype=torch.float64, device=device)
        for position in range(length):
            logits, state, _ = self.step(inputs[:, position], state, encoded)
            log_probs = self._log_probs(logits)
            chosen = log_probs.gather(1, targets[:, position : position + 1]).squeeze(1)
            total += torch.where(targets[:, position] != PAD_INDEX, chosen, torch.zeros_like(chosen))
        return total

    @torch.no_grad()
    def greedy_decode(self, video: Sequence[Tensor], video_mask: Tensor | None, max_length: int) -> DecodedCaptions:
        """Decode by taking the most probable allowed word at every step (module docstring)."""
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        encoded = self.encode(video, video_mask)
        batch = encoded.memory.shape[0]
        device = encoded.memory.device

        tokens = torch.full((batch,), BOS_INDEX, dtype=torch.long, device=device)
        state = encoded.state
        scores = torch.zeros(batch, dtype=torch.float64, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        words: list[list[int]] = [[] for _ in range(batch)]
        attention: list[list[Tensor]] = [[] for _ in range(batch)]
        for _ in range(max_length):
            logits, state, weights = self.step(tokens, state, encoded)
            log_probs = self._log_probs(logits)
            tokens = self._blocked(log_probs).argmax(dim=-1)
            chosen = log_probs.gather(1, tokens[:, None]).squeeze(1)
            scores += torch.where(finished, torch.zeros_like(chosen), chosen)
            # One device-to-host copy per step, not one per video.
            step_tokens = tokens.tolist()
            step_weights = weights.cpu()
            for row in (~finished).nonzero().flatten().tolist():
                if step_tokens[row] != EOS_INDEX:
                    words[row].append(step_tokens[row])
                    attention[row].append(step_weights[row])
            finished |= tokens == EOS_INDEX
            if bool(finished.all()):
                break

        return DecodedCaptions(
            tokens=words,
            log_probs=scores.cpu(),
            ended=finished.cpu().tolist(),
            attention=[_stack_rows(rows, encoded.memory.shape[1]) for rows in attention],
            alpha=None if encoded.alpha is None else encoded.alpha.cpu(),
        )

    @torch.no_grad()
    def beam_search(
        self, video: Sequence[Tensor], video_mask: Tensor | None, beam_size: int, max_length: int
    ) -> DecodedCaptions:
        """Decode with a beam of `beam_size` hypotheses per video (module docstring)."""
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        encoded = self.encode(video, video_mask)
        batch, steps = encoded.memory.shape[:2]
        device = encoded.memory.device
        beams = encoded.repeat(beam_size)
        state = beams.state
        tokens = torch.full((batch * beam_size,), BOS_INDEX, dtype=torch.long, device=device)
        # Only the first beam is live at the start, so the first step does not pick one
        # word several times from identical beams.
        scores = torch.full((batch, beam_size), float("-inf"), dtype=torch.float64)
        scores[:, 0] = 0.0
        history = torch.zeros(batch, beam_size, 0, dtype=torch.long)
        attention = torch.zeros(batch, beam_size, 0, steps)
        finished: list[list[tuple[float, list[int], Tensor, bool]]] = [[] for _ in range(batch)]
        searching = [True] * batch

        for _ in range(max_length):
            logits, state, weights = self.step(tokens, state, beams)
            log_probs = self._blocked(self._log_probs(logits)).cpu()
            vocab = log_probs.shape[-1]
            extended = (scores[:, :, None] + log_probs.view(batch, beam_size, vocab)).view(batch, -1)
            top_scores, top_ids = extended.topk(min(2 * beam_size, extended.shape[1]), dim=1)

            sources = torch.zeros(batch, beam_size, dtype=torch.long)
            next_tokens = torch.full((batch, beam_size), PAD_INDEX, dtype=torch.long)
            next_scores = torch.full((batch, beam_size), float("-inf"), dtype=torch.float64)
            for row in range(batch):
                if searching[row]:
                    searching[row] = self._select_extensions(
                        row, top_scores[row], top_ids[row], vocab, beam_size,
                        history, attention, finished[row], sources, next_tokens, next_scores,
                    )  # fmt: skip

            flat_sources = (torch.arange(batch)[:, None] * beam_size + sources).flatten().to(device)
            state = ([h[flat_sources] for h in state[0]], [c[flat_sources] for c in state[1]])
            step_weights = weights.cpu()[flat_sources.cpu()].view(batch, beam_size, 1, steps)
            history = torch.cat([history.gather(1, sources[:, :, None].expand(-1, -1, history.shape[2])), next_tokens[:, :, None]], dim=2)
            attention = torch.cat(
                [attention.gather(1, sources[:, :, None, None].expand(-1, -1, *attention.shape[2:])), step_weights], dim=2
            )
            scores = next_scores
            tokens = next_tokens.flatten().to(device)
            if not any(searching):
                break

        # Hypotheses still unfinished have max_length words; they end without <eos>.
        for row in range(batch):
            if searching[row]:
                for beam in range(beam_size):
                    if scores[row, beam] > float("-inf"):
                        finished[row].append((float(scores[row, beam]), history[row, beam].tolist(), attention[row, beam], False))

        best = [max(candidates, key=lambda candidate: candidate[0]) for candidates in finished]
        return DecodedCaptions(
            tokens=[candidate[1] for candidate in best],
            log_probs=torch.tensor([candidate[0] for candidate in best], dtype=torch.float64),
            ended=[candidate[3] for candidate in best],
            attention=[candidate[2] for candidate in best],
            alpha=None if encoded.alpha is None else encoded.alpha.cpu(),
        )

    @staticmethod
    def _select_extensions(
        row: int,
        top_scores: Tensor,
        top_ids: Tensor,
        vocab: int,
        beam_size: int,
        history: Tensor,
        attention: Tensor,
        finished: list[tuple[float, list[int], Tensor, bool]],
        sources: Tensor,
        next_tokens: Tensor,
        next_scores: Tensor,
    ) -> bool:
        """Fill row `row` of the next beam from its ranked extensions; return whether to go on."""
        live = 0
        for rank, (score, flat_id) in enumerate(zip(top_scores.tolist(), top_ids.tolist())):
            if score == float("-inf"):
                break
            source, token = divmod(flat_id, vocab)
            if token == EOS_INDEX:
                if rank < beam_size:
                    finished.append((score, history[row, source].tolist(), attention[row, source], True))
                continue
            sources[row, live] = source
            next_tokens[row, live] = token
            next_scores[row, live] = score
            live += 1
            if live == beam_size:
                break
        best_finished = max((candidate[0] for candidate in finished), default=float("-inf"))
        return live > 0 and best_finished < float(next_scores[row].max())


def _stack_rows(rows: list[Tensor], steps: int) -> Tensor:
    return torch.stack(rows) if rows else torch.zeros(0, steps)
