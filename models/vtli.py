"""Video-Text Local Interaction (VTLI) of PMI-LOC.

For every step t of the fused video feature X_hat, a window X_w = X_hat[t - w .. t + w]
(clipped at the ends of the video) interacts with the text feature Y_hat (Chen et al.,
ECCV 2020, Eq. 8-9):
    Zxy_t = BA(mean(X_w), Y_hat)       Zxy_hat_t = MM(Zxy_t, mean(X_w))
    Zyx_t = BA(mean(Y_hat), X_w)       Zyx_hat_t = MM(Zyx_t, mean(Y_hat))
    Z_t = Zxy_hat_t + Zyx_hat_t
with MM(a, b) = Linear([a, b, a * b, a + b]) to d_model. All steps are computed at once: the
windows are unfolded into a (B, N, 2w + 1, d) tensor, never looped over in Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import BilinearAttention, PairLayout, masked_mean


def unfold_windows(
    sequence: Tensor, mask: Tensor | None, window: int
) -> tuple[Tensor, Tensor]:
    """Cut a window of half-width `window` around every step.

    sequence: (B, N, d). mask: bool (B, N), True = valid step, None = all valid.
    Returns windows (B, N, 2w + 1, d), where windows[:, t, k] is step t - w + k, and
    window_mask bool (B, N, 2w + 1). The mask is False where t - w + k lies outside [0, N),
    so the window is clipped at the ends, and where that step is padding.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    batch, steps, _ = sequence.shape
    size = 2 * window + 1
    padded = F.pad(sequence, (0, 0, window, window))
    windows = padded.unfold(1, size, 1).permute(0, 1, 3, 2)
    valid = (
        torch.ones(batch, steps, dtype=torch.bool, device=sequence.device) if mask is None else mask
    )
    window_mask = F.pad(valid, (window, window), value=False).unfold(1, size, 1)
    return windows, window_mask


class MultimodalUnit(nn.Module):
    """MM(a, b) = Linear([a, b, a * b, a + b]): (..., d) x (..., d) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4 * d_in, d_out)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """Combine two (..., d_in) tensors into (..., d_out)."""
        return self.linear(torch.cat([first, second, first * second, first + second], dim=-1))


class VideoTextLocalInteraction(nn.Module):
    """VTLI: local interaction of each video window with the sentence.

    Both BAs are single-pair `BilinearAttention` modules with d_model inputs and outputs.
    Video-to-text BA (one query, the window mean, attending over the words) has no relative
    position embedding, because a pooled window and the words share no position axis.
    Text-to-video BA (one query, the sentence mean, attending over the window steps) places
    the query at the window centre t, so window step t + k gets the offset k in [-w, w].
    Means skip padded words and steps outside the clipped window.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        d_low: int,
        max_relative_position: int,
        window: int,
    ) -> None:
        super().__init__()
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.window = window
        layout = PairLayout(query_dims=(d_model,), key_dims=(d_model,), pairs=((0, 0),))
        self.video_to_text_attention = BilinearAttention(layout, heads, d_low, None)
        self.text_to_video_attention = BilinearAttention(layout, heads, d_low, max_relative_position)
        self.video_to_text_unit = MultimodalUnit(d_model, d_model)
        self.text_to_video_unit = MultimodalUnit(d_model, d_model)

    def forward(
        self,
        video: Tensor,
        video_mask: Tensor | None,
        text: Tensor,
        word_mask: Tensor | None,
    ) -> Tensor:
        """Return Z (B, N, d_model), zero at padded steps.

        video: X_hat (B, N, d_model). video_mask: bool (B, N), True = valid step.
        text: Y_hat (B, L, d_model). word_mask: bool (B, L), True = valid word.
        """
        windows, window_mask = unfold_windows(video, video_mask, self.window)
        window_means = masked_mean(windows, window_mask, dim=2)  # (B, N, d)
        text_mean = masked_mean(text, word_mask, dim=1)  # (B, d)
        local = self.video_to_text(window_means, video_mask, text, word_mask)
        local = local + self.text_to_video(text_mean, windows, window_mask)
        if video_mask is not None:
            local = local * video_mask[..., None].to(local.dtype)
        return local

    def video_to_text(
        self, window_means: Tensor, video_mask: Tensor | None, text: Tensor, word_mask: Tensor | None
    ) -> Tensor:
        """Return Zxy_hat (B, N, d): MM(BA(mean(X_w), Y_hat), mean(X_w)) for every step.

        window_means: (B, N, d) mean of each step's window. text: (B, L, d).
        """
        attended = self.video_to_text_attention([window_means], [text], video_mask, word_mask)
        return self.video_to_text_unit(attended.values[0][0], window_means)

    def text_to_video(self, text_mean: Tensor, windows: Tensor, window_mask: Tensor) -> Tensor:
        """Return Zyx_hat (B, N, d): MM(BA(mean(Y_hat), X_w), mean(Y_hat)) for every step.

        text_mean: (B, d). windows: (B, N, 2w + 1, d). window_mask: bool (B, N, 2w + 1).
        """
        batch, steps, size, dim = windows.shape
        # Each step is one attention problem: a single query over its 2w + 1 window steps.
        queries = text_mean[:, None, None, :].expand(batch, steps, 1, dim).reshape(batch * steps, 1, dim)
        keys = windows.reshape(batch * steps, size, dim)
        offsets = torch.arange(-self.window, self.window + 1, device=windows.device)[None, :]
        attended = self.text_to_video_attention(
            [queries], [keys], None, window_mask.reshape(batch * steps, size), offsets
        )
        attended_values = attended.values[0][0].view(batch, steps, dim)
        return self.text_to_video_unit(attended_values, text_mean[:, None, :].expand(batch, steps, dim))
