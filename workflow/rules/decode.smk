# Probe every video, decode its audio, and record both per shard of videos.


# The index depends on the annotations only through the set of video ids, a param, so
# editing a sentence or a span does not index, decode and extract again.
rule index_videos:
    input:
        videos=videos_source,
    output:
        "features/{dataset}/videos.tsv",
    params:
        video_ids=lambda wildcards: dataset_video_ids(wildcards.dataset),
        folder=lambda wildcards: dataset_config(wildcards.dataset)["videos"],
        extensions=lambda wildcards: dataset_config(wildcards.dataset)["video_extensions"],
        shard_size=lambda wildcards: dataset_config(wildcards.dataset)["shard_size"],
    log:
        "logs/index_videos/{dataset}.log",
    benchmark:
        "benchmarks/runs/index_videos/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/extract.yaml"
    script:
        "../scripts/index_videos.py"


rule decode_videos:
    input:
        index="features/{dataset}/videos.tsv",
        videos=lambda wildcards: videos_source(wildcards)
        or shard_video_files(wildcards.dataset, wildcards.shard),
    output:
        decoded="features/{dataset}/decoded/shard{shard}.h5",
        failed="features/{dataset}/decoded/shard{shard}.failed.tsv",
    params:
        sample_rate=config["decode"]["audio_sample_rate"],
        video_stream=config["decode"]["video_stream"],
        audio_stream=config["decode"]["audio_stream"],
        on_bad_video=config["on_bad_video"],
    log:
        "logs/decode_videos/{dataset}_shard{shard}.log",
    benchmark:
        "benchmarks/runs/decode_videos/{dataset}_shard{shard}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/extract.yaml"
    script:
        "../scripts/decode_videos.py"
