# PMI-LOC: train on a localization dataset, predict test spans, score them, and run the
# localizer ablation (PMI, VTLI and l2-norm switched on one by one).


rule build_glove_table:
    input:
        glove=lambda wildcards: localizer_settings(wildcards.dataset)["glove_path"],
        annotations=lambda wildcards: dataset_inputs(wildcards.dataset),
    output:
        "features/{dataset}/glove.h5",
    params:
        data=localizer_params,
        embedding_dim=lambda wildcards: localizer_settings(wildcards.dataset)["embedding_dim"],
    log:
        "logs/build_glove_table/{dataset}.log",
    benchmark:
        "benchmarks/runs/build_glove_table/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(LOCALIZATION_DATASETS),
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/build_glove_table.py"


# The main model writes to results/{dataset}/; each ablation variant to its own folder.
for suffix, folder, variant_of in [
    ("", "results/{dataset}", lambda wildcards: None),
    ("_variant", "results/{dataset}/ablation/{variant}", lambda wildcards: wildcards.variant),
]:

    rule:
        name:
            f"train_localizer{suffix}"
        input:
            unpack(localizer_inputs),
        output:
            model=f"{folder}/model.pt",
            history=f"{folder}/training_history.json",
        params:
            data=localizer_params,
            model=lambda wildcards, variant_of=variant_of: localizer_settings(
                wildcards.dataset, variant_of(wildcards)
            ),
            seed=config["seed"],
        log:
            f"logs/train_localizer{suffix}/{{dataset}}"
            + ("_{variant}" if suffix else "")
            + ".log",
        benchmark:
            f"benchmarks/runs/train_localizer{suffix}/{{dataset}}"
            + ("_{variant}" if suffix else "")
            + ".tsv"
        wildcard_constraints:
            dataset=wildcard_choice(LOCALIZATION_DATASETS),
            variant=wildcard_choice(LOCALIZATION_VARIANTS),
        threads: 2
        resources:
            mem_mb=8000,
            gpu=gpu_request(True),
        conda:
            "../../envs/train.yaml"
        script:
            "../scripts/train_localizer.py"

    rule:
        name:
            f"predict_localizer{suffix}"
        input:
            unpack(localizer_inputs),
            model=f"{folder}/model.pt",
        output:
            f"{folder}/predictions.json",
        params:
            data=localizer_params,
        log:
            f"logs/predict_localizer{suffix}/{{dataset}}"
            + ("_{variant}" if suffix else "")
            + ".log",
        benchmark:
            f"benchmarks/runs/predict_localizer{suffix}/{{dataset}}"
            + ("_{variant}" if suffix else "")
            + ".tsv"
        wildcard_constraints:
            dataset=wildcard_choice(LOCALIZATION_DATASETS),
            variant=wildcard_choice(LOCALIZATION_VARIANTS),
        threads: 2
        resources:
            mem_mb=8000,
            gpu=gpu_request(True),
        conda:
            "../../envs/train.yaml"
        script:
            "../scripts/predict_localizer.py"

    rule:
        name:
            f"evaluate_localizer{suffix}"
        input:
            predictions=f"{folder}/predictions.json",
            index="features/{dataset}/videos.tsv",
            features=lambda wildcards: list(subsampled_features(wildcards.dataset).values()),
            annotations=lambda wildcards: dataset_inputs(wildcards.dataset),
        output:
            f"{folder}/metrics.json",
        params:
            data=localizer_params,
            evaluation=config["evaluation"],
            seed=config["seed"],
        log:
            f"logs/evaluate_localizer{suffix}/{{dataset}}"
            + ("_{variant}" if suffix else "")
            + ".log",
        benchmark:
            f"benchmarks/runs/evaluate_localizer{suffix}/{{dataset}}"
            + ("_{variant}" if suffix else "")
            + ".tsv"
        wildcard_constraints:
            dataset=wildcard_choice(LOCALIZATION_DATASETS),
            variant=wildcard_choice(LOCALIZATION_VARIANTS),
        threads: 1
        resources:
            mem_mb=2000,
        conda:
            "../../envs/evaluate.yaml"
        script:
            "../scripts/evaluate_localizer.py"


rule plot_modality_weights:
    input:
        predictions="results/{dataset}/predictions.json",
    output:
        "results/{dataset}/modality_weights.png",
    log:
        "logs/plot_modality_weights/{dataset}.log",
    benchmark:
        "benchmarks/runs/plot_modality_weights/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(LOCALIZATION_DATASETS),
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/evaluate.yaml"
    script:
        "../scripts/plot_modality_weights.py"


rule tabulate_ablation:
    input:
        metrics=lambda wildcards: expand(
            "results/{dataset}/ablation/{variant}/metrics.json",
            dataset=wildcards.dataset,
            variant=LOCALIZATION_VARIANTS,
        ),
    output:
        "results/{dataset}/ablation.md",
    params:
        variants=LOCALIZATION_VARIANTS,
    log:
        "logs/tabulate_ablation/{dataset}.log",
    benchmark:
        "benchmarks/runs/tabulate_ablation/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(LOCALIZATION_DATASETS),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/evaluate.yaml"
    script:
        "../scripts/tabulate_ablation.py"
