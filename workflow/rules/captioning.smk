# PMI-CAP: train on a captioning dataset, caption its test videos and score the captions
# with pycocoevalcap. The scripts build the dataset spec from the dataset's config entry and
# the feature inputs (in modality order); params repeat the settings that change results, so
# that editing them reruns the jobs.


CAPTIONING_DATASETS = datasets_of_task("captioning")


rule train_captioner:
    input:
        features=lambda wildcards: list(subsampled_features(wildcards.dataset).values()),
        annotations=lambda wildcards: dataset_inputs(wildcards.dataset),
    output:
        model="results/{dataset}/model.pt",
        history="results/{dataset}/training_history.json",
    params:
        split_sizes=lambda wildcards: dataset_config(wildcards.dataset).get("split_sizes"),
        model=lambda wildcards: {
            **config["captioner"],
            **dataset_config(wildcards.dataset).get("captioner", {}),
        },
        seed=config["seed"],
    log:
        "logs/train_captioner/{dataset}.log",
    benchmark:
        "benchmarks/runs/train_captioner/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(CAPTIONING_DATASETS),
    threads: 2
    resources:
        mem_mb=8000,
        gpu=gpu_request(True),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train_captioner.py"


rule predict_captioner:
    input:
        features=lambda wildcards: list(subsampled_features(wildcards.dataset).values()),
        annotations=lambda wildcards: dataset_inputs(wildcards.dataset),
        model="results/{dataset}/model.pt",
    output:
        "results/{dataset}/predictions.json",
    params:
        split_sizes=lambda wildcards: dataset_config(wildcards.dataset).get("split_sizes"),
    log:
        "logs/predict_captioner/{dataset}.log",
    benchmark:
        "benchmarks/runs/predict_captioner/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(CAPTIONING_DATASETS),
    threads: 2
    resources:
        mem_mb=8000,
        gpu=gpu_request(True),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/predict_captioner.py"


rule evaluate_captioner:
    input:
        features=lambda wildcards: list(subsampled_features(wildcards.dataset).values()),
        annotations=lambda wildcards: dataset_inputs(wildcards.dataset),
        predictions="results/{dataset}/predictions.json",
        index="features/{dataset}/videos.tsv",
    output:
        "results/{dataset}/metrics.json",
    params:
        split_sizes=lambda wildcards: dataset_config(wildcards.dataset).get("split_sizes"),
        seed=config["seed"],
    log:
        "logs/evaluate_captioner/{dataset}.log",
    benchmark:
        "benchmarks/runs/evaluate_captioner/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(CAPTIONING_DATASETS),
    threads: 1
    resources:
        # METEOR starts a Java process with a 2 GB heap (-Xmx2G in pycocoevalcap).
        mem_mb=4000,
    conda:
        "../../envs/evaluate.yaml"
    script:
        "../scripts/evaluate_captioner.py"
