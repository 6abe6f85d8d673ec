"""Video ids read from annotation files while the workflow builds its job graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from extractors.dataset_videos import annotation_video_ids

CHARADES = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations" / "charades_sta"


@pytest.mark.skipif(not CHARADES.is_dir(), reason=f"shared annotations not found at {CHARADES}")
def test_charades_release_video_counts() -> None:
    train = annotation_video_ids("charades_sta", {"train": CHARADES / "charades_sta_train.txt"})
    test = annotation_video_ids("charades_sta", {"test": CHARADES / "charades_sta_test.txt"})
    both = annotation_video_ids(
        "charades_sta",
        {"train": CHARADES / "charades_sta_train.txt", "test": CHARADES / "charades_sta_test.txt"},
    )

    assert len(train) == 5338
    assert len(test) == 1334
    assert len(both) == 6672
    assert both == sorted(both)


def test_charades_ids_skip_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("b 0.0 1.0##one.\n\n  \na 1.0 2.5##two.\nb 2.0 3.0##three.\n")

    assert annotation_video_ids("charades_sta", {"train": path}) == ["a", "b"]


@pytest.mark.parametrize(
    "line",
    [
        "vidB 1.0 2.0 a sentence with no separator",
        "vid D 0.0 3.0##an id with a space.",
        "vidC 1.0##a missing end.",
    ],
)
def test_charades_ids_reject_malformed_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "test.txt"
    path.write_text(f"a 0.0 1.0##fine.\n{line}\n")

    with pytest.raises(ValueError, match=r"test\.txt:2: expected 'VIDEO START END##SENTENCE'"):
        annotation_video_ids("charades_sta", {"test": path})


def test_unknown_format_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown annotation format 'tall'"):
        annotation_video_ids("tall", {"train": tmp_path / "train.txt"})
