# Configuration validation and the input functions shared by every rule file.

import copy
import functools
import math
import sys
from pathlib import Path

import jsonschema
import yaml

from eval.demo import video_id as demo_video_id
from extractors.dataset_videos import annotation_video_ids


SCHEMA_PATH = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
EXTRACTOR_RULES = {
    # extractor: (can use a GPU, memory in MB per job)
    "irv2": (True, 6000),
    "c3d": (True, 8000),
    "soundnet": (True, 6000),
    "mfcc": (False, 2000),
}
LOCALIZATION_VARIANTS = {
    # Table 2 of the paper: localizer components switched on one by one.
    "no_pmi": {"interaction": "none", "vtli": False, "l2_norm": False},
    "pmi": {"interaction": "pairwise", "vtli": False, "l2_norm": False},
    "pmi_vtli": {"interaction": "pairwise", "vtli": True, "l2_norm": False},
    "pmi_vtli_l2": {"interaction": "pairwise", "vtli": True, "l2_norm": True},
}


def _describe_error(error):
    """Name the config key of a schema violation and what the schema expected there."""
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"config key '{key}': unknown key(s) {unknown}; allowed keys: {allowed}"
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    if error.validator == "type":
        expected = error.validator_value
        return f"config key '{key}': expected type {expected}, got {error.instance!r}"
    if error.validator == "enum":
        return f"config key '{key}': expected one of {error.validator_value}, got {error.instance!r}"
    return f"config key '{key}': {error.message}"


def validate_config(config_dict):
    """Exit with one line per violation when the config does not match the schema."""
    with SCHEMA_PATH.open() as handle:
        schema = yaml.safe_load(handle)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config_dict), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(_describe_error(error) for error in errors)
        sys.exit(f"Invalid configuration ({len(errors)} problem(s)):\n{lines}")


validate_config(config)


def dataset_config(dataset):
    return config["datasets"][dataset]


def datasets_of_task(task):
    return sorted(name for name, entry in config["datasets"].items() if entry["task"] == task)


def wildcard_choice(names):
    """A wildcard regex that matches exactly the given names (none matches nothing)."""
    return "|".join(names) if names else "(?!x)x"


def generating_dataset(dataset):
    """The dataset whose `generator` writes this dataset's files, or None if downloaded."""
    entry = dataset_config(dataset)
    if "generator" in entry:
        return dataset
    return entry.get("generated_by")


def is_generated(dataset):
    return generating_dataset(dataset) is not None


def dataset_extractors(dataset):
    entry = dataset_config(dataset)
    return list(entry["modalities"]) + [
        name for name in entry.get("extra_extractors", []) if name not in entry["modalities"]
    ]


def extractor_settings(dataset, extractor):
    """Global defaults of an extractor with the dataset's overrides applied."""
    settings = copy.deepcopy(config["extractors"][extractor])
    settings.update(dataset_config(dataset).get("features", {}).get(extractor, {}))
    return settings


def localizer_settings(dataset, variant=None):
    settings = copy.deepcopy(config["localizer"])
    settings.update(dataset_config(dataset).get("localizer", {}))
    if variant is not None:
        settings.update(LOCALIZATION_VARIANTS[variant])
    return settings


def annotation_paths(dataset):
    return {split: Path(path) for split, path in dataset_config(dataset)["annotations"].items()}


def duration_paths(dataset):
    durations = dataset_config(dataset)["durations"]
    if durations is None:
        return {}
    if isinstance(durations, str):
        return {"all": Path(durations)}
    return {split: Path(path) for split, path in durations.items()}


def _exit_dataset_missing(dataset, key, looked_in, what):
    entry = dataset_config(dataset)
    sys.exit(
        f"Dataset '{dataset}': {what} not found at {looked_in}. Set config key "
        f"'datasets.{dataset}.{key}' to where you keep it. Source of the dataset: "
        f"{entry['source']}"
    )


