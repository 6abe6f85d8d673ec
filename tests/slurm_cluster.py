"""Start and stop a one-node Slurm cluster on this machine for tests.

The cluster runs munged, slurmctld and slurmd as local daemons bound to 127.0.0.1, with
their state, logs, sockets and PID files in one private folder. Slurm commands started
inside a job (the Snakemake job step calls `srun` with `SLURM_CONF` removed from its
environment) read the default path /etc/slurm/slurm.conf, so the cluster writes its config
there, backs up any existing file and restores it on stop.

Starting needs root, because munged runs as the `munge` user and the Slurm daemons as
root, and it needs the Debian packages slurm-wlm and munge. `missing_requirements` returns
the reason when either is absent. Accounting storage is off, so `sacct` has nothing to report: clients query job
states with `squeue`, and the job completion log (`jobcomp/filetxt`) keeps one line per
finished job.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

LOGGER = logging.getLogger(__name__)

DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")
# Marks a slurm.conf written by this module, so a file left by a killed test run is
# replaced instead of being backed up as the machine's own config.
CONFIG_MARKER = "# Written by pmi-video tests/slurm_cluster.py"
REQUIRED_PROGRAMS = (
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scancel",
    "scontrol",
)
PARTITION = "debug"


@dataclass(frozen=True)
class NodeHardware:
    """CPU layout and memory of the node as `slurmd -C` reports them.

    `fields` contains the `key=value` pairs of the hardware line (CPUs, Boards,
    SocketsPerBoard, CoresPerSocket, ThreadsPerCore, RealMemory in MB).
    """

    hostname: str
    fields: dict[str, str]

    @property
    def cpus(self) -> int:
        return int(self.fields["CPUs"])

    @property
    def real_memory_mb(self) -> int:
        return int(self.fields["RealMemory"])

    def with_cpus(self, cpus: int) -> NodeHardware:
        """The same node declared with `cpus` single-thread cores on one socket."""
        fields = dict(self.fields)
        fields.update(CPUs=str(cpus), Boards="1", SocketsPerBoard="1", CoresPerSocket=str(cpus), ThreadsPerCore="1")
        return NodeHardware(hostname=self.hostname, fields=fields)


@dataclass(frozen=True)
class ClusterSettings:
    """Everything a cluster's slurm.conf and daemons need.

    Ports are TCP ports on 127.0.0.1. `min_job_age_s` is how long (s) slurmctld keeps a
    finished job visible to `squeue`. The Snakemake Slurm plugin falls back to `sacct`
    unless it is at least three times the plugin's first status-check delay.
    """

    state_dir: Path
    hardware: NodeHardware
    slurmctld_port: int
    slurmd_port: int
    munge_socket: Path
    min_job_age_s: int = 300
    cluster_name: str = "pmitest"

    @property
    def controller_log(self) -> Path:
        return self.state_dir / "slurmctld.log"

    @property
    def node_log(self) -> Path:
        return self.state_dir / "slurmd.log"

    @property
    def job_completion_log(self) -> Path:
        return self.state_dir / "jobcomp.txt"

    @property
    def controller_pid_file(self) -> Path:
        return self.state_dir / "slurmctld.pid"

    @property
    def node_pid_file(self) -> Path:
        return self.state_dir / "slurmd.pid"


def missing_requirements() -> str | None:
    """Return why a test cluster cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "a Slurm test cluster needs root (munged runs as 'munge', slurmd as root)"
    missing = [name for name in REQUIRED_PROGRAMS if shutil.which(name) is None]
    if missing:
        return (
            f"Slurm or munge programs not found on PATH: {', '.join(missing)}; install the "
            "Debian packages with: apt-get install -y slurm-wlm munge"
        )
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "user 'munge' not found; install the Debian package munge"
    return None


