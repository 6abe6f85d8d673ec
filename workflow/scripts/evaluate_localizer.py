"""Score test predictions: recall@1 at each IoU, mIoU and the random baseline."""

from pathlib import Path

from _setup import start_job

from models.localization_data import LocalizationDataSpec, write_localization_metrics

start_job(snakemake)
write_localization_metrics(
    LocalizationDataSpec.from_dict(snakemake.params.data),
    predictions_path=Path(snakemake.input.predictions),
    index_path=Path(snakemake.input.index),
    metrics_path=Path(snakemake.output[0]),
    evaluation=snakemake.params.evaluation,
    seed=snakemake.params.seed,
)
