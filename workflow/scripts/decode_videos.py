"""Probe and decode the audio of one shard of videos."""

from pathlib import Path

from _setup import start_job

from extractors.runner import decode_shard

start_job(snakemake)
decode_shard(
    Path(snakemake.input.index),
    int(snakemake.wildcards.shard),
    Path(snakemake.output.decoded),
    Path(snakemake.output.failed),
    sample_rate=snakemake.params.sample_rate,
    video_stream=snakemake.params.video_stream,
    audio_stream=snakemake.params.audio_stream,
    on_bad_video=snakemake.params.on_bad_video,
)
