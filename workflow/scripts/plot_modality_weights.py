"""Plot the mean weight of each modality pair and one query's weights over time."""

from pathlib import Path

from _setup import start_job

from eval.plots import plot_modality_weights

start_job(snakemake)
plot_modality_weights(Path(snakemake.input.predictions), Path(snakemake.output[0]))
