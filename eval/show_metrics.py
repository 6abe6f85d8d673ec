"""Print a localization metrics.json as a table beside the random baseline, with coverage.

Usage: python -m eval.show_metrics results/demo/metrics.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eval.localization import format_metrics_table


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m eval.show_metrics METRICS_JSON\n")
        return 2
    path = Path(argv[0])
    metrics = json.loads(path.read_text(encoding="utf-8"))
    sys.stdout.write(f"{path}\n{format_metrics_table(metrics)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
