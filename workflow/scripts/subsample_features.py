"""Align one extractor's features to N equal time steps per video."""

from pathlib import Path

from _setup import start_job

from extractors.subsample import subsample_artifact

start_job(snakemake)
subsample_artifact(
    Path(snakemake.input[0]),
    Path(snakemake.output[0]),
    steps=snakemake.params.steps,
    dtype=snakemake.params.feature_dtype,
)
