"""Typed settings of the PMI modules and of PMI-LOC, built from the `localizer:` config dict.

`LocalizerConfig.from_dict` takes the flat mapping under `localizer:` in config.yaml (after a
dataset's overrides are merged in) and splits it: the interaction keys go to a nested
`InteractionConfig`, the rest to `LocalizerConfig`. Every key is required, so config.yaml is
the single source of default values, and an unknown, missing or invalid key raises a
ValueError that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INTERACTION_MODES = ("pairwise", "concat_intra", "none")
PAIR_MODES = ("all", "intra", "inter")
FUSION_MODES = ("weighted", "sum", "concat")
EMBEDDING_MODES = ("glove", "learned")


# Interaction keys that configs written before they existed may leave out.
OPTIONAL_INTERACTION_DEFAULTS = {"ffn_expansion": 2.0}


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


def _check_float(key: str, value: Any, minimum: float, below: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{key} must be < {below}, got {value}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _check_keys(values: Mapping[str, Any], known: set[str], source: str) -> None:
    """Raise ValueError naming every key of `values` outside `known` and every missing key."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are {', '.join(sorted(known))}"
        )
    missing = sorted(known - set(values))
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(map(repr, missing))}")


def _field_names(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


@dataclass(frozen=True)
class InteractionConfig:
    """Settings of the Channel-Gated Modality Interaction INT and of the video fusion.

    d_model: size (channels) of every INT output and of the fused video feature.
    heads: attention heads of the bilinear attention BA.
    d_low: rank of BA's bilinear form, split evenly across the heads.
    max_relative_position: largest relative offset K (steps) with its own position embedding;
        offsets beyond [-K, K] share the embedding of the clipped offset.
    gate_channels: channels `c` of the channel gate CG.
    dropout: dropout probability inside every position-wise feed-forward network.
    interaction: `pairwise` (INT on modality pairs, then fusion), `concat_intra` (concatenate
        the modalities, then INT(X, X)) or `none` (concatenate, one linear layer).
    pairs: modality pairs of `pairwise`: `all` (M^2 ordered pairs), `intra` (p = q, M pairs) or
        `inter` (p != q, M^2 - M pairs).
    fusion: fusion of the pair outputs: `weighted` (learned per-step weights alpha), `sum` or
        `concat` (followed by a linear layer back to d_model).
    ffn_expansion: hidden size of every position-wise FFN as a multiple of its output size,
        d_ff = ffn_expansion * d_out. The paper defers the FFN to an unpublished supplement;
        2 is the default, and smaller values shrink FFN_gate, whose output size is the raw
        feature size d_p (4096 for C3D).
    """

    d_model: int
    heads: int
    d_low: int
    max_relative_position: int
    gate_channels: int
    dropout: float
    interaction: str
    pairs: str
    fusion: str
    ffn_expansion: float = 2.0

    def __post_init__(self) -> None:
        _check_int("d_model", self.d_model, 1)
        _check_int("heads", self.heads, 1)
        _check_int("d_low", self.d_low, 1)
        if self.d_low % self.heads:
            raise ValueError(f"d_low ({self.d_low}) must be a multiple of heads ({self.heads})")
        _check_int("max_relative_position", self.max_relative_position, 0)
        _check_int("gate_channels", self.gate_channels, 1)
        _check_float("dropout", self.dropout, 0.0, below=1.0)
        _check_choice("interaction", self.interaction, INTERACTION_MODES)
        _check_choice("pairs", self.pairs, PAIR_MODES)
        _check_choice("fusion", self.fusion, FUSION_MODES)
        _check_float("ffn_expansion", self.ffn_expansion, 0.0)
        if self.ffn_expansion == 0:
            raise ValueError("ffn_expansion must be > 0, got 0")
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "ffn_expansion", float(self.ffn_expansion))

    @classmethod
    def keys(cls) -> set[str]:
        """Return the config keys this dataclass reads."""
        return _field_names(cls)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "interaction") -> InteractionConfig:
        """Build the settings from a mapping with exactly the keys of this dataclass.

        Only the keys of OPTIONAL_INTERACTION_DEFAULTS (ffn_expansion) may be left out and then
        take their defaults. `source` names the mapping in error messages (for example `config.yaml localizer`).
        Raises ValueError naming any unknown, missing or invalid key.
        """
        values = {"ffn_expansion": OPTIONAL_INTERACTION_DEFAULTS["ffn_expansion"], **values}
        _check_keys(values, cls.keys(), source)
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


