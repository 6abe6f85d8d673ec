"""The Slurm profiles: resource requests in dry runs, and real runs on a one-node cluster.

The cluster tests start munged, slurmctld and slurmd on this machine (tests/slurm_cluster.py)
and skip when not run as root or when the Debian packages slurm-wlm and munge are missing.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from slurm_cluster import (
    ClusterSettings,
    NodeHardware,
    SlurmCluster,
    missing_requirements,
    render_slurm_conf,
)

REPOSITORY = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SLURM_PROFILE = REPOSITORY / "workflow" / "profiles" / "slurm"
TEST_PROFILE = REPOSITORY / "workflow" / "profiles" / "slurm-test"
# Rules whose jobs run a network and ask Slurm for one GPU.
GPU_RULES = {
    "extract_irv2",
    "extract_c3d",
    "extract_soundnet",
    "train_localizer",
    "train_localizer_variant",
    "predict_localizer",
    "predict_localizer_variant",
    "train_captioner",
    "predict_captioner",
}
DRY_RUN_TARGETS = [
    "results/demo/metrics.json",
    "results/demo/ablation.md",
    "results/demo/modality_weights.png",
    "features/demo/mfcc.h5",
    "results/demo_captions/metrics.json",
]
CLUSTER_TARGETS = ["features/demo/mfcc_n32.h5", "features/demo/soundnet_n32.h5"]
# The cluster run took 3.5 min on a 2-core machine at load average 9 (other work running).
CLUSTER_RUN_TIMEOUT_S = 480


def load_config() -> dict:
    with (REPOSITORY / "config.yaml").open() as handle:
        return yaml.safe_load(handle)


def small_demo_config() -> dict:
    """The demo config cut to 4 videos of 6 s in shards of 2, on the CPU."""
    config = load_config()
    config["device"] = "cpu"
    demo = config["datasets"]["demo"]
    demo["shard_size"] = 2
    # Two events of at least 3 s each need 6 s of video.
    demo["generator"].update(videos=4, seconds=6.0, events_per_video=2)
    return config


class SnakemakeRun:
    """One snakemake process on the repository's Snakefile, started in the background.

    Output (stdout and stderr) goes to `<workdir>.out` beside the working directory, so
    several runs can go on at once without filling a pipe.
    """

    def __init__(self, workdir: Path, config: dict, targets: list[str], *options: str) -> None:
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        # Targets come first: options such as --configfile and --set-threads take every
        # value that follows them.
        self.command = [
            str(SNAKEMAKE),
            *targets,
            "--snakefile",
            str(REPOSITORY / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(config_path),
            *options,
        ]
        self.output_path = workdir.with_name(workdir.name + ".out")
        with self.output_path.open("w") as output:
            self.process = subprocess.Popen(
                self.command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT, text=True
            )

    def wait(self, timeout_s: float) -> subprocess.CompletedProcess:
        """Wait for the run to end; on timeout stop snakemake and fail the test.

        Snakemake gets SIGINT, which makes the Slurm executor cancel its jobs and exit. It
        ignores SIGTERM while it waits on job states.
        """
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            output = self.output_path.read_text()
            pytest.fail(f"snakemake ran past {timeout_s:.0f} s: {' '.join(self.command)}\n{output[-6000:]}")
        return subprocess.CompletedProcess(
            self.command, self.process.returncode, self.output_path.read_text(), ""
        )

    def stop(self) -> None:
        """Interrupt snakemake if it still runs (SIGINT), and kill it after 60 s."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_snakemake(
    workdir: Path, config: dict, targets: list[str], *options: str, timeout_s: float = 300
) -> subprocess.CompletedProcess:
    """Build `targets` in `workdir` with `config` and wait; stdout and stderr merged."""
    return SnakemakeRun(workdir, config, targets, *options).wait(timeout_s)


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """Return (rule, resources) of every job that a dry run prints."""
    jobs = []
    rule = None
    for line in output.splitlines():
        header = re.match(r"^(?:local)?rule (\w+):$", line)
        if header:
            rule = header.group(1)
            continue
        stripped = line.strip()
        if rule is not None and stripped.startswith("resources:"):
            pairs = stripped.removeprefix("resources:").split(",")
            resources = dict(pair.strip().split("=", 1) for pair in pairs)
            jobs.append((rule, resources))
            rule = None
    return jobs


