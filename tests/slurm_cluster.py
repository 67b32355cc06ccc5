"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's
`munge` and `slurm-wlm` packages, configured in a temporary directory and stopped afterwards.

    cluster = start()          # seconds; sets SLURM_CONF in os.environ for the client tools
    cluster.sbatch(...)        # or submitit, sbatch, squeue, scontrol ... as usual
    stop(cluster)              # cancels jobs, stops the daemons, removes the directory

In tests use the fixture factory: `slurm_cluster = slurm_cluster_fixture()` at module level.
The fixture skips with the reason when the binaries are missing or the cluster does not come
up, and fails instead (with the daemon logs) when the environment variable CI is "true".
Install the packages with `.ci/install-slurm.sh`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).parent / "slurm" / "slurm.conf.in"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")
# Debian puts the daemons in /usr/sbin, which a non-login root shell may not have on PATH.
# Lifetime of job credentials, and also how long a requeued job waits before it may start
# again (slurm.conf AuthInfo cred_expire, default 120 s): short, so requeue tests are quick.
CRED_EXPIRE_S = 5
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])


class ClusterError(RuntimeError):
    """The cluster did not start; the message carries the daemon logs."""


def which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if which(name) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> tuple[str, int]:
    """Node topology and memory as slurmd itself detects them (`slurmd -C`), so that slurmd
    never finds the node smaller than configured and drains it."""
    out = subprocess.run(
        [which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30
    ).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    if "CPUs" not in fields:
        cpus = len(os.sched_getaffinity(0))
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        return f"CPUs={cpus}", mem_mb
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    hw = " ".join(f"{k}={fields[k]}" for k in keys if k in fields)
    return hw, int(fields["RealMemory"])


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    host: str
    partition: str
    cpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    previous_slurm_conf: str | None = None

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def cmd(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; returns its stdout."""
        proc = subprocess.run(
            [which(args[0]) or args[0], *args[1:]],
            capture_output=True, text=True, env=self.env(), timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def sbatch(self, *args: str) -> str:
        """Submit; returns the job id."""
        return self.cmd("sbatch", "--parsable", *args).strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (empty once the controller has forgotten the job).
        For an array, the first task's record."""
        out = self.cmd("scontrol", "-o", "show", "job", job_id, check=False)
        line = out.strip().splitlines()[0] if out.strip() else ""
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def job_state(self, job_id: str) -> str:
        return self.job_info(job_id).get("JobState", "UNKNOWN")

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.25)
        raise TimeoutError(f"job {job_id} still {state} after {timeout}s\n{self.logs()}")

    def node_state(self) -> str:
        out = self.cmd("sinfo", "-h", "-N", "-n", self.host, "-o", "%T", check=False)
        return out.strip().lower()

    def queue(self) -> list[str]:
        return self.cmd("squeue", "-h", "-o", "%i", check=False).split()

    def logs(self, tail: int = 60) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*")):
            # A daemon's captured stdout repeats its log file; keep it only for early deaths.
            log_file = path.with_suffix(".log")
            if path.suffix == ".out" and log_file.exists() and log_file.stat().st_size:
                continue
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"==> {path.name} <==\n" + "\n".join(lines))
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                parts.append(f"{name} exited with code {proc.returncode}")
        return "\n".join(parts)


def _write_config(root: Path, max_array_size: int, partition: str) -> tuple[Path, str, int]:
    host = socket.gethostname().split(".")[0]
    hw, mem_mb = _node_hardware()
    cpus = int(re.search(r"CPUs=(\d+)", hw).group(1))
    text = string.Template(TEMPLATE.read_text()).substitute(
        root=root,
        host=host,
        partition=partition,
        ctld_port=_free_port(),
        slurmd_port=_free_port(),
        munge_socket=root / "munge" / "munge.socket",
        max_array_size=max_array_size,
        cred_expire=CRED_EXPIRE_S,
        node_hw=hw,
        # A little below what the machine has: slurmd drains a node that has less than
        # configured, and the page cache makes the reading wobble.
        real_memory=max(1, int(mem_mb * 0.9)),
    )
    conf = root / "etc" / "slurm.conf"
    conf.write_text(text)
    return conf, host, cpus


