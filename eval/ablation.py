"""Markdown table of the localizer ablation (PMI, VTLI and l2-norm switched on one by one)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

VARIANT_LABELS = {
    "no_pmi": ("no", "no", "no"),
    "pmi": ("yes", "no", "no"),
    "pmi_vtli": ("yes", "yes", "no"),
    "pmi_vtli_l2": ("yes", "yes", "yes"),
}


def ablation_table(metrics_by_variant: dict[str, dict]) -> str:
    """Return a Markdown table with one row per variant: switches, recall@1 per IoU, mIoU."""
    first = next(iter(metrics_by_variant.values()))
    thresholds = list(first["recall_at_1"])
    header = ["variant", "PMI", "VTLI", "l2-norm"] + [f"R@1 IoU={key}" for key in thresholds] + ["mIoU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, metrics in metrics_by_variant.items():
        switches = VARIANT_LABELS.get(variant, ("?", "?", "?"))
        values = [f"{metrics['recall_at_1'][key]:.2f}" for key in thresholds] + [f"{metrics['miou']:.2f}"]
        lines.append("| " + " | ".join([variant, *switches, *values]) + " |")

    random = first["random_baseline"]
    values = [f"{random['recall_at_1'][key]:.2f}" for key in thresholds] + [f"{random['miou']:.2f}"]
    lines.append("| " + " | ".join(["random segments", "", "", "", *values]) + " |")
    return "\n".join(lines) + "\n"


def write_ablation_table(metrics_paths: Sequence[Path], variants: Sequence[str], output: Path) -> None:
    """Read each variant's metrics.json and write the Markdown table to `output`."""
    if len(metrics_paths) != len(variants):
        raise ValueError(f"{len(metrics_paths)} metrics files for {len(variants)} variants")
    metrics = {
        variant: json.loads(Path(path).read_text(encoding="utf-8"))
        for variant, path in zip(variants, metrics_paths)
    }
    first = next(iter(metrics.values()))
    protocol = first.get("protocol", {})
    text = (
        f"# Localizer ablation on {protocol.get('dataset', 'the dataset')}\n\n"
        f"Recall@1 (%) at each IoU threshold and mIoU (%) on "
        f"{first.get('queries_total', '?')} test queries; all variants use the same features.\n\n"
        + ablation_table(metrics)
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    logger.info("wrote %s", output)
