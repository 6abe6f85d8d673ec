"""Train PMI-LOC on a localization dataset."""

from pathlib import Path

from _setup import start_job

from models.config import LocalizerConfig
from models.localization_data import LocalizationDataSpec
from models.train_localizer import train_localizer

device = start_job(snakemake, seed=snakemake.params.seed, uses_device=True)
train_localizer(
    LocalizationDataSpec.from_dict(snakemake.params.data),
    LocalizerConfig.from_dict(snakemake.params.model),
    model_path=Path(snakemake.output.model),
    history_path=Path(snakemake.output.history),
    glove_table=Path(snakemake.input.glove) if "glove" in snakemake.input.keys() else None,
    device=device,
    seed=snakemake.params.seed,
)