def _start_munged(root: Path) -> subprocess.Popen:
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    log = open(root / "log" / "munged.out", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [
            which("munged") or "munged", "--foreground", "--force",
            f"--socket={root / 'munge' / 'munge.socket'}",
            f"--key-file={key}",
            f"--log-file={root / 'log' / 'munged.log'}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _wait(cluster: SlurmCluster, ready, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [name for name, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}")
        if ready():
            return
        time.sleep(0.1)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def start(
    root: str | os.PathLike | None = None,
    *,
    max_array_size: int = 1001,
    partition: str = "debug",
    timeout: float = 60,
) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under a fresh directory (inside `root` if given) and
    wait until the node is idle. Raises ClusterError with the logs if anything fails."""
    missing = missing_binaries()
    if missing:
        raise ClusterError(
            f"SLURM binaries not found: {', '.join(missing)} (install with .ci/install-slurm.sh)"
        )
    if os.geteuid() != 0:
        raise ClusterError("the test cluster runs its daemons as root (SlurmUser=root)")
    # Short path: the munge socket path must fit in a sockaddr_un (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="sb-slurm-", dir=root))
    for sub in ("etc", "munge", "state", "spool", "run", "log"):
        (base / sub).mkdir(mode=0o700)
    # munged wants the path to its socket searchable by everyone (clients of any uid).
    base.chmod(0o711)
    (base / "munge").chmod(0o711)
    try:
        conf, host, cpus = _write_config(base, max_array_size, partition)
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        shutil.rmtree(base, ignore_errors=True)
        raise ClusterError(f"could not write the SLURM configuration: {err}") from err
    cluster = SlurmCluster(
        root=base, conf=conf, host=host, partition=partition, cpus=cpus,
        previous_slurm_conf=os.environ.get("SLURM_CONF"),
    )
    os.environ["SLURM_CONF"] = str(conf)
    try:
        cluster.procs["munged"] = _start_munged(base)
        socket_path = base / "munge" / "munge.socket"
        _wait(cluster, socket_path.exists, "the munge socket", timeout)
        for daemon, extra in (("slurmctld", ["-c", "-i"]), ("slurmd", [])):
            out = open(base / "log" / f"{daemon}.out", "wb")  # noqa: SIM115
            cluster.procs[daemon] = subprocess.Popen(
                [which(daemon) or daemon, "-D", "-f", str(conf), *extra],
                stdout=out, stderr=subprocess.STDOUT, env=cluster.env(),
                start_new_session=True,
            )
        _wait(cluster, lambda: cluster.node_state() == "idle", f"node {host} to be idle", timeout)
    except (ClusterError, OSError, subprocess.SubprocessError) as err:
        logs = cluster.logs()
        stop(cluster)
        raise ClusterError(f"SLURM test cluster did not start: {err}\n{logs}") from err
    return cluster


def _terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def stop(cluster: SlurmCluster, *, keep: bool = False) -> None:
    """Cancel every job, stop the daemons (the ones this module started, by pid) and remove the
    cluster directory (kept with keep=True, to read the logs)."""
    ctld = cluster.procs.get("slurmctld")
    if ctld is not None and ctld.poll() is None:
        with contextlib.suppress(Exception):
            cluster.cmd("scancel", "--full", "--partition", cluster.partition, check=False)
            # Running jobs end after at most KillWait; their slurmstepd go with them.
            deadline = time.monotonic() + 20
            while cluster.queue() and time.monotonic() < deadline:
                time.sleep(0.2)
    for name in ("slurmd", "slurmctld", "munged"):
        if name in cluster.procs:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _terminate(cluster.procs[name])
    if cluster.previous_slurm_conf is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = cluster.previous_slurm_conf
    if not keep:
        shutil.rmtree(cluster.root, ignore_errors=True)


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def slurm_cluster_fixture(scope: str = "module", **start_kwargs):
    """A pytest fixture yielding a started SlurmCluster; assign it at module level:
    `slurm_cluster = slurm_cluster_fixture()`. Module scope: one cluster per test file."""

    @pytest.fixture(scope=scope)
    def slurm_cluster():
        try:
            cluster = start(**start_kwargs)
        except ClusterError as err:
            _unavailable(str(err))
        yield cluster
        stop(cluster)

    return slurm_cluster
