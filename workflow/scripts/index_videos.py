"""List the dataset's videos, where each file is, and its shard."""

from pathlib import Path

from _setup import start_job

from extractors.video_index import find_videos, write_video_index

start_job(snakemake)
found, missing = find_videos(
    Path(snakemake.params.folder), snakemake.params.video_ids, snakemake.params.extensions
)
write_video_index(Path(snakemake.output[0]), found, missing, snakemake.params.shard_size)
