# Align every modality of a video to the same grid of N equal time steps.


rule subsample_features:
    input:
        "features/{dataset}/{extractor}.h5",
    output:
        "features/{dataset}/{extractor}_n{steps}.h5",
    params:
        steps=lambda wildcards: int(wildcards.steps),
        feature_dtype=config["feature_dtype"],
    log:
        "logs/subsample_features/{dataset}_{extractor}_n{steps}.log",
    benchmark:
        "benchmarks/runs/subsample_features/{dataset}_{extractor}_n{steps}.tsv"
    wildcard_constraints:
        extractor=wildcard_choice(EXTRACTOR_RULES),
        steps=r"\d+",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/extract.yaml"
    script:
        "../scripts/subsample_features.py"
