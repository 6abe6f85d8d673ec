"""Tests of the tokenizer, the vocabulary and the GloVe loader and cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from models.text import (
    PAD_INDEX,
    UNK_INDEX,
    Vocabulary,
    cache_glove,
    load_glove,
    read_glove_cache,
    tokenize,
)

# 3-d vectors of a tiny GloVe file; "zebra" of the vocabulary is absent from it.
VECTORS = {
    "person": [1.0, 2.0, 3.0],
    "opens": [0.5, -1.0, 0.25],
    "door": [-2.0, 0.0, 4.0],
    "'s": [0.0, 1.0, 1.0],
}


@pytest.mark.parametrize(
    ("sentence", "tokens"),
    [
        ("A person's bag.", ["a", "person", "'s", "bag", "."]),
        ("They don't stop!", ["they", "do", "n't", "stop", "!"]),
        ("Put on a T-shirt at 5 o'clock", ["put", "on", "a", "t-shirt", "at", "5", "o'clock"]),
        ("walks 3.5 meters, then sits", ["walks", "3.5", "meters", ",", "then", "sits"]),
        ("  'quoted'  ", ["'", "quoted", "'"]),
        ("", []),
    ],
)
def test_tokenize_cases(sentence: str, tokens: list[str]) -> None:
    assert tokenize(sentence) == tokens


def test_vocabulary_build_order() -> None:
    vocabulary = Vocabulary.build(["the door opens.", "the person opens the door"], min_count=2)
    assert vocabulary.tokens == ["<pad>", "<unk>", "the", "door", "opens"]
    assert vocabulary.index("<pad>") == PAD_INDEX
    assert vocabulary.index("<unk>") == UNK_INDEX


def test_vocabulary_encode_unknown() -> None:
    vocabulary = Vocabulary.build(["the door opens."])
    assert vocabulary.encode("The window opens.") == [
        vocabulary.index("the"), UNK_INDEX, vocabulary.index("opens"), vocabulary.index(".")
    ]


def test_vocabulary_decode_skips_pad() -> None:
    vocabulary = Vocabulary.build(["the door opens."])
    encoded = vocabulary.encode("the door opens.") + [PAD_INDEX, PAD_INDEX]
    assert vocabulary.decode(encoded) == ["the", "door", "opens", "."]


def test_vocabulary_decode_out_of_range() -> None:
    vocabulary = Vocabulary.build(["a b"])
    with pytest.raises(ValueError, match="token index 9 out of range"):
        vocabulary.decode([9])


def test_vocabulary_no_words() -> None:
    vocabulary = Vocabulary.build(["the door opens."])
    with pytest.raises(ValueError, match="query A#3: sentence '...' has no words"):
        vocabulary.encode("...", query_id="A#3")
    with pytest.raises(ValueError, match="query B#1"):
        vocabulary.encode("   ", query_id="B#1")


def test_vocabulary_dict_round_trip() -> None:
    vocabulary = Vocabulary.build(["the door opens.", "a person's door"], min_count=1)
    restored = Vocabulary.from_dict(vocabulary.to_dict())
    assert restored.tokens == vocabulary.tokens
    assert restored.min_count == 1
    assert restored.encode("a person's door") == vocabulary.encode("a person's door")


def test_vocabulary_from_dict_invalid() -> None:
    with pytest.raises(ValueError, match="must start with '<pad>', '<unk>'"):
        Vocabulary.from_dict({"tokens": ["door", "<pad>", "<unk>"]})
    with pytest.raises(ValueError, match="tokens repeat"):
        Vocabulary.from_dict({"tokens": ["<pad>", "<unk>", "door", "door"]})
    with pytest.raises(ValueError, match="list of strings"):
        Vocabulary.from_dict({"words": []})


def glove_lines(header: bool) -> list[str]:
    lines = [" ".join([word, *map(str, vector)]) for word, vector in VECTORS.items()]
    if header:
        lines.insert(0, f"{len(lines)} 3")
    return lines


@pytest.fixture()
def vocabulary() -> Vocabulary:
    return Vocabulary(["<pad>", "<unk>", "person", "'s", "zebra", "opens", "door"])


def expected_table(vocabulary: Vocabulary) -> np.ndarray:
    mean = np.mean([VECTORS[word] for word in VECTORS], axis=0)
    rows = [np.zeros(3), mean]
    for token in vocabulary.tokens[2:]:
        rows.append(np.array(VECTORS[token]) if token in VECTORS else mean)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("header", [False, True])
def test_load_glove_values(tmp_path: Path, vocabulary: Vocabulary, header: bool) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(glove_lines(header)) + "\n")
    vectors, found = load_glove(path, vocabulary, 3)
    assert found == 4
    assert vectors.dtype == np.float32
    assert vectors.shape == (7, 3)
    np.testing.assert_allclose(vectors, expected_table(vocabulary), rtol=1e-6)


def test_load_glove_pad_and_unknown(tmp_path: Path, vocabulary: Vocabulary) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(glove_lines(False)) + "\n")
    vectors, _ = load_glove(path, vocabulary, 3)
    mean = np.mean(list(VECTORS.values()), axis=0)
    np.testing.assert_array_equal(vectors[PAD_INDEX], np.zeros(3))
    np.testing.assert_allclose(vectors[UNK_INDEX], mean, rtol=1e-6)
    np.testing.assert_allclose(vectors[vocabulary.index("zebra")], mean, rtol=1e-6)


def test_load_glove_token_with_spaces(tmp_path: Path, vocabulary: Vocabulary) -> None:
    # glove.840B has lines such as ". . . 0.1 ...": the token is everything but the last dim fields.
    path = tmp_path / "glove.txt"
    lines = glove_lines(False)
    lines.insert(1, ". . . 9 9 9")
    lines.insert(2, "person door 7 7 7")
    path.write_text("\n".join(lines) + "\n")
    vectors, found = load_glove(path, vocabulary, 3)
    assert found == 4
    np.testing.assert_array_equal(vectors[vocabulary.index("person")], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(vectors[vocabulary.index("door")], [-2.0, 0.0, 4.0])


def test_load_glove_first_duplicate_wins(tmp_path: Path, vocabulary: Vocabulary) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(glove_lines(False) + ["door 5 5 5"]) + "\n")
    vectors, _ = load_glove(path, vocabulary, 3)
    np.testing.assert_array_equal(vectors[vocabulary.index("door")], [-2.0, 0.0, 4.0])


def test_load_glove_short_line(tmp_path: Path, vocabulary: Vocabulary) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("person 1 2 3\ndoor 1 2\n")
    with pytest.raises(ValueError, match=r"glove\.txt:2: expected a token and 3 numbers"):
        load_glove(path, vocabulary, 3)


def test_load_glove_header_dim_mismatch(tmp_path: Path, vocabulary: Vocabulary) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("4 300\n" + "\n".join(glove_lines(False)) + "\n")
    with pytest.raises(ValueError, match="header gives 300-d vectors, expected 3"):
        load_glove(path, vocabulary, 3)


def test_load_glove_no_word_found(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(glove_lines(False)) + "\n")
    vectors, found = load_glove(path, Vocabulary(["<pad>", "<unk>", "zebra"]), 3)
    assert found == 0
    np.testing.assert_array_equal(vectors, np.zeros((3, 3)))


def test_glove_cache_round_trip(tmp_path: Path, vocabulary: Vocabulary) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("\n".join(glove_lines(True)) + "\n")
    cache = tmp_path / "cache" / "glove.h5"
    found = cache_glove(glove, vocabulary, 3, cache)
    table = read_glove_cache(cache, vocabulary)
    assert found == 4
    assert table.found == 4
    assert table.dim == 3
    assert table.words == vocabulary.tokens
    assert table.source == str(glove)
    assert table.source_sha256 == hashlib.sha256(glove.read_bytes()).hexdigest()
    np.testing.assert_array_equal(table.vectors, load_glove(glove, vocabulary, 3)[0])
    assert not cache.with_name("glove.h5.tmp").exists()


def test_glove_cache_layout(tmp_path: Path, vocabulary: Vocabulary) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("\n".join(glove_lines(False)) + "\n")
    cache = tmp_path / "glove.h5"
    cache_glove(glove, vocabulary, 3, cache)
    with h5py.File(cache, "r") as handle:
        assert handle["vectors"].shape == (7, 3)
        assert handle["vectors"].dtype == np.float32
        assert handle["words"][2].decode() == "person"
        assert set(handle.attrs) == {"source", "source_sha256", "dim", "found"}


def test_glove_cache_other_vocabulary(tmp_path: Path, vocabulary: Vocabulary) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("\n".join(glove_lines(False)) + "\n")
    cache = tmp_path / "glove.h5"
    cache_glove(glove, vocabulary, 3, cache)
    other = Vocabulary(["<pad>", "<unk>", "person", "door"])
    with pytest.raises(ValueError, match=r"glove\.h5: cached words differ from the vocabulary"):
        read_glove_cache(cache, other)