@dataclass(frozen=True)
class LocalizerConfig:
    """Settings of PMI-LOC, the sentence localization model, and of its training.

    interaction: INT and fusion settings, shared by the video PMI and the text INT(Y, Y).
    vtli: video-text local interaction on; off adds mean(Y_hat) to every video step instead.
    window: half-width w (steps) of the VTLI window [t - w, t + w].
    l2_norm: adds the layer-wise l2-norm loss of the head to the total loss.
    head_channels: output channels of the head's convolution layers before the last one,
        which has 1 channel, so the head has len(head_channels) + 1 layers.
    lambda_r: weight of the relevance loss. lambda_n: weight of the l2-norm loss.
    beta: target l2 norm of every head activation vector (the same for every layer).
    embedding: `glove` (pretrained vectors, kept fixed) or `learned` (trained from scratch).
    glove_path: GloVe text file read by the training code when embedding is glove.
    embedding_dim: word embedding size.
    learning_rate, batch_size, epochs: Adam learning rate, queries per batch, passes.
    validation_fraction: share of training videos held out for model selection.
    """

    interaction: InteractionConfig
    vtli: bool
    window: int
    l2_norm: bool
    head_channels: tuple[int, ...]
    lambda_r: float
    lambda_n: float
    beta: float
    embedding: str
    glove_path: str
    embedding_dim: int
    learning_rate: float
    batch_size: int
    epochs: int
    validation_fraction: float

    def __post_init__(self) -> None:
        if not isinstance(self.interaction, InteractionConfig):
            raise ValueError(f"interaction must be an InteractionConfig, got {self.interaction!r}")
        _check_bool("vtli", self.vtli)
        _check_int("window", self.window, 0)
        _check_bool("l2_norm", self.l2_norm)
        if not isinstance(self.head_channels, (tuple, list)):
            raise ValueError(f"head_channels must be a list of integers, got {self.head_channels!r}")
        for channels in self.head_channels:
            _check_int("head_channels", channels, 1)
        _check_float("lambda_r", self.lambda_r, 0.0)
        _check_float("lambda_n", self.lambda_n, 0.0)
        _check_float("beta", self.beta, 0.0)
        _check_choice("embedding", self.embedding, EMBEDDING_MODES)
        if not isinstance(self.glove_path, str):
            raise ValueError(f"glove_path must be a string, got {self.glove_path!r}")
        _check_int("embedding_dim", self.embedding_dim, 1)
        _check_float("learning_rate", self.learning_rate, 0.0)
        if self.learning_rate == 0:
            raise ValueError("learning_rate must be > 0, got 0")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("epochs", self.epochs, 1)
        _check_float("validation_fraction", self.validation_fraction, 0.0, below=1.0)

        object.__setattr__(self, "head_channels", tuple(self.head_channels))
        for key in ("lambda_r", "lambda_n", "beta", "learning_rate", "validation_fraction"):
            object.__setattr__(self, key, float(getattr(self, key)))

    @classmethod
    def keys(cls) -> set[str]:
        """Return every key of the flat `localizer:` mapping, interaction keys included."""
        return (_field_names(cls) - {"interaction"}) | InteractionConfig.keys()

    def to_dict(self) -> dict[str, Any]:
        """Return the flat `localizer:` mapping that `from_dict` turns back into this config."""
        values = dataclasses.asdict(self)
        values.update(values.pop("interaction"))
        values["head_channels"] = list(self.head_channels)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "localizer") -> LocalizerConfig:
        """Build the settings from the flat `localizer:` mapping of config.yaml.

        The nested form of `dataclasses.asdict(config)`, where `interaction` maps to the
        interaction settings, is accepted too. `source` names the mapping in error messages
        (for example `config.yaml datasets.demo.localizer`). Raises ValueError naming any
        unknown, missing or invalid key.
        """
        if isinstance(values, Mapping) and isinstance(values.get("interaction"), Mapping):
            nested = dict(values)
            interaction_values = nested.pop("interaction")
            clashes = sorted(set(nested) & set(interaction_values))
            if clashes:
                raise ValueError(
                    f"{source}: key(s) {', '.join(map(repr, clashes))} given both at the top "
                    "level and under interaction"
                )
            values = {**nested, **interaction_values}
        values = {**OPTIONAL_INTERACTION_DEFAULTS, **values}
        _check_keys(values, cls.keys(), source)
        interaction_keys = InteractionConfig.keys()
        interaction = InteractionConfig.from_dict(
            {key: value for key, value in values.items() if key in interaction_keys}, source
        )
        own = {key: value for key, value in values.items() if key not in interaction_keys}
        try:
            return cls(interaction=interaction, **own)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
