"""Locating, verifying and loading pretrained weights, and the arithmetic they run with.

Weights come from an explicit path in config or from the torch hub cache
(`torch.hub.get_dir()/checkpoints`, which honours `$TORCH_HOME`). Nothing is downloaded: a
missing file raises `WeightsNotFoundError` with one message naming the file, its expected
SHA-256 and the folder to put it in. Checkpoints are read with `torch.load(...,
weights_only=True)`, so loading never runs code stored in the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from extractors.errors import WeightsNotFoundError

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"

# Bytes read per step while hashing, so a large file never sits in memory at once.
_HASH_BLOCK_BYTES = 1 << 20

# Keys listed per category in a key-mismatch message.
_KEYS_SHOWN = 5


class InvalidWeightsError(ValueError):
    """A weights file that exists but does not match the expected checksum or key layout."""


@dataclass(frozen=True)
class WeightsIdentity:
    """Provenance of the weights a network runs with.

    `file_name` is the weights file's name, or "random-init"; `sha256` is the file's hex
    SHA-256, or "random-init".
    """

    file_name: str
    sha256: str

    @classmethod
    def random_init(cls) -> WeightsIdentity:
        return cls(file_name=RANDOM_INIT, sha256=RANDOM_INIT)


def hub_checkpoint_dir() -> Path:
    """Return the torch hub checkpoint folder, `$TORCH_HOME/hub/checkpoints` when set."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _describe_checksum(expected_sha256: str | None, sha256_prefix: str | None) -> str:
    if expected_sha256:
        return f"expected SHA-256 {expected_sha256}"
    if sha256_prefix:
        return f"expected SHA-256 starting with {sha256_prefix}"
    return "its SHA-256 is not published, so any copy is accepted and its checksum recorded"


def resolve_weights(
    configured: str | os.PathLike[str] | None,
    default_file_name: str,
    expected_sha256: str | None,
    sha256_prefix: str | None,
    where: str,
) -> Path:
    """Return the path of a weights file that exists.

    `configured` is the path set in config (None looks in the torch hub checkpoint folder for
    `default_file_name`). `where` is the config key that sets the path, quoted in the error.
    Raises `WeightsNotFoundError` naming the file, its expected SHA-256 (or the known prefix)
    and the folder to put it in.
    """
    checksum = _describe_checksum(expected_sha256, sha256_prefix)
    if configured is not None:
        path = Path(configured).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(
            f"weights file {path} set by {where} not found ({default_file_name}: {checksum}). "
            f"Put the file at {path}, or set {where} to null to use "
            f"{hub_checkpoint_dir() / default_file_name}."
        )

    folder = hub_checkpoint_dir()
    path = folder / default_file_name
    if path.is_file():
        return path
    raise WeightsNotFoundError(
        f"weights file {default_file_name} not found in {folder} ({checksum}). "
        f"It cannot be downloaded here: copy {default_file_name} into {folder} "
        f"(the torch hub cache, moved by $TORCH_HOME), or set {where} to its path. "
        f"For a trial run without the file, set the extractor's pretrained key to false "
        f"(random weights) or if_cached."
    )


def sha256_of(path: Path | str) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(
    path: Path, expected_sha256: str | None = None, sha256_prefix: str | None = None
) -> str:
    """Return the file's SHA-256 after checking it against the full hash or the known prefix.

    With neither `expected_sha256` nor `sha256_prefix` the hash is only computed. Raises
    `InvalidWeightsError` naming the file, the expected and the actual hash on a mismatch.
    """
    actual = sha256_of(path)
    if expected_sha256 and actual != expected_sha256.lower():
        raise InvalidWeightsError(
            f"{path}: SHA-256 is {actual}, expected {expected_sha256}. The file is corrupt or "
            "a different release; replace it with the expected file."
        )
    if sha256_prefix and not actual.startswith(sha256_prefix.lower()):
        raise InvalidWeightsError(
            f"{path}: SHA-256 is {actual}, expected a hash starting with {sha256_prefix} "
            "(torch hub file names carry the first hex digits of the file's SHA-256). "
            "The file is corrupt or a different release; replace it with the expected file."
        )
    return actual


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a checkpoint of tensors onto the CPU without running code stored in it.

    Accepts a plain state dict or one nested under a "state_dict" key. Raises
    `InvalidWeightsError` when the file is not a tensor checkpoint.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable or unsafe files
        raise InvalidWeightsError(
            f"{path}: cannot be read as a tensor checkpoint with torch.load(weights_only=True): "
            f"{error}"
        ) from error

    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise InvalidWeightsError(
            f"{path}: expected a state dict mapping parameter names to tensors, "
            f"got {type(loaded).__name__}"
        )
    return dict(loaded)


def _first_keys(keys: list[str]) -> str:
    listed = ", ".join(keys[:_KEYS_SHOWN])
    if len(keys) > _KEYS_SHOWN:
        listed += f", ... ({len(keys)} in all)"
    return listed


