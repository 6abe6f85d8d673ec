"""Tabulate the metrics of the localizer ablation variants as Markdown."""

from pathlib import Path

from _setup import start_job

from eval.ablation import write_ablation_table

start_job(snakemake)
write_ablation_table(
    [Path(path) for path in snakemake.input.metrics],
    list(snakemake.params.variants),
    Path(snakemake.output[0]),
)