def check_dataset_present(dataset):
    """Exit with one message when a downloaded dataset's videos or annotations are missing."""
    if is_generated(dataset):
        return
    entry = dataset_config(dataset)
    videos = Path(entry["videos"])
    if not videos.is_dir():
        _exit_dataset_missing(dataset, "videos", videos.resolve(), "the video folder")
    for split, path in annotation_paths(dataset).items():
        if not path.is_file():
            _exit_dataset_missing(
                dataset, f"annotations.{split}", path.resolve(), f"the {split} annotation file"
            )
    for split, path in duration_paths(dataset).items():
        if not path.is_file():
            _exit_dataset_missing(dataset, "durations", path.resolve(), "the durations file")


def generated_video_ids(dataset):
    count = dataset_config(generating_dataset(dataset))["generator"]["videos"]
    return [demo_video_id(index) for index in range(count)]


@functools.cache
def dataset_video_ids(dataset):
    """Sorted ids of every video the dataset's annotations name."""
    if is_generated(dataset):
        return generated_video_ids(dataset)
    check_dataset_present(dataset)
    entry = dataset_config(dataset)
    try:
        return annotation_video_ids(entry["format"], annotation_paths(dataset))
    except (ValueError, KeyError, UnicodeDecodeError) as error:
        sys.exit(f"Dataset '{dataset}': invalid annotation file: {error}")


def shard_count(dataset):
    return max(1, math.ceil(len(dataset_video_ids(dataset)) / dataset_config(dataset)["shard_size"]))


@functools.cache
def _video_files(dataset):
    """Map video id to file for the videos present (or to be generated) in the dataset folder."""
    entry = dataset_config(dataset)
    folder = Path(entry["videos"])
    if is_generated(dataset):
        return {video_id: folder / f"{video_id}.mp4" for video_id in dataset_video_ids(dataset)}

    extensions = entry["video_extensions"]
    wanted = set(dataset_video_ids(dataset))
    found = {}
    for name in sorted(path.name for path in folder.iterdir()):
        stem, suffix = Path(name).stem, Path(name).suffix
        if stem in wanted and suffix in extensions and stem not in found:
            found[stem] = folder / name
    return found


def shard_video_files(dataset, shard):
    """Video files of one shard: shard k holds the sorted ids [k * size, (k + 1) * size)."""
    size = dataset_config(dataset)["shard_size"]
    ids = dataset_video_ids(dataset)[int(shard) * size : (int(shard) + 1) * size]
    files = _video_files(dataset)
    return [str(files[video_id]) for video_id in ids if video_id in files]


def dataset_inputs(dataset):
    """Annotation and duration files a dataset reads, generated first for the demo."""
    paths = [str(path) for path in annotation_paths(dataset).values()]
    paths += [str(path) for path in duration_paths(dataset).values()]
    return paths


def subsampled_features(dataset):
    steps = dataset_config(dataset)["steps"]
    return {
        name: f"features/{dataset}/{name}_n{steps}.h5"
        for name in dataset_config(dataset)["modalities"]
    }


def videos_source(wildcards):
    """The video folder of a generated dataset (made by generate_demo), else nothing."""
    if is_generated(wildcards.dataset):
        return [dataset_config(generating_dataset(wildcards.dataset))["videos"]]
    return []


def gpu_request(can_use_gpu):
    """GPUs a job asks for: one for network extractors unless config pins the CPU."""
    return 1 if can_use_gpu and config["device"] != "cpu" else 0


def localizer_inputs(wildcards):
    inputs = {
        "features": list(subsampled_features(wildcards.dataset).values()),
        "index": f"features/{wildcards.dataset}/videos.tsv",
        "annotations": dataset_inputs(wildcards.dataset),
    }
    if localizer_settings(wildcards.dataset)["embedding"] == "glove":
        inputs["glove"] = f"features/{wildcards.dataset}/glove.h5"
    return inputs


def localizer_params(wildcards):
    entry = dataset_config(wildcards.dataset)
    return {
        "dataset": wildcards.dataset,
        "format": entry["format"],
        "annotations": {split: str(path) for split, path in annotation_paths(wildcards.dataset).items()},
        "durations": {split: str(path) for split, path in duration_paths(wildcards.dataset).items()},
        "evaluation_split": entry.get("evaluation_split", "merged"),
        "modalities": list(entry["modalities"]),
        "features": subsampled_features(wildcards.dataset),
        "steps": entry["steps"],
    }


LOCALIZATION_DATASETS = datasets_of_task("localization")
