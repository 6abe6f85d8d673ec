"""Join the shard artifacts of one extractor into one artifact per dataset."""

from pathlib import Path

from _setup import start_job

from extractors.artifacts import merge_shards

start_job(snakemake)
merge_shards(
    [Path(path) for path in snakemake.input.shards],
    [Path(path) for path in snakemake.input.failed],
    Path(snakemake.output.features),
    Path(snakemake.output.failed),
)
