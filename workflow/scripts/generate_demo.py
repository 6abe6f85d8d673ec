"""Write the offline demo dataset (videos, queries, durations, captions)."""

from pathlib import Path

from _setup import start_job

from eval.demo import DemoSettings, generate_demo_dataset

start_job(snakemake, seed=snakemake.params.seed)
generate_demo_dataset(
    DemoSettings.from_dict(snakemake.params.generator),
    seed=snakemake.params.seed,
    output_dir=Path(snakemake.output.train).parent,
)
