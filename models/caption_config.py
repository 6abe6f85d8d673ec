"""Typed settings of PMI-CAP and of its training, built from the `captioner:` config dict.

`CaptionerConfig.from_dict` takes the flat mapping under `captioner:` in config.yaml (after a
dataset's `captioner:` overrides are merged in). The video interaction keys go to a nested
`InteractionConfig`: d_model, heads, d_low, max_relative_position, gate_channels,
interaction, pairs, fusion, ffn_expansion, and interaction_dropout, which becomes the
interaction's `dropout`. The other keys go to `CaptionerConfig`. Every key is required, so config.yaml is
the single source of default values, and an unknown, missing or invalid key raises a
ValueError that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.config import InteractionConfig

# Key of the interaction's dropout in the flat `captioner:` mapping: `dropout` there is the
# dropout of the captioning LSTMs, while the interaction's feed-forward networks use this one.
INTERACTION_DROPOUT_KEY = "interaction_dropout"


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


def _check_number(key: str, value: Any, minimum: float, below: float | None = None, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if value < minimum or (positive and value <= 0):
        raise ValueError(f"{key} must be {'>' if positive else '>='} {minimum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{key} must be < {below}, got {value}")


def _interaction_keys() -> dict[str, str]:
    """Map each flat `captioner:` key of the interaction to its InteractionConfig field."""
    keys = {name: name for name in InteractionConfig.keys()}
    keys.pop("dropout")
    keys[INTERACTION_DROPOUT_KEY] = "dropout"
    return keys


@dataclass(frozen=True)
class CaptionerConfig:
    """Settings of PMI-CAP, the event captioning model, and of its training.

    interaction: video PMI settings (INT and fusion) over the N subsampled steps.
    embedding_dim: size of the word embeddings, trained from scratch (paper: 512).
    encoder_hidden: hidden size per direction of the 1-layer BiLSTM encoder (256), so the
        encoder outputs 2 * encoder_hidden channels per step.
    decoder_hidden: hidden size of every decoder LSTM layer (512).
    decoder_layers: LSTM layers of the decoder (2).
    attention_dim: size of the additive temporal attention's hidden layer.
    dropout: dropout probability on the word embeddings, the encoder outputs, between decoder
        layers and before the output layer (0.5).
    min_count: training words seen fewer times map to `<unk>` (2).
    max_length: most words of a caption: longer training captions are cut, decoding stops
        there (20).
    beam_size: beam width of prediction (5); 1 is greedy decoding.
    learning_rate, batch_size, epochs: Adam learning rate, captions per batch, passes over
        the training captions.
    max_grad_norm: gradients are clipped to this global l2 norm before each Adam step.
    """

    interaction: InteractionConfig
    embedding_dim: int
    encoder_hidden: int
    decoder_hidden: int
    decoder_layers: int
    attention_dim: int
    dropout: float
    min_count: int
    max_length: int
    beam_size: int
    learning_rate: float
    batch_size: int
    epochs: int
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not isinstance(self.interaction, InteractionConfig):
            raise ValueError(f"interaction must be an InteractionConfig, got {self.interaction!r}")
        for key in ("embedding_dim", "encoder_hidden", "decoder_hidden", "decoder_layers", "attention_dim"):
            _check_int(key, getattr(self, key), 1)
        _check_number("dropout", self.dropout, 0.0, below=1.0)
        _check_int("min_count", self.min_count, 1)
        _check_int("max_length", self.max_length, 1)
        _check_int("beam_size", self.beam_size, 1)
        _check_number("learning_rate", self.learning_rate, 0.0, positive=True)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("epochs", self.epochs, 1)
        _check_number("max_grad_norm", self.max_grad_norm, 0.0, positive=True)
        for key in ("dropout", "learning_rate", "max_grad_norm"):
            object.__setattr__(self, key, float(getattr(self, key)))

    @classmethod
    def keys(cls) -> set[str]:
        """Return every key of the flat `captioner:` mapping, interaction keys included."""
        own = {field.name for field in dataclasses.fields(cls)} - {"interaction"}
        return own | set(_interaction_keys())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "captioner") -> CaptionerConfig:
        """Build the settings from the flat `captioner:` mapping of config.yaml.

        `source` names the mapping in error messages (for example
        `config.yaml datasets.msvd.captioner`). Raises ValueError naming any unknown, missing
        or invalid key.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
        known = cls.keys()
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(sorted(known))}"
            )
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(map(repr, missing))}")

        interaction_keys = _interaction_keys()
        interaction = InteractionConfig.from_dict(
            {field: values[key] for key, field in interaction_keys.items()}, source
        )
        own = {key: value for key, value in values.items() if key not in interaction_keys}
        try:
            return cls(interaction=interaction, **own)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """Return the flat `captioner:` mapping that `from_dict` reads (for checkpoints)."""
        values = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "interaction"
        }
        for key, field in _interaction_keys().items():
            values[key] = getattr(self.interaction, field)
        return values
