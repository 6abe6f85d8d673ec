"""Cut the GloVe vectors down to the training vocabulary and cache them in HDF5."""

from pathlib import Path

from _setup import start_job

from models.localization_data import LocalizationDataSpec, build_glove_table

start_job(snakemake)
build_glove_table(
    LocalizationDataSpec.from_dict(snakemake.params.data),
    glove_path=Path(snakemake.input.glove),
    embedding_dim=snakemake.params.embedding_dim,
    output=Path(snakemake.output[0]),
)
