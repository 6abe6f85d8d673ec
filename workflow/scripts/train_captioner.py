"""Train PMI-CAP on a captioning dataset."""

from pathlib import Path

from _setup import start_job

from models.caption_config import CaptionerConfig
from models.caption_data import CaptionDataSpec
from models.train_captioner import train_captioner

device = start_job(snakemake, seed=snakemake.params.seed, uses_device=True)
train_captioner(
    CaptionDataSpec.from_config(
        snakemake.wildcards.dataset,
        snakemake.config["datasets"][snakemake.wildcards.dataset],
        list(snakemake.input.features),
    ),
    CaptionerConfig.from_dict(
        snakemake.params.model, source=f"config.yaml captioner (dataset {snakemake.wildcards.dataset})"
    ),
    model_path=Path(snakemake.output.model),
    history_path=Path(snakemake.output.history),
    device=device,
    seed=snakemake.params.seed,
)
