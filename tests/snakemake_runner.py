"""Test helpers: a real snakemake run on the repository's Snakefile, and its dry-run job counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def load_config() -> dict:
    """Return the repository's config.yaml as a fresh dict the caller may change."""
    with (REPOSITORY / "config.yaml").open() as handle:
        return yaml.safe_load(handle)


def run_snakemake(
    workdir: Path,
    config: dict,
    *arguments: str,
    cores: int = 1,
    timeout_s: int = 300,
    environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Write `config` to `workdir`/config.yaml and run snakemake there with `arguments`.

    environment: variables added to this process's environment for the run.
    """
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        str(SNAKEMAKE),
        "--snakefile", str(REPOSITORY / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config_path),
        "--cores", str(cores),
        *arguments,
    ]  # fmt: skip
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(environment or {})},
    )


def planned_jobs(stdout: str) -> dict[str, int]:
    """Parse the job counts table of a dry run's output: rule name -> number of jobs."""
    counts = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) not in ("total", "count"):
            counts[match.group(1)] = int(match.group(2))
    return counts
