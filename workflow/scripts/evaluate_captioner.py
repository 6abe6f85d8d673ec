"""Score test captions with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr."""

from pathlib import Path

from _setup import start_job

from models.caption_data import CaptionDataSpec, write_caption_metrics

start_job(snakemake)
write_caption_metrics(
    CaptionDataSpec.from_config(
        snakemake.wildcards.dataset,
        snakemake.config["datasets"][snakemake.wildcards.dataset],
        list(snakemake.input.features),
    ),
    predictions_path=Path(snakemake.input.predictions),
    metrics_path=Path(snakemake.output[0]),
    index_path=Path(snakemake.input.index),
    seed=snakemake.params.seed,
)
