"""Tests of locating, verifying and loading weights files (extractors/weights.py)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from extractors.errors import WeightsNotFoundError
from extractors.weights import (
    InvalidWeightsError,
    autocast_for,
    check_keys,
    effective_precision,
    hub_checkpoint_dir,
    load_pretrained,
    load_state_dict,
    parse_precision,
    resolve_weights,
    sha256_of,
    verify_sha256,
    warn_random_init,
)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.fc = nn.Linear(4, 5)


class Payload:
    """An arbitrary object: a weights_only load must refuse to rebuild it."""


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def save_tiny(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = TinyNet().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_hub_dir_follows_torch_home(torch_home: Path) -> None:
    assert hub_checkpoint_dir() == torch_home / "hub" / "checkpoints"


def test_resolve_default_in_hub(torch_home: Path) -> None:
    path = torch_home / "hub" / "checkpoints" / "tiny-00000000.pth"
    save_tiny(path)
    assert resolve_weights(None, "tiny-00000000.pth", None, "00000000", "x.weights") == path


def test_resolve_configured_path(torch_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.pth"
    save_tiny(path)
    assert resolve_weights(str(path), "tiny.pth", None, None, "x.weights") == path


def test_resolve_missing_default_message(torch_home: Path) -> None:
    sha = "ab" * 32
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_weights(None, "tiny.pth", sha, None, "extractors.tiny.weights")
    message = str(caught.value)
    assert "tiny.pth" in message
    assert sha in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "extractors.tiny.weights" in message


def test_resolve_missing_prefix_message(torch_home: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_weights(None, "tiny-1234abcd.pth", None, "1234abcd", "extractors.tiny.weights")
    message = str(caught.value)
    assert "starting with 1234abcd" in message
    assert str(torch_home / "hub" / "checkpoints") in message


def test_resolve_missing_unpublished_hash(torch_home: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not published"):
        resolve_weights(None, "tiny.pth", None, None, "extractors.tiny.weights")


def test_resolve_missing_configured(torch_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tiny.pth"
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_weights(str(missing), "tiny.pth", None, "1234abcd", "extractors.tiny.weights")
    message = str(caught.value)
    assert str(missing) in message
    assert "extractors.tiny.weights" in message
    assert "1234abcd" in message


def test_sha256_streamed(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB, more than two read blocks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_verify_sha256_match(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert verify_sha256(path, digest) == digest
    assert verify_sha256(path, None, digest[:8]) == digest


def test_verify_sha256_full_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"weights")
    with pytest.raises(InvalidWeightsError) as caught:
        verify_sha256(path, "0" * 64)
    assert str(path) in str(caught.value)
    assert "0" * 64 in str(caught.value)


def test_verify_sha256_prefix_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"weights")
    with pytest.raises(InvalidWeightsError, match="starting with ffffffff"):
        verify_sha256(path, None, "ffffffff")


def test_load_state_dict_plain_and_nested(tmp_path: Path) -> None:
    state = save_tiny(tmp_path / "plain.pth")
    torch.save({"state_dict": state}, tmp_path / "nested.pth")
    for name in ("plain.pth", "nested.pth"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == set(state)
        assert torch.equal(loaded["fc.weight"], state["fc.weight"])


def test_load_state_dict_legacy_format(tmp_path: Path) -> None:
    """Files saved by torch before 1.6 are not zip archives, and the C3D port's c3d.pickle dates from 2017."""
    state = TinyNet().state_dict()
    path = tmp_path / "legacy.pickle"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = load_state_dict(path)
    assert torch.equal(loaded["conv.weight"], state["conv.weight"])


def test_load_state_dict_rejects_objects(tmp_path: Path) -> None:
    path = tmp_path / "object.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(InvalidWeightsError, match="weights_only=True"):
        load_state_dict(path)


def test_load_state_dict_rejects_non_tensors(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(InvalidWeightsError, match="state dict"):
        load_state_dict(path)


def test_check_keys_accepts_exact() -> None:
    model = TinyNet()
    check_keys(model.state_dict(), model, "tiny.pth")


def test_check_keys_lists_problems() -> None:
    model = TinyNet()
    state = dict(model.state_dict())
    del state["conv.bias"]
    state["head.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(InvalidWeightsError) as caught:
        check_keys(state, model, "/weights/tiny.pth")
    message = str(caught.value)
    assert "/weights/tiny.pth" in message
    assert "missing keys: conv.bias" in message
    assert "unexpected keys: head.weight" in message
    assert "fc.weight (3, 3) != (5, 4)" in message


def test_check_keys_shortens_long_lists() -> None:
    model = TinyNet()
    state = {f"extra{index}": torch.zeros(1) for index in range(9)}
    state.update(model.state_dict())
    with pytest.raises(InvalidWeightsError, match=r"\(9 in all\)"):
        check_keys(state, model, "tiny.pth")


def test_load_pretrained_default_checks_prefix(torch_home: Path) -> None:
    path = torch_home / "hub" / "checkpoints" / "tiny-00000000.pth"
    save_tiny(path)
    with pytest.raises(InvalidWeightsError, match="starting with 00000000"):
        load_pretrained(
            TinyNet(),
            configured=None,
            default_file_name="tiny-00000000.pth",
            expected_sha256=None,
            sha256_prefix="00000000",
            where="extractors.tiny.weights",
        )


def test_load_pretrained_configured_records_sha(torch_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "my-tiny.pth"
    state = save_tiny(path, seed=3)
    model = TinyNet()
    identity = load_pretrained(
        model,
        configured=str(path),
        default_file_name="tiny-00000000.pth",
        expected_sha256=None,
        sha256_prefix="00000000",
        where="extractors.tiny.weights",
    )
    assert identity.file_name == "my-tiny.pth"
    assert identity.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_random_init_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="extractors.weights"):
        identity = warn_random_init("tiny")
    assert identity.file_name == "random-init"
    assert identity.sha256 == "random-init"
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any("tiny" in record.getMessage() for record in warnings)


def test_precision_parse_and_cpu() -> None:
    assert parse_precision("bfloat16", "extractors.tiny.precision") == "bfloat16"
    with pytest.raises(ValueError, match="extractors.tiny.precision"):
        parse_precision("float8", "extractors.tiny.precision")
    assert effective_precision("float16", torch.device("cpu")) == "float32"
    assert effective_precision("float16", torch.device("cuda")) == "float16"


def test_autocast_cpu_stays_float32() -> None:
    layer = nn.Linear(4, 4)
    with torch.inference_mode(), autocast_for("float16", torch.device("cpu")):
        output = layer(torch.ones(2, 4))
    assert output.dtype == torch.float32


def test_if_cached_follows_file(tmp_path, monkeypatch) -> None:
    from extractors.weights import hub_checkpoint_dir, parse_pretrained, use_pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not use_pretrained("if_cached", None, "c3d.pickle")

    hub_checkpoint_dir().mkdir(parents=True, exist_ok=True)
    (hub_checkpoint_dir() / "c3d.pickle").write_bytes(b"x")
    assert use_pretrained("if_cached", None, "c3d.pickle")
    assert use_pretrained(True, None, "absent.pth")
    assert not use_pretrained(False, None, "c3d.pickle")
    with pytest.raises(ValueError, match="if_cached"):
        parse_pretrained("yes")
