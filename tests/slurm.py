"""A real one-node Slurm cluster for the Slurm tier (tests/test_slurm.py).

Debian's slurmctld, slurmd and munge packages (.ci/run installs them), started as root
without systemd, everything in one temporary folder:

- munged in the foreground with a fresh 1024-byte key and its own socket;
- slurm.conf: one node named after this host (`hostname -s`) at 127.0.0.1 with this
  machine's CPUs and two GPUs, one partition, the controller and the node daemon on
  free ports, root as SlurmUser, no cgroups (proctrack/linuxproc, task/none), no
  accounting, KillWait=15; `AuthInfo=socket=` points both daemons and the clients at
  this munged;
- gres.conf: the two GPUs over two character devices made here (mknod 1:3, /dev/null's
  numbers; slurmd refuses regular files), so that Slurm hands out GPU indices
  (SLURM_JOB_GPUS, SLURM_STEP_GPUS, SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES) as on a GPU
  node, without one;
- `slurmctld -D` and `slurmd -D` (foreground), ready once `sinfo` shows the node idle.

Clients find it through SLURM_CONF (Slurm.env). Teardown cancels what is left and stops
the three daemons. Checked against Slurm 22.05 (Debian 12) and munge 0.5.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scontrol", "scancel")
PARTITION = "tests"
GPUS = 2
# Seconds between Slurm's SIGTERM and SIGKILL to a cancelled job's processes (30 by
# default); short here, so that a test sees what SIGKILL leaves behind.
KILL_WAIT = 15


@dataclass
class Slurm:
    root: Path
    node: str
    env: dict[str, str]
    setup_seconds: float = 0.0
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env)
        return subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (empty once Slurm has forgotten the job)."""
        shown = self.run("scontrol", "show", "job", "--oneliner", job_id)
        fields = {}
        for word in shown.stdout.split():
            key, _, value = word.partition("=")
            fields.setdefault(key, value)
        return fields

    def wait_for(self, job_id: str, states: set[str], timeout: float) -> str:
        """The job's state once it is one of `states` (fails after timeout seconds)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job(job_id).get("JobState", "")
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} is {state or 'unknown'} after {timeout:.0f} s, not {sorted(states)}")

    def log(self) -> str:
        """The daemons' logs, for a failure message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}" for path in sorted(self.root.glob("*.log"))
        )


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    if os.geteuid() != 0:
        return "the Slurm tier starts slurmd and slurmctld as root (run the tests as root)"
    absent = [name for name in (*DAEMONS, *CLIENTS) if not shutil.which(name)]
    if absent:
        return f"{', '.join(absent)} missing: apt-get install slurmctld slurmd slurm-client munge"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpu_devices(root: Path) -> list[str]:
    """Two character devices for gres.conf (/dev/null's numbers): slurmd accepts only
    device files. Where mknod is not allowed, /dev/null and /dev/zero themselves."""
    paths = []
    try:
        for index in range(GPUS):
            path = root / f"gpu{index}"
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            paths.append(str(path))
    except OSError:
        return ["/dev/null", "/dev/zero"][:GPUS]
    return paths


def write_config(root: Path, node: str) -> Path:
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=tests
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
KillWait={KILL_WAIT}
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    gres = "".join(f"NodeName={node} Name=gpu File={path}\n" for path in gpu_devices(root))
    (root / "gres.conf").write_text(f"AutoDetect=off\n{gres}")
    return conf


def start(slurm: Slurm, timeout: float = 60) -> None:
    """munged, slurmctld and slurmd from a fresh configuration in slurm.root; returns once
    the node is idle. The caller stops them (stop), also when this raises."""
    started = time.monotonic()
    root = slurm.root
    conf = write_config(root, slurm.node)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    slurm.env = {**os.environ, "SLURM_CONF": str(conf)}
    commands = [
        ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket",
         f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed", f"--log-file={root}/munged.log"],
        ["slurmctld", "-D", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf)],
    ]  # fmt: skip
    for command in commands:
        with open(root / f"{command[0]}.out.log", "w") as log:
            slurm.processes.append(
                subprocess.Popen(
                    command, cwd=root, env=slurm.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        if command[0] == "munged":
            wait_until(lambda: (root / "munge.socket").exists(), 10, "munged made no socket", slurm)
    wait_until(lambda: slurm.run("sinfo", "-h", "-N", "-o", "%t").stdout.strip() == "idle", timeout,
               "the node is not idle", slurm)  # fmt: skip
    slurm.setup_seconds = time.monotonic() - started


def wait_until(ready, timeout: float, what: str, slurm: Slurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for process in slurm.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited ({process.returncode}):\n{slurm.log()}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} after {timeout:.0f} s:\n{slurm.log()}")


def stop(slurm: Slurm) -> None:
    """Cancel every job, then stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
    if slurm.processes and slurm.processes[-1].poll() is None:
        slurm.run("scancel", f"--partition={PARTITION}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and slurm.run("squeue", "-h").stdout.strip():
            time.sleep(0.5)
    for process in reversed(slurm.processes):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cluster(root: Path) -> Iterator[Slurm]:
    """Start, yield, stop: the body of a fixture."""
    slurm = Slurm(root=root, node=socket.gethostname().split(".")[0], env={})
    try:
        start(slurm)
        yield slurm
    finally:
        stop(slurm)
