"""Run one feature extractor on one shard of decoded videos."""

from pathlib import Path

from _setup import start_job

from extractors.runner import extract_shard

device = start_job(snakemake, seed=snakemake.config["seed"], uses_device=True)
extract_shard(
    snakemake.params.extractor,
    snakemake.params.settings,
    Path(snakemake.input.decoded),
    Path(snakemake.output.features),
    Path(snakemake.output.failed),
    decode_failed=Path(snakemake.input.decode_failed),
    device=device,
    frame_chunk=snakemake.params.frame_chunk,
    on_bad_video=snakemake.params.on_bad_video,
    feature_dtype=snakemake.params.feature_dtype,
)
