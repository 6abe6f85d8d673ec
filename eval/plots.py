"""Figures of the modality pair weights `alpha` saved with localization predictions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)


def mean_pair_weights(predictions: dict) -> tuple[list[str], np.ndarray]:
    """Return the pair names and the weight of each pair averaged over steps and queries."""
    names = predictions.get("pair_names") or []
    weights = [np.asarray(entry["alpha"]) for entry in predictions["queries"] if entry.get("alpha") is not None]
    if not names or not weights:
        return names, np.zeros(len(names))
    return names, np.mean([weight.mean(axis=0) for weight in weights], axis=0)


def plot_modality_weights(predictions_path: Path, output: Path) -> None:
    """Plot the mean weight of each modality pair, and one query's weights over time.

    The example query is the first one whose prediction overlaps its ground truth best; its
    panel shades the true span. Predictions of models without pairwise fusion have no
    weights, and the figure states that instead of plotting.
    """
    predictions = json.loads(predictions_path.read_text(encoding="utf-8"))
    names, mean_weights = mean_pair_weights(predictions)
    figure, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4))

    if not names:
        for axis in (bars, curves):
            axis.text(0.5, 0.5, "model has no pairwise fusion weights", ha="center", va="center")
            axis.set_axis_off()
    else:
        bars.bar(range(len(names)), mean_weights, color="tab:blue")
        bars.set_xticks(range(len(names)), names, rotation=45, ha="right")
        bars.set_ylabel("mean weight alpha")
        bars.set_title(f"{predictions.get('dataset', '')}: modality pair weights")

        example = _best_example(predictions["queries"])
        alpha = np.asarray(example["alpha"])
        steps = alpha.shape[0]
        times = (np.arange(steps) + 0.5) / steps * example["duration"]
        for column, name in enumerate(names):
            curves.plot(times, alpha[:, column], label=name)
        start, end = example["ground_truth"]
        curves.axvspan(start, end, color="grey", alpha=0.25, label="true span")
        curves.set_xlabel("time (s)")
        curves.set_ylabel("alpha")
        curves.set_title(f"\"{example['sentence']}\""[:70])
        curves.legend(fontsize=7, ncol=2)

    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.stem + ".tmp.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    temporary.replace(output)
    logger.info("wrote %s", output)


def _best_example(entries: list[dict]) -> dict:
    def overlap(entry: dict) -> float:
        start, end = entry["ground_truth"]
        intersection = max(0.0, min(end, entry["end"]) - max(start, entry["start"]))
        union = max(end, entry["end"]) - min(start, entry["start"])
        return intersection / union if union > 0 else 0.0

    with_weights = [entry for entry in entries if entry.get("alpha") is not None]
    return max(with_weights, key=overlap)