def profile_value(expression: str | int, attempt: int = 1) -> int:
    """Evaluate a profile resource such as `2000 * attempt` for one attempt."""
    if isinstance(expression, int):
        return expression
    return int(eval(expression, {"__builtins__": {}}, {"attempt": attempt}))


# Dry runs with the cluster profile: no cluster needed.


@pytest.fixture(scope="module")
def slurm_profile() -> dict:
    with (SLURM_PROFILE / "config.yaml").open() as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def dry_run_auto(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("dry_auto")
    result = run_snakemake(
        workdir, load_config(), DRY_RUN_TARGETS, "--workflow-profile", str(SLURM_PROFILE), "-n"
    )
    assert result.returncode == 0, result.stdout
    return dry_run_jobs(result.stdout)


def test_profile_gpu_rules_request_gpu(dry_run_auto: list) -> None:
    gpu_jobs = {rule for rule, resources in dry_run_auto if rule in GPU_RULES}
    assert gpu_jobs >= {"extract_irv2", "extract_c3d", "extract_soundnet", "train_localizer"}
    for rule, resources in dry_run_auto:
        if rule in GPU_RULES:
            assert resources.get("gpu") == "1", f"{rule}: {resources}"


def test_profile_cpu_rules_request_no_gpu(dry_run_auto: list) -> None:
    cpu_jobs = {rule for rule, _ in dry_run_auto if rule not in GPU_RULES}
    assert {"decode_videos", "extract_mfcc", "merge_features", "evaluate_localizer"} <= cpu_jobs
    for rule, resources in dry_run_auto:
        if rule not in GPU_RULES:
            assert resources.get("gpu", "0") == "0", f"{rule}: {resources}"


def test_profile_sizes_every_rule(dry_run_auto: list, slurm_profile: dict) -> None:
    per_rule = slurm_profile["set-resources"]
    unsized = sorted({rule for rule, _ in dry_run_auto} - set(per_rule))
    assert unsized == [], "rules without cluster sizes in the slurm profile"
    for rule, resources in dry_run_auto:
        assert int(resources["mem_mb"]) == profile_value(per_rule[rule]["mem_mb"]), f"{rule}: {resources}"
        assert int(resources["runtime"]) == profile_value(per_rule[rule]["runtime"]), f"{rule}: {resources}"
        assert "cpus_per_task" in resources, f"{rule}: {resources}"


def test_profile_sizes_grow_on_retry(slurm_profile: dict) -> None:
    assert slurm_profile["retries"] >= 1
    for rule, sizes in slurm_profile["set-resources"].items():
        for name in ("mem_mb", "runtime"):
            assert profile_value(sizes[name], 2) == 2 * profile_value(sizes[name], 1), rule


def test_profile_cpu_device_requests_no_gpu(tmp_path: Path) -> None:
    config = load_config()
    config["device"] = "cpu"

    result = run_snakemake(
        tmp_path, config, DRY_RUN_TARGETS, "--workflow-profile", str(SLURM_PROFILE), "-n"
    )

    assert result.returncode == 0, result.stdout
    jobs = dry_run_jobs(result.stdout)
    assert any(rule == "extract_irv2" for rule, _ in jobs)
    for rule, resources in jobs:
        assert resources.get("gpu", "0") == "0", f"{rule}: {resources}"


def test_profile_override_on_command_line(tmp_path: Path) -> None:
    result = run_snakemake(
        tmp_path,
        load_config(),
        ["features/demo/irv2.h5"],
        "--workflow-profile",
        str(SLURM_PROFILE),
        "--set-resources",
        "extract_irv2:runtime=999",
        "-n",
    )

    assert result.returncode == 0, result.stdout
    runtimes = {rule: resources["runtime"] for rule, resources in dry_run_jobs(result.stdout)}
    assert runtimes["extract_irv2"] == "999"


def test_profile_test_cluster_requests_no_gpu(tmp_path: Path) -> None:
    # The test profile must never ask the GPU-less test node for a GPU, even with device auto.
    result = run_snakemake(
        tmp_path, load_config(), DRY_RUN_TARGETS, "--workflow-profile", str(TEST_PROFILE), "-n"
    )

    assert result.returncode == 0, result.stdout
    jobs = dry_run_jobs(result.stdout)
    assert any(rule == "extract_c3d" for rule, _ in jobs)
    for rule, resources in jobs:
        assert resources.get("gpu", "0") == "0", f"{rule}: {resources}"


# The test cluster helper, without daemons.


def test_cluster_conf_binds_loopback(tmp_path: Path) -> None:
    hardware = NodeHardware(
        hostname="node1",
        fields={"CPUs": "2", "Boards": "1", "SocketsPerBoard": "1", "CoresPerSocket": "2", "ThreadsPerCore": "1", "RealMemory": "4000"},
    )
    settings = ClusterSettings(
        state_dir=tmp_path,
        hardware=hardware.with_cpus(4),
        slurmctld_port=7001,
        slurmd_port=7002,
        munge_socket=tmp_path / "munge.socket",
    )

    lines = render_slurm_conf(settings).splitlines()

    assert "SlurmctldHost=node1(127.0.0.1)" in lines
    assert "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny" in lines
    assert f"AuthInfo=socket={tmp_path / 'munge.socket'}" in lines
    assert "AccountingStorageType=accounting_storage/none" in lines
    node_line = next(line for line in lines if line.startswith("NodeName="))
    assert "NodeAddr=127.0.0.1" in node_line.split()
    assert "CPUs=4" in node_line.split()
    assert "CoresPerSocket=4" in node_line.split()
    assert "RealMemory=4000" in node_line.split()


def test_cluster_conf_backup_restored(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=site\n")
    slurm = SlurmCluster(tmp_path / "state", slurm_conf=conf)

    slurm._write_conf("ClusterName=test\n")
    written = conf.read_text()
    slurm._restore_conf()

    assert written == "ClusterName=test\n"
    assert conf.read_text() == "ClusterName=site\n"
    assert not slurm.backup_conf.exists()


def test_cluster_conf_removed_without_original(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    slurm = SlurmCluster(tmp_path / "state", slurm_conf=conf)

    slurm._write_conf("ClusterName=test\n")
    slurm._restore_conf()

    assert not conf.exists()


# Real runs on a one-node Slurm cluster.


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    # Four CPUs on a 2-core machine: the four extraction jobs run at once, which saves
    # one round of status polls (the plugin polls at 2, 14, 36... s after a job ends).
    slurm = SlurmCluster(cpus=4)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(slurm.state_dir, ignore_errors=True)


def profile_threads() -> list[str]:
    """The test profile's `set-threads` as command-line values, so a local run matches it."""
    with (TEST_PROFILE / "config.yaml").open() as handle:
        profile = yaml.safe_load(handle)
    return [f"{rule}={threads}" for rule, threads in profile["set-threads"].items()]


def copy_workdir(source: Path, destination: Path) -> None:
    """Copy a working directory with its Snakemake metadata and file times."""
    shutil.copytree(source, destination, symlinks=True)
    shutil.rmtree(destination / ".snakemake" / "locks", ignore_errors=True)
    shutil.rmtree(destination / ".snakemake" / "incomplete", ignore_errors=True)


@dataclass(frozen=True)
class ClusterRuns:
    """Working directories and results of the runs that the cluster tests inspect."""

    local: Path
    cluster: Path
    failing: Path
    local_result: subprocess.CompletedProcess
    cluster_result: subprocess.CompletedProcess
    failing_result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cluster: SlurmCluster) -> ClusterRuns:
    """Decode the demo videos locally, then extract and subsample locally and through Slurm.

    The decoded shards are built once and copied, with Snakemake's metadata, into three
    working directories. One builds the targets locally and one through Slurm. The third
    has a video overwritten with garbage and `on_bad_video: fail`, and decodes shard 0
    again through Slurm, because the changed parameter makes Snakemake rerun that job.
    The three runs go on at the same time.
    """
    base = tmp_path_factory.mktemp("runs")
    config = small_demo_config()
    decoded = base / "decoded"
    decoded.mkdir()
    prefix = run_snakemake(
        decoded,
        config,
        ["features/demo/decoded/shard0.h5", "features/demo/decoded/shard1.h5"],
        "--cores",
        "2",
        "--set-threads",
        *profile_threads(),
    )
    assert prefix.returncode == 0, prefix.stdout[-6000:]

    paths = {name: base / name for name in ("local", "cluster", "failing")}
    for path in paths.values():
        copy_workdir(decoded, path)
    (paths["failing"] / "data" / "demo" / "videos" / "demo_0001.mp4").write_bytes(b"not a video " * 100)
    failing_config = copy.deepcopy(config)
    failing_config["on_bad_video"] = "fail"

    profile = ("--workflow-profile", str(TEST_PROFILE))
    cluster_run = SnakemakeRun(paths["cluster"], config, CLUSTER_TARGETS, *profile)
    failing_run = SnakemakeRun(paths["failing"], failing_config, ["features/demo/decoded/shard0.h5"], *profile)
    try:
        local_result = run_snakemake(
            paths["local"], config, CLUSTER_TARGETS, "--cores", "2", "--set-threads", *profile_threads()
        )
        cluster_result = cluster_run.wait(CLUSTER_RUN_TIMEOUT_S)
        failing_result = failing_run.wait(CLUSTER_RUN_TIMEOUT_S)
    finally:
        cluster_run.stop()
        failing_run.stop()
    return ClusterRuns(
        local=paths["local"],
        cluster=paths["cluster"],
        failing=paths["failing"],
        local_result=local_result,
        cluster_result=cluster_result,
        failing_result=failing_result,
    )


def slurm_log_jobs(workdir: Path) -> list[tuple[str, str, str]]:
    """Return (rule, wildcards, Slurm job id) of every job log the plugin wrote."""
    jobs = []
    for log_file in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
        relative = log_file.relative_to(workdir / ".snakemake" / "slurm_logs")
        rule = relative.parts[0].removeprefix("rule_")
        wildcards = relative.parts[1] if len(relative.parts) == 3 else ""
        jobs.append((rule, wildcards, log_file.stem))
    return jobs


def run_id(output: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match is not None, output[-3000:]
    return match.group(1)


def hdf5_contents(path: Path) -> dict[str, object]:
    """Map every attribute and dataset of an HDF5 file to its value, leaving out created_at."""
    contents: dict[str, object] = {}

    def add_attributes(name: str, node: h5py.HLObject) -> None:
        for key, value in node.attrs.items():
            if key != "created_at":
                contents[f"{name}@{key}"] = value

    with h5py.File(path, "r") as handle:
        add_attributes("/", handle)

        def visit(name: str, node: h5py.HLObject) -> None:
            add_attributes(name, node)
            if isinstance(node, h5py.Dataset):
                contents[name] = node[()]

        handle.visititems(visit)
    return contents


@pytest.mark.slow
def test_cluster_local_run_succeeds(runs: ClusterRuns) -> None:
    assert runs.local_result.returncode == 0, runs.local_result.stdout[-6000:]


@pytest.mark.slow
def test_cluster_run_succeeds(runs: ClusterRuns) -> None:
    assert runs.cluster_result.returncode == 0, runs.cluster_result.stdout[-6000:]
    for target in CLUSTER_TARGETS:
        assert (runs.cluster / target).is_file(), target


@pytest.mark.slow
def test_cluster_jobs_went_through_sbatch(runs: ClusterRuns, cluster: SlurmCluster) -> None:
    jobs = slurm_log_jobs(runs.cluster)
    shards = ["demo_0", "demo_1"]

    assert Counter(rule for rule, _, _ in jobs) == {
        "extract_mfcc": 2,
        "extract_soundnet": 2,
        "merge_features": 2,
        "subsample_features": 2,
    }
    assert sorted(wildcards for rule, wildcards, _ in jobs if rule == "extract_mfcc") == shards
    assert sorted(wildcards for rule, wildcards, _ in jobs if rule == "extract_soundnet") == shards
    assert sorted(wildcards for rule, wildcards, _ in jobs if rule == "merge_features") == [
        "demo_mfcc",
        "demo_soundnet",
    ]

    # Slurm's own record of each job: submitted under this run's job name, in this
    # working directory, and completed.
    records = {record["JobId"]: record for record in cluster.job_completion_records()}
    for rule, wildcards, job_id in jobs:
        assert job_id in records, f"{rule} {wildcards}: job {job_id} not in the job completion log"
        assert records[job_id]["Name"] == run_id(runs.cluster_result.stdout), records[job_id]
        assert records[job_id]["JobState"] == "COMPLETED", records[job_id]
        assert records[job_id]["WorkDir"] == str(runs.cluster), records[job_id]


def listening_addresses(pid: int) -> set[str]:
    """IPv4 addresses on which process `pid` listens for TCP connections (from /proc)."""
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(descriptor)
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
            address_hex = local.split(":")[0]
            addresses.add(".".join(str(int(address_hex[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return addresses


def test_cluster_listens_on_loopback_only(cluster: SlurmCluster) -> None:
    for pid_file in (cluster.settings.controller_pid_file, cluster.settings.node_pid_file):
        pid = int(pid_file.read_text())
        assert listening_addresses(pid) == {"127.0.0.1"}, pid_file


def test_cluster_second_start_rejected(cluster: SlurmCluster, tmp_path: Path) -> None:
    second = SlurmCluster(tmp_path / "state", slurm_conf=tmp_path / "slurm.conf")

    with pytest.raises(RuntimeError, match="another Slurm test cluster"):
        second.start()
    assert not (tmp_path / "slurm.conf").exists()


@pytest.mark.slow
def test_cluster_job_log_names_rule(runs: ClusterRuns) -> None:
    jobs = slurm_log_jobs(runs.cluster)
    assert jobs, "no Slurm job logs"
    for rule, wildcards, job_id in jobs:
        log_file = runs.cluster / ".snakemake" / "slurm_logs" / f"rule_{rule}" / wildcards / f"{job_id}.log"
        text = log_file.read_text()
        assert f"rule {rule}:" in text, log_file
        assert "1 of 1 steps (100%) done" in text, log_file


@pytest.mark.slow
def test_cluster_artifacts_equal_local(runs: ClusterRuns) -> None:
    assert runs.cluster_result.returncode == 0, runs.cluster_result.stdout[-6000:]
    features = runs.local / "features" / "demo"
    local_files = sorted(
        path
        for pattern in ("mfcc*", "soundnet*")
        for entry in features.glob(pattern)
        for path in ([entry] if entry.is_file() else entry.rglob("*"))
        if path.is_file()
    )
    # Per extractor: 2 shard files, the merged file and the subsampled file.
    assert len([path for path in local_files if path.suffix == ".h5"]) == 2 * 4, local_files

    for local_file in local_files:
        relative = local_file.relative_to(runs.local)
        cluster_file = runs.cluster / relative
        assert cluster_file.is_file(), f"{relative} missing after the cluster run"
        if local_file.suffix != ".h5":
            assert cluster_file.read_bytes() == local_file.read_bytes(), relative
            continue
        expected = hdf5_contents(local_file)
        actual = hdf5_contents(cluster_file)
        assert sorted(actual) == sorted(expected), relative
        for key, value in expected.items():
            assert np.array_equal(actual[key], value), f"{relative}: {key}"


@pytest.mark.slow
def test_cluster_failed_job_names_rule_and_log(runs: ClusterRuns, cluster: SlurmCluster) -> None:
    output = runs.failing_result.stdout

    assert runs.failing_result.returncode != 0
    assert "Error in rule decode_videos" in output
    assert "logs/decode_videos/demo_shard0.log" in output
    slurm_log = re.search(r"\S*\.snakemake/slurm_logs/rule_decode_videos/demo_0/\d+\.log", output)
    assert slurm_log is not None, output[-6000:]
    # The job's error, with the file and the reason, is in the Slurm log named above.
    assert "demo_0001.mp4" in Path(slurm_log.group(0)).read_text()

    jobs = slurm_log_jobs(runs.failing)
    assert [(rule, wildcards) for rule, wildcards, _ in jobs] == [("decode_videos", "demo_0")]
    records = {record["JobId"]: record for record in cluster.job_completion_records()}
    assert records[jobs[0][2]]["JobState"] == "FAILED", records[jobs[0][2]]