def check_keys(state_dict: Mapping[str, torch.Tensor], model: nn.Module, file: Path | str) -> None:
    """Raise `InvalidWeightsError` unless `state_dict` has exactly the keys and shapes of `model`.

    The message names `file` and lists the first few missing, unexpected and mis-shaped keys.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    if not (missing or unexpected or mis_shaped):
        return

    problems = []
    if missing:
        problems.append(f"missing keys: {_first_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first_keys(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatch (file != model): {_first_keys(mis_shaped)}")
    raise InvalidWeightsError(
        f"{file}: does not fit {type(model).__name__}; " + "; ".join(problems)
    )


def load_checked_weights(model: nn.Module, path: Path, sha256: str) -> WeightsIdentity:
    """Load a verified checkpoint into `model` after checking its keys and shapes.

    `sha256` is the file's already verified hash, recorded in the returned identity.
    """
    state_dict = load_state_dict(path)
    check_keys(state_dict, model, path)
    model.load_state_dict(state_dict)
    logger.info("loaded %s weights from %s (SHA-256 %s)", type(model).__name__, path, sha256)
    return WeightsIdentity(file_name=path.name, sha256=sha256)


def locate_verified_weights(
    configured: str | os.PathLike[str] | None,
    *,
    default_file_name: str,
    expected_sha256: str | None,
    sha256_prefix: str | None,
    where: str,
) -> tuple[Path, str]:
    """Find a weights file and return its path and SHA-256, checked where a hash is known.

    The checksum is enforced for the default file and for a configured file with the default
    name. A configured file with another name is the user's own checkpoint: its SHA-256 is
    recorded but not compared. Runs before the network is built, so a missing or wrong file
    fails fast.
    """
    path = resolve_weights(configured, default_file_name, expected_sha256, sha256_prefix, where)
    if path.name == default_file_name:
        return path, verify_sha256(path, expected_sha256, sha256_prefix)
    sha256 = sha256_of(path)
    logger.info(
        "%s is not %s, so its SHA-256 %s is recorded without comparison",
        path,
        default_file_name,
        sha256,
    )
    return path, sha256


def load_pretrained(
    model: nn.Module,
    *,
    configured: str | os.PathLike[str] | None,
    default_file_name: str,
    expected_sha256: str | None,
    sha256_prefix: str | None,
    where: str,
) -> WeightsIdentity:
    """Find, verify and load a weights file into `model`; return its identity.

    See `locate_verified_weights` for which files have their checksum compared.
    """
    path, sha256 = locate_verified_weights(
        configured,
        default_file_name=default_file_name,
        expected_sha256=expected_sha256,
        sha256_prefix=sha256_prefix,
        where=where,
    )
    return load_checked_weights(model, path, sha256)


def parse_pretrained(value: object) -> bool | str:
    """Validate the `pretrained` setting: true, false or "if_cached"."""
    if isinstance(value, bool) or value == IF_CACHED:
        return value
    raise ValueError(f"invalid pretrained setting {value!r}: expected true, false or {IF_CACHED!r}")


def use_pretrained(pretrained: bool | str, configured: str | os.PathLike[str] | None, default_file_name: str) -> bool:
    """Decide whether to load weights: always for true, never for false, and for
    "if_cached" only when the file is at the configured path or in the torch hub cache."""
    if pretrained != IF_CACHED:
        return bool(pretrained)
    path = Path(configured).expanduser() if configured is not None else hub_checkpoint_dir() / default_file_name
    return path.is_file()


def warn_random_init(extractor_name: str) -> WeightsIdentity:
    """Log that `extractor_name` runs with random weights and return the random-init identity."""
    logger.warning(
        "%s runs with random weights (pretrained: false, or if_cached without a cached file); "
        "its features carry no learned "
        "meaning and the artifact records weights=%s",
        extractor_name,
        RANDOM_INIT,
    )
    return WeightsIdentity.random_init()


# `pretrained` value that loads weights when they are present and falls back to random ones.
IF_CACHED = "if_cached"

PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def parse_precision(name: str, where: str) -> str:
    """Return `name` when it is float32, float16 or bfloat16; raise ValueError naming `where`."""
    if name not in PRECISIONS:
        raise ValueError(
            f"invalid {where} {name!r}: expected one of {', '.join(PRECISIONS)}"
        )
    return name


def effective_precision(precision: str, device: torch.device) -> str:
    """Return the precision a forward pass runs in: `precision` on CUDA, float32 elsewhere."""
    if device.type != "cuda":
        return "float32"
    return precision


@contextlib.contextmanager
def autocast_for(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed forward pass under CUDA autocast when `precision` is reduced.

    On the CPU, and with float32, the block runs in float32 without autocast.
    NOTE: the CUDA branch has not been run by the test suite, which runs on CPU-only machines.
    """
    if effective_precision(precision, device) == "float32":
        yield
        return
    with torch.autocast(device_type="cuda", dtype=PRECISIONS[precision]):
        yield
