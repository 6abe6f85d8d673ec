"""Caption every test video with a trained PMI-CAP model."""

from pathlib import Path

from _setup import start_job

from models.caption_data import CaptionDataSpec
from models.train_captioner import predict_captioner

device = start_job(snakemake, uses_device=True)
predict_captioner(
    CaptionDataSpec.from_config(
        snakemake.wildcards.dataset,
        snakemake.config["datasets"][snakemake.wildcards.dataset],
        list(snakemake.input.features),
    ),
    model_path=Path(snakemake.input.model),
    predictions_path=Path(snakemake.output[0]),
    device=device,
)
