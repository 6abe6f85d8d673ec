"""Tests of the video-text local interaction (VTLI)."""

from __future__ import annotations

import pytest
import torch

from models.attention import masked_mean
from models.vtli import MultimodalUnit, VideoTextLocalInteraction, unfold_windows

D_MODEL = 8
STEPS = 12
WINDOW = 2


def make_vtli(limit: int = 3) -> VideoTextLocalInteraction:
    module = VideoTextLocalInteraction(D_MODEL, heads=2, d_low=4, max_relative_position=limit, window=WINDOW)
    with torch.no_grad():
        module.text_to_video_attention.relative_embeddings[0].normal_()
    return module


def text_batch(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randn(batch, 5, D_MODEL)
    word_mask = torch.ones(batch, 5, dtype=torch.bool)
    word_mask[1, 3:] = False
    return text, word_mask


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def test_windows_hold_neighbours() -> None:
    video = torch.arange(STEPS, dtype=torch.float32).view(1, STEPS, 1)
    windows, window_mask = unfold_windows(video, None, WINDOW)
    assert windows.shape == (1, STEPS, 2 * WINDOW + 1, 1)
    assert windows[0, 5, :, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert window_mask[0, 5].all()


def test_windows_clipped_at_ends() -> None:
    video = torch.arange(STEPS, dtype=torch.float32).view(1, STEPS, 1)
    windows, window_mask = unfold_windows(video, None, WINDOW)
    assert window_mask[0, 0].tolist() == [False, False, True, True, True]
    assert window_mask[0, STEPS - 1].tolist() == [True, True, True, False, False]
    means = masked_mean(windows, window_mask, dim=2)[0, :, 0]
    assert means[0].item() == pytest.approx(1.0)  # mean of steps 0, 1, 2
    assert means[STEPS - 1].item() == pytest.approx(10.0)  # mean of steps 9, 10, 11
    assert means[5].item() == pytest.approx(5.0)


def test_windows_skip_padded_steps() -> None:
    video = torch.arange(STEPS, dtype=torch.float32).view(1, STEPS, 1)
    mask = torch.ones(1, STEPS, dtype=torch.bool)
    mask[0, 6:] = False
    _, window_mask = unfold_windows(video, mask, WINDOW)
    assert window_mask[0, 5].tolist() == [True, True, True, False, False]


@pytest.mark.parametrize(("step", "inside", "outside"), [(5, [3, 7], [2, 8]), (0, [2], [3]), (11, [9], [8])])
def test_output_depends_on_window(step: int, inside: list[int], outside: list[int]) -> None:
    module = make_vtli()
    video = torch.randn(2, STEPS, D_MODEL)
    text, word_mask = text_batch()
    before = module(video, None, text, word_mask)
    for changed_step in inside + outside:
        perturbed = video.clone()
        perturbed[:, changed_step] += torch.randn(2, D_MODEL)
        after = module(perturbed, None, text, word_mask)
        if changed_step in inside:
            assert not torch.allclose(after[:, step], before[:, step]), changed_step
        else:
            assert torch.allclose(after[:, step], before[:, step], atol=1e-6), changed_step


def test_output_sums_both_directions() -> None:
    module = make_vtli()
    video = torch.randn(2, STEPS, D_MODEL)
    text, word_mask = text_batch()
    mask = torch.ones(2, STEPS, dtype=torch.bool)
    mask[1, 9:] = False
    windows, window_mask = unfold_windows(video, mask, WINDOW)
    means = masked_mean(windows, window_mask, dim=2)
    text_mean = masked_mean(text, word_mask, dim=1)
    expected = module.video_to_text(means, mask, text, word_mask)
    expected = (expected + module.text_to_video(text_mean, windows, window_mask)) * mask[..., None]
    assert torch.allclose(module(video, mask, text, word_mask), expected, atol=1e-6)


def test_constant_video_same_window_mean() -> None:
    # With windows clipped (not zero-padded) every step of a constant video has the same mean,
    # so the video-to-text part is the same at the ends as in the middle.
    module = make_vtli()
    video = torch.randn(1, 1, D_MODEL).expand(2, STEPS, D_MODEL)
    text, word_mask = text_batch()
    windows, window_mask = unfold_windows(video, None, WINDOW)
    means = masked_mean(windows, window_mask, dim=2)
    local = module.video_to_text(means, None, text, word_mask)
    assert torch.allclose(local, local[:, 5:6].expand_as(local), atol=1e-6)


def test_masked_tail_equals_shorter_video() -> None:
    module = make_vtli()
    video = torch.randn(2, STEPS, D_MODEL)
    text, word_mask = text_batch()
    mask = torch.ones(2, STEPS, dtype=torch.bool)
    mask[:, 8:] = False
    padded = module(video, mask, text, word_mask)
    shorter = module(video[:, :8], None, text, word_mask)
    assert torch.allclose(padded[:, :8], shorter, atol=1e-6)
    assert torch.equal(padded[:, 8:], torch.zeros(2, STEPS - 8, D_MODEL))


def test_text_to_video_offsets_from_centre() -> None:
    # With zero key features the attention is uniform over the valid window steps, and with
    # W^q = 0 text-to-video BA gives the mean of r_k over the window offsets k in [-w, w].
    # MM is set to pass its first input through, so the output is that mean.
    module = VideoTextLocalInteraction(D_MODEL, heads=1, d_low=4, max_relative_position=2, window=WINDOW)
    attention = module.text_to_video_attention
    with torch.no_grad():
        attention.key_projections[0].weight.zero_()
        offsets = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
        attention.relative_embeddings[0].copy_(offsets[None, :, None].expand(1, 5, D_MODEL))
        module.text_to_video_unit.linear.weight.zero_()
        module.text_to_video_unit.linear.weight[:, :D_MODEL].copy_(torch.eye(D_MODEL))
        module.text_to_video_unit.linear.bias.zero_()
    video = torch.randn(1, STEPS, D_MODEL)
    windows, window_mask = unfold_windows(video, None, WINDOW)
    local = module.text_to_video(torch.randn(1, D_MODEL), windows, window_mask)[0, :, 0]
    assert local[0].item() == pytest.approx(1.0)  # offsets 0, 1, 2 are inside the video
    assert local[1].item() == pytest.approx(0.5)  # offsets -1 .. 2
    assert local[5].item() == pytest.approx(0.0, abs=1e-6)
    assert local[STEPS - 1].item() == pytest.approx(-1.0)


def test_fully_masked_words_finite() -> None:
    module = make_vtli()
    video = torch.randn(2, STEPS, D_MODEL, requires_grad=True)
    text = torch.randn(2, 5, D_MODEL)
    word_mask = torch.zeros(2, 5, dtype=torch.bool)
    output = module(video, None, text, word_mask)
    output.sum().backward()
    assert torch.isfinite(output).all()
    assert torch.isfinite(video.grad).all()


def test_multimodal_unit_formula() -> None:
    unit = MultimodalUnit(3, 2)
    first, second = torch.randn(4, 3), torch.randn(4, 3)
    expected = unit.linear(torch.cat([first, second, first * second, first + second], dim=-1))
    assert torch.allclose(unit(first, second), expected)
    assert unit.linear.in_features == 12
