"""Predict the span of every test query with a trained PMI-LOC model."""

from pathlib import Path

from _setup import start_job

from models.localization_data import LocalizationDataSpec
from models.train_localizer import predict_localizer

device = start_job(snakemake, uses_device=True)
predict_localizer(
    LocalizationDataSpec.from_dict(snakemake.params.data),
    model_path=Path(snakemake.input.model),
    predictions_path=Path(snakemake.output[0]),
    device=device,
)