def detect_hardware() -> NodeHardware:
    """Read the node's CPU layout and memory from `slurmd -C`."""
    output = subprocess.run(
        ["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    first_line = output.splitlines()[0]
    pairs = dict(item.split("=", 1) for item in first_line.split())
    hostname = pairs.pop("NodeName")
    return NodeHardware(hostname=hostname, fields=pairs)


def free_local_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def render_slurm_conf(settings: ClusterSettings) -> str:
    """Return the text of slurm.conf for a one-node cluster bound to 127.0.0.1."""
    node = settings.hardware
    hardware = " ".join(f"{key}={value}" for key, value in node.fields.items())
    state = settings.state_dir
    lines = [
        CONFIG_MARKER,
        f"ClusterName={settings.cluster_name}",
        f"SlurmctldHost={node.hostname}(127.0.0.1)",
        f"SlurmctldPort={settings.slurmctld_port}",
        f"SlurmdPort={settings.slurmd_port}",
        # Bind every daemon and srun to the address the node name resolves to, never to
        # all interfaces.
        "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={settings.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={state / 'ctld-state'}",
        f"SlurmdSpoolDir={state / 'slurmd-spool'}",
        f"SlurmctldPidFile={settings.controller_pid_file}",
        f"SlurmdPidFile={settings.node_pid_file}",
        f"SlurmctldLogFile={settings.controller_log}",
        f"SlurmdLogFile={settings.node_log}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # No cgroups: processes are tracked through /proc and tasks are not confined.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={settings.job_completion_log}",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "ReturnToService=2",
        f"MinJobAge={settings.min_job_age_s}",
        # Trust the hardware line below even where slurmd counts differently.
        "SlurmdParameters=config_overrides",
        f"NodeName={node.hostname} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node.hostname} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def read_pid_file(path: Path) -> int | None:
    """Return the PID stored in `path`, or None when the file is missing or empty."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process(pid: int, name: str, timeout_s: float = 10.0) -> None:
    """Send SIGTERM to `pid`, wait up to `timeout_s`, then SIGKILL it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.1)
    LOGGER.warning("%s (PID %d) still running %.0f s after SIGTERM, sending SIGKILL", name, pid, timeout_s)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(
    condition: Callable[[], bool], description: str, timeout_s: float, log_file: Path | None = None
) -> None:
    """Poll `condition()` every 0.1 s until it returns true; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    detail = ""
    if log_file is not None and log_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        detail = f"\nLast lines of {log_file}:\n{tail}"
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {description}{detail}")


class SlurmCluster:
    """A one-node Slurm cluster with its own munged, started by `start` and ended by `stop`.

    Use it as a context manager, or call `stop` from a finalizer: `stop` ends every
    daemon whose PID file exists and restores slurm.conf, however far `start` got.
    Only one cluster can run at a time on a machine, because slurm.conf has a fixed path.
    A second `start` raises RuntimeError while the first cluster keeps the lock file.

    `cpus` declares the node with that many CPUs instead of the count `slurmd -C`
    reports, so that more one-CPU jobs run at once than the machine has cores (Slurm then
    oversubscribes the cores; nothing confines a job to its CPUs on this cluster).
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        cpus: int | None = None,
        slurm_conf: Path = DEFAULT_SLURM_CONF,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="pmi-slurm-"))
        self.cpus = cpus
        self.slurm_conf = slurm_conf
        self.backup_conf = slurm_conf.with_name(slurm_conf.name + ".pmi-video-backup")
        self.start_timeout_s = start_timeout_s
        self.settings: ClusterSettings | None = None
        self._lock_handle: IO[str] | None = None
        self._munge_dir = self.state_dir / "munge"
        self._wrote_conf = False
        self._had_conf = False

    @property
    def munge_pid_file(self) -> Path:
        return self._munge_dir / "munged.pid"

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start munged, slurmctld and slurmd and wait until the node accepts jobs."""
        reason = missing_requirements()
        if reason is not None:
            raise RuntimeError(f"cannot start a Slurm test cluster: {reason}")
        self._acquire_lock()

        self.state_dir.mkdir(parents=True, exist_ok=True)
        # munged (user munge) must traverse the state folder to reach its own subfolder.
        self.state_dir.chmod(0o755)
        for name in ("ctld-state", "slurmd-spool"):
            (self.state_dir / name).mkdir(exist_ok=True)

        self._start_munge()
        hardware = detect_hardware()
        if self.cpus is not None:
            hardware = hardware.with_cpus(self.cpus)
        self.settings = ClusterSettings(
            state_dir=self.state_dir,
            hardware=hardware,
            slurmctld_port=free_local_port(),
            slurmd_port=free_local_port(),
            munge_socket=self._munge_dir / "munge.socket",
        )
        self._write_conf(render_slurm_conf(self.settings))

        self._start_daemon(["slurmctld"], self.settings.controller_pid_file, self.settings.controller_log)
        self._start_daemon(
            ["slurmd", "-N", self.settings.hardware.hostname],
            self.settings.node_pid_file,
            self.settings.node_log,
        )
        wait_for(
            self._node_idle,
            f"node {self.settings.hardware.hostname} to become idle",
            self.start_timeout_s,
            self.settings.controller_log,
        )
        LOGGER.info("Slurm test cluster up, state in %s", self.state_dir)

    def stop(self) -> None:
        """Cancel queued and running jobs, stop the daemons and restore slurm.conf."""
        if self.settings is not None and read_pid_file(self.settings.controller_pid_file):
            subprocess.run(
                ["scancel", "--partition", PARTITION],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        if self.settings is not None:
            for pid_file, name in (
                (self.settings.node_pid_file, "slurmd"),
                (self.settings.controller_pid_file, "slurmctld"),
            ):
                pid = read_pid_file(pid_file)
                if pid is not None:
                    stop_process(pid, name)
        munge_pid = read_pid_file(self.munge_pid_file)
        if munge_pid is not None:
            stop_process(munge_pid, "munged")
        self._restore_conf()
        self._release_lock()
        LOGGER.info("Slurm test cluster stopped, logs kept in %s", self.state_dir)

    def job_completion_records(self) -> list[dict[str, str]]:
        """Return one dict per finished job from the job completion log (JobId, Name, JobState...)."""
        if self.settings is None or not self.settings.job_completion_log.exists():
            return []
        records = []
        for line in self.settings.job_completion_log.read_text().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if fields:
                records.append(fields)
        return records

    def _acquire_lock(self) -> None:
        lock_path = Path(tempfile.gettempdir()) / "pmi-video-slurm-cluster.lock"
        handle = lock_path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(
                f"another Slurm test cluster holds {lock_path}; wait for it to stop"
            ) from None
        self._lock_handle = handle

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def _start_munge(self) -> None:
        munge_user = pwd.getpwnam("munge")
        self._munge_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(self._munge_dir, munge_user.pw_uid, munge_user.pw_gid)
        key = self._munge_dir / "munge.key"
        subprocess.run(
            ["mungekey", "--create", "--force", "--keyfile", str(key)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        os.chown(key, munge_user.pw_uid, munge_user.pw_gid)
        key.chmod(0o400)

        log_file = self._munge_dir / "munged.log"
        subprocess.run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "munged",
                f"--key-file={key}",
                f"--socket={self._munge_dir / 'munge.socket'}",
                f"--pid-file={self.munge_pid_file}",
                f"--log-file={log_file}",
                f"--seed-file={self._munge_dir / 'munged.seed'}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        wait_for(
            lambda: (self._munge_dir / "munge.socket").exists(),
            "the munged socket",
            self.start_timeout_s,
            log_file,
        )

    def _write_conf(self, text: str) -> None:
        self.slurm_conf.parent.mkdir(parents=True, exist_ok=True)
        if self.slurm_conf.exists() and CONFIG_MARKER not in self.slurm_conf.read_text():
            shutil.copy2(self.slurm_conf, self.backup_conf)
            self._had_conf = True
        self.slurm_conf.write_text(text)
        self._wrote_conf = True

    def _restore_conf(self) -> None:
        if not self._wrote_conf:
            return
        if self._had_conf:
            shutil.move(self.backup_conf, self.slurm_conf)
        else:
            self.slurm_conf.unlink(missing_ok=True)
        self._wrote_conf = False

    def _start_daemon(self, command: list[str], pid_file: Path, log_file: Path) -> None:
        """Run a daemon that forks into the background and wait for its PID file."""
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed to start (exit status {result.returncode}): "
                f"{result.stderr.strip()}; see {log_file}"
            )
        wait_for(lambda: read_pid_file(pid_file) is not None, f"{pid_file}", self.start_timeout_s, log_file)

    def _node_idle(self) -> bool:
        result = subprocess.run(
            ["sinfo", "--noheader", "--format=%T", "--nodes", self.settings.hardware.hostname],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0 and result.stdout.strip() == "idle"
