# The embedded offline demo dataset: synthetic videos with sound, queries and captions.
# A dataset entry with a `generator` block is produced here instead of being downloaded.


rule generate_demo:
    output:
        videos=directory("data/{dataset}/videos"),
        train="data/{dataset}/charades_sta_train.txt",
        test="data/{dataset}/charades_sta_test.txt",
        durations="data/{dataset}/durations.csv",
        captions="data/{dataset}/captions.csv",
        mapping="data/{dataset}/youtube_mapping.txt",
        events="data/{dataset}/events.json",
    params:
        generator=lambda wildcards: dataset_config(wildcards.dataset)["generator"],
        seed=config["seed"],
    log:
        "logs/generate_demo/{dataset}.log",
    benchmark:
        "benchmarks/runs/generate_demo/{dataset}.tsv"
    wildcard_constraints:
        dataset=wildcard_choice(
            [name for name in config["datasets"] if generating_dataset(name) == name]
        ),
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../envs/extract.yaml"
    script:
        "../scripts/generate_demo.py"
