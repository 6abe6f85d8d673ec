"""Build a feature extractor from its name and its `extractors.<name>` config section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from extractors.base import FeatureExtractor

EXTRACTOR_NAMES: tuple[str, ...] = ("irv2", "c3d", "soundnet", "mfcc")


def build_extractor(
    name: str,
    settings: Mapping[str, Any],
    device: torch.device,
    *,
    frame_chunk: int,
) -> FeatureExtractor:
    """Return the extractor `name` configured by `settings`, with its weights loaded on `device`.

    `settings` is the merged `extractors.<name>` config section (defaults plus the dataset's
    overrides); `frame_chunk` is `decode.frame_chunk`, the frames decoded ahead of a frame
    network. Raises ValueError for an unknown name or invalid settings, and
    `WeightsNotFoundError` when a pretrained weights file is missing.
    """
    # Each module is imported only when needed, so an audio job never imports the video
    # networks (and their dependencies) and the other way round.
    if name == "irv2":
        from extractors.irv2 import Irv2Extractor, Irv2Settings

        return Irv2Extractor(Irv2Settings.from_config(settings, frame_chunk=frame_chunk), device)
    if name == "c3d":
        from extractors.c3d import C3dExtractor, C3dSettings

        return C3dExtractor(C3dSettings.from_config(settings, frame_chunk=frame_chunk), device)
    if name == "soundnet":
        from extractors.soundnet import SoundNetExtractor, SoundNetSettings

        return SoundNetExtractor(SoundNetSettings.from_config(settings), device)
    if name == "mfcc":
        from extractors.mfcc import MfccExtractor, MfccSettings

        return MfccExtractor(MfccSettings.from_config(settings))
    raise ValueError(f"unknown extractor {name!r}: expected one of {', '.join(EXTRACTOR_NAMES)}")
