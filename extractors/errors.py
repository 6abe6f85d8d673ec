"""Errors raised for unusable input files."""

from pathlib import Path


class BadVideoError(Exception):
    """A video that cannot be used: undecodable, no video stream, no frames."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weights file is missing and cannot be downloaded."""
