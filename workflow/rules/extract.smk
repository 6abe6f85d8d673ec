# Feature extraction per shard of videos, one rule per extractor, then one artifact per
# dataset and extractor.


for extractor_name, (uses_gpu, memory_mb) in EXTRACTOR_RULES.items():

    rule:
        name:
            f"extract_{extractor_name}"
        input:
            decoded="features/{dataset}/decoded/shard{shard}.h5",
            decode_failed="features/{dataset}/decoded/shard{shard}.failed.tsv",
        output:
            features=f"features/{{dataset}}/{extractor_name}/shard{{shard}}.h5",
            failed=f"features/{{dataset}}/{extractor_name}/shard{{shard}}.failed.tsv",
        params:
            extractor=extractor_name,
            settings=lambda wildcards, name=extractor_name: extractor_settings(
                wildcards.dataset, name
            ),
            frame_chunk=config["decode"]["frame_chunk"],
            feature_dtype=config["feature_dtype"],
            on_bad_video=config["on_bad_video"],
        log:
            f"logs/extract_{extractor_name}/{{dataset}}_shard{{shard}}.log",
        benchmark:
            f"benchmarks/runs/extract_{extractor_name}/{{dataset}}_shard{{shard}}.tsv"
        wildcard_constraints:
            shard=r"\d+",
        threads: 2
        resources:
            mem_mb=memory_mb,
            gpu=gpu_request(uses_gpu),
        conda:
            "../../envs/extract.yaml"
        script:
            "../scripts/extract_features.py"


rule merge_features:
    input:
        shards=lambda wildcards: expand(
            "features/{dataset}/{extractor}/shard{shard}.h5",
            dataset=wildcards.dataset,
            extractor=wildcards.extractor,
            shard=range(shard_count(wildcards.dataset)),
        ),
        failed=lambda wildcards: expand(
            "features/{dataset}/{extractor}/shard{shard}.failed.tsv",
            dataset=wildcards.dataset,
            extractor=wildcards.extractor,
            shard=range(shard_count(wildcards.dataset)),
        ),
    output:
        features="features/{dataset}/{extractor}.h5",
        failed="features/{dataset}/{extractor}.failed.tsv",
    log:
        "logs/merge_features/{dataset}_{extractor}.log",
    benchmark:
        "benchmarks/runs/merge_features/{dataset}_{extractor}.tsv"
    wildcard_constraints:
        extractor=wildcard_choice(EXTRACTOR_RULES),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/extract.yaml"
    script:
        "../scripts/merge_features.py"
