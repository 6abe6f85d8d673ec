"""Text processing of the query sentences: tokenizer, vocabulary and GloVe embeddings.

Tokenization rule (`tokenize`): the sentence is lowercased, then split into
- words: runs of letters and digits, with inner hyphens and apostrophes kept
  ("t-shirt", "o'clock"), and numbers with their decimal point or thousands comma ("3.5");
- English clitics as their own tokens, as the Penn Treebank tokenizer splits them:
  "person's" -> "person", "'s"; "they're" -> "they", "'re"; "don't" -> "do", "n't"
  (likewise 've, 'll, 'd, 'm);
- every other non-space character (punctuation, symbols) as a one-character token.
GloVe's Common Crawl vectors were built from text tokenized the same way, so the clitic
tokens ("'s", "n't") have vectors there.

Embedding table (`load_glove`): row i is the vector of vocabulary token i. `<pad>` (index 0)
is all zeros. `<unk>` (index 1) and every vocabulary word absent from the GloVe file get
the mean of the vectors that were found (zeros when none was found). Words are matched
exactly, after the lowercasing above.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
PAD_INDEX = 0
UNK_INDEX = 1

_NEGATION = re.compile(r"(?<=[^\W_])n't\b")
_CLITIC = re.compile(r"(?<=[^\W_])'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:['\-][^\W_]+|(?<=\d)[.,]\d+)*|\S")
_HAS_WORD_CHARACTER = re.compile(r"[^\W_]")

# Bytes read between two updates of the GloVe progress bar.
_PROGRESS_STEP_BYTES = 1 << 24


def tokenize(sentence: str) -> list[str]:
    """Split `sentence` into lowercase tokens by the rule in the module docstring."""
    text = sentence.lower()
    text = _NEGATION.sub(" n't", text)
    text = _CLITIC.sub(r" '\1", text)
    return _TOKEN.findall(text)


def has_words(tokens: Sequence[str]) -> bool:
    """Return whether any token contains a letter or a digit (punctuation alone is no word)."""
    return any(_HAS_WORD_CHARACTER.search(token) for token in tokens)


class Vocabulary:
    """Mapping between tokens and indices, with `<pad>` = 0 and `<unk>` = 1.

    Build it from the training sentences only, so that test words unseen in training map to
    `<unk>`.
    """

    def __init__(self, tokens: Sequence[str], min_count: int = 1) -> None:
        """Create a vocabulary from its tokens in index order.

        The list must start with `<pad>`, `<unk>` and contain no duplicates.
        """
        tokens = list(tokens)
        if tokens[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(
                f"a vocabulary must start with {PAD_TOKEN!r}, {UNK_TOKEN!r}; got {tokens[:2]}"
            )
        if len(set(tokens)) != len(tokens):
            duplicates = sorted(token for token, count in Counter(tokens).items() if count > 1)
            raise ValueError(f"vocabulary tokens repeat: {duplicates[:10]}")
        self._tokens = tokens
        self._index = {token: index for index, token in enumerate(tokens)}
        self.min_count = min_count

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Build a vocabulary of the tokens seen at least `min_count` times in `sentences`.

        Tokens are ordered by decreasing count, ties alphabetically, so the same sentences
        always give the same indices.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(token for sentence in sentences for token in tokenize(sentence))
        for reserved in (PAD_TOKEN, UNK_TOKEN):
            counts.pop(reserved, None)
        kept = sorted(
            (token for token, count in counts.items() if count >= min_count),
            key=lambda token: (-counts[token], token),
        )
        logger.info(
            "vocabulary: %d of %d distinct tokens seen at least %d times",
            len(kept),
            len(counts),
            min_count,
        )
        return cls([PAD_TOKEN, UNK_TOKEN, *kept], min_count=min_count)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    @property
    def tokens(self) -> list[str]:
        """Tokens in index order (a copy)."""
        return list(self._tokens)

    def index(self, token: str) -> int:
        """Return the index of `token`, `<unk>`'s index when it is not in the vocabulary."""
        return self._index.get(token, UNK_INDEX)

    def find(self, token: str) -> int | None:
        """Return the index of `token`, or None when it is not in the vocabulary."""
        return self._index.get(token)

    def encode(self, sentence: str, query_id: str | None = None) -> list[int]:
        """Tokenize `sentence` and return its token indices.

        Raises ValueError naming `query_id` when the sentence has no words (no token with a
        letter or a digit), because such a query cannot be localized.
        """
        tokens = tokenize(sentence)
        if not has_words(tokens):
            name = f"query {query_id}" if query_id is not None else "sentence"
            raise ValueError(f"{name}: sentence {sentence!r} has no words")
        return [self.index(token) for token in tokens]

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Return the tokens of `indices`, leaving out `<pad>`."""
        tokens = []
        for index in indices:
            index = int(index)
            if not 0 <= index < len(self._tokens):
                raise ValueError(f"token index {index} out of range [0, {len(self._tokens)})")
            if index != PAD_INDEX:
                tokens.append(self._tokens[index])
        return tokens

    def to_dict(self) -> dict[str, Any]:
        """Return the vocabulary as plain lists and numbers for a checkpoint."""
        return {"tokens": list(self._tokens), "min_count": self.min_count}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from `to_dict` output; raises ValueError when malformed."""
        tokens = state.get("tokens") if isinstance(state, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise ValueError("vocabulary state must have 'tokens', a list of strings")
        return cls(tokens, min_count=int(state.get("min_count", 1)))


@dataclass(frozen=True)
class GloveTable:
    """Vocabulary-filtered GloVe vectors read back from an HDF5 cache.

    `vectors` is float32 `(V, dim)` in vocabulary order, `words` the V tokens, `found` how
    many vocabulary words had a vector in the source file, `source` its path and
    `source_sha256` its SHA-256 (hex).
    """

    vectors: np.ndarray
    words: list[str]
    found: int
    dim: int
    source: str
    source_sha256: str


def _read_header(first_line: str, path: Path, dim: int) -> bool:
    """Return whether `first_line` is a `count dim` header, checking its dim."""
    fields = first_line.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        return False
    if int(fields[1]) != dim:
        raise ValueError(f"{path}: header gives {fields[1]}-d vectors, expected {dim}")
    return True


def _scan_glove(
    path: Path, vocabulary: Vocabulary, dim: int, hasher: Any | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stream a GloVe text file and collect the vectors of vocabulary words.

    Returns `(vectors (V, dim) float32, found (V,) bool)` with rows of missing words zero.
    A line is `TOKEN v1 ... v_dim`; the token is everything before the last `dim` fields,
    so tokens with spaces (in glove.840B) are tolerated. When a word occurs twice, the first
    line wins. `hasher` (a hashlib object) receives every byte of the file.
    """
    vectors = np.zeros((len(vocabulary), dim), dtype=np.float32)
    found = np.zeros(len(vocabulary), dtype=bool)
    total_bytes = path.stat().st_size

    handle: BinaryIO
    with path.open("rb") as handle, tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc=f"GloVe {path.name}", disable=None
    ) as progress:
        pending_bytes = 0
        for line_number, raw_line in enumerate(handle, start=1):
            if hasher is not None:
                hasher.update(raw_line)
            pending_bytes += len(raw_line)
            if pending_bytes >= _PROGRESS_STEP_BYTES:
                progress.update(pending_bytes)
                pending_bytes = 0

            line = raw_line.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            if line_number == 1 and _read_header(line, path, dim):
                continue
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1 or not parts[0]:
                raise ValueError(
                    f"{path}:{line_number}: expected a token and {dim} numbers, "
                    f"got {len(parts) - 1} fields after the token"
                )
            index = vocabulary.find(parts[0])
            if index is None or index in (PAD_INDEX, UNK_INDEX) or found[index]:
                continue
            try:
                vectors[index] = np.array(parts[1:], dtype=np.float32)
            except ValueError:
                raise ValueError(
                    f"{path}:{line_number}: vector of {parts[0]!r} is not {dim} numbers"
                ) from None
            found[index] = True
        progress.update(pending_bytes)
    return vectors, found


def _fill_missing(vectors: np.ndarray, found: np.ndarray) -> None:
    """Give `<unk>` and words without a vector the mean found vector; `<pad>` stays zero."""
    mean = vectors[found].mean(axis=0) if found.any() else np.zeros(vectors.shape[1])
    missing = ~found
    missing[PAD_INDEX] = False
    vectors[missing] = mean
    vectors[PAD_INDEX] = 0.0


def load_glove(path: Path | str, vocabulary: Vocabulary, dim: int) -> tuple[np.ndarray, int]:
    """Read the embedding table of `vocabulary` from a GloVe text file.

    The file is the standard GloVe text format, one `TOKEN v1 ... v_dim` per line, with or
    without a first header line `count dim`. Returns `(vectors, found)`: float32 `(V, dim)`
    with V = len(vocabulary), and the number of vocabulary words found in the file. Missing
    words and `<unk>` get the mean found vector, `<pad>` zeros. Raises ValueError naming the
    file and line when a line has fewer than `dim` numbers.
    """
    path = Path(path)
    vectors, found = _scan_glove(path, vocabulary, dim)
    _fill_missing(vectors, found)
    found_count = int(found.sum())
    _log_coverage(path, vocabulary, found_count)
    return vectors, found_count


def _log_coverage(path: Path, vocabulary: Vocabulary, found_count: int) -> None:
    words = len(vocabulary) - 2
    if found_count == 0:
        logger.warning("%s: none of the %d vocabulary words has a vector", path, words)
    else:
        logger.info("%s: vectors found for %d of %d vocabulary words", path, found_count, words)


def cache_glove(
    glove_path: Path | str, vocabulary: Vocabulary, dim: int, output_h5: Path | str
) -> int:
    """Write the vocabulary-filtered GloVe table to an HDF5 file and return the found count.

    Datasets: `vectors` float32 `(V, dim)` in vocabulary order (filled as in `load_glove`),
    `words` `(V,)` UTF-8 strings. Attributes: `source` (path of the GloVe file),
    `source_sha256`, `dim`, `found`. The file is written to `<output_h5>.tmp` and renamed on
    success.
    """
    glove_path = Path(glove_path)
    output_h5 = Path(output_h5)
    hasher = hashlib.sha256()
    vectors, found = _scan_glove(glove_path, vocabulary, dim, hasher=hasher)
    _fill_missing(vectors, found)
    found_count = int(found.sum())
    _log_coverage(glove_path, vocabulary, found_count)

    output_h5.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_h5.with_name(output_h5.name + ".tmp")
    try:
        with h5py.File(temporary, "w") as handle:
            handle.create_dataset("vectors", data=vectors)
            handle.create_dataset(
                "words", data=vocabulary.tokens, dtype=h5py.string_dtype(encoding="utf-8")
            )
            handle.attrs["source"] = str(glove_path)
            handle.attrs["source_sha256"] = hasher.hexdigest()
            handle.attrs["dim"] = dim
            handle.attrs["found"] = found_count
        os.replace(temporary, output_h5)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("wrote GloVe cache %s (%d x %d)", output_h5, len(vocabulary), dim)
    return found_count


def read_glove_cache(path: Path | str, vocabulary: Vocabulary | None = None) -> GloveTable:
    """Read a table written by `cache_glove`.

    When `vocabulary` is given, raises ValueError naming the file if the cached words differ
    from it, because the rows would then belong to other tokens.
    """
    path = Path(path)
    with h5py.File(path, "r") as handle:
        missing = [name for name in ("vectors", "words") if name not in handle]
        if missing:
            raise ValueError(f"{path}: not a GloVe cache, missing dataset(s) {missing}")
        vectors = handle["vectors"][()].astype(np.float32, copy=False)
        words = [word.decode("utf-8") for word in handle["words"][()]]
        table = GloveTable(
            vectors=vectors,
            words=words,
            found=int(handle.attrs["found"]),
            dim=int(handle.attrs["dim"]),
            source=str(handle.attrs["source"]),
            source_sha256=str(handle.attrs["source_sha256"]),
        )

    if vocabulary is not None and words != vocabulary.tokens:
        differing = next(
            (i for i, (a, b) in enumerate(zip(words, vocabulary.tokens)) if a != b),
            min(len(words), len(vocabulary)),
        )
        raise ValueError(
            f"{path}: cached words differ from the vocabulary ({len(words)} cached, "
            f"{len(vocabulary)} in the vocabulary, first difference at index {differing}); "
            f"rebuild the cache with cache_glove"
        )
    return table
