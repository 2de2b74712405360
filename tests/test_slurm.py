"""deploy/slurm: the batch script and its command lines (fast), and a real one-node Slurm
running the batch script with the Docker runtime (the Slurm tier, tests/slurm.py).

The Slurm tier runs a stand-in for training unless SLURM_TEST_IMAGE names a real image:
the base image (local/debian:trixie) and, in place of the project's docker/train, a Perl
script (perl-base is in every Debian image) in which the agent of rank 0 listens on
RDZV_ENDPOINT and every other agent connects to it within RDZV_TIMEOUT and exchanges a
line naming its rank, NNODES and RDZV_ID: what torchrun's c10d rendezvous needs from the
batch script (one agent per task, the same endpoint, id and count, distinct ranks, the
endpoint reachable from every container). Each agent then writes what it saw into
checkpoints/. With SLURM_TEST_IMAGE=IMAGE the project's own docker/train runs in IMAGE
(SLURM_TEST_DOCKER_GPUS: the --gpus setting, default none; SLURM_TEST_TIMEOUT seconds).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import slurm as slurm_cluster
from conftest import BENCHMARKS, TEMPLATE, run, tool, unavailable
from cookiecutter.main import cookiecutter

SLUG = "gpu_lab"
IMAGE = "registry.example.com/team/gpu_lab:0123456789ab"


@pytest.fixture(scope="module")
def project(tmp_path_factory, _cookiecutter_config_file) -> Path:
    """The default project, baked once for the module (tests copy it before changing it)."""
    output = tmp_path_factory.mktemp("slurm-project")
    path = cookiecutter(
        str(TEMPLATE), no_input=True, output_dir=str(output), config_file=str(_cookiecutter_config_file)
    )
    return Path(path)


@pytest.fixture
def project_copy(project, tmp_path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(project, copy, symlinks=True)
    return copy


def fake_scontrol(tmp_path: Path, *hosts: str) -> str:
    """A folder with an scontrol whose `show hostnames` prints hosts, for PATH."""
    folder = tmp_path / "fake-bin"
    folder.mkdir(exist_ok=True)
    script = folder / "scontrol"
    lines = "".join(f"echo {host}\n" for host in hosts)
    script.write_text(f'#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 2\n{lines}')
    script.chmod(0o755)
    return str(folder)


def launch(project: Path, mode: str, env: dict[str, str], tmp_path: Path, script: str = "deploy/slurm/launch"):
    """The launcher with only env (and PATH) set, DRY_RUN=1."""
    path = f"{fake_scontrol(tmp_path, 'gpu01', 'gpu02')}:/usr/bin:/bin"
    args = ["sh", script] if script.endswith(".sbatch") else ["sh", script, mode]
    return run(args, cwd=project, env={"PATH": path, "DRY_RUN": "1", **env})


def job_env(project: Path, runtime: str, **more: str) -> dict[str, str]:
    """What the batch step of a 2-node job with 8 GPUs and 16 CPUs per node holds."""
    return {
        "RUNTIME": runtime,
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_SUBMIT_DIR": str(project),
        "IMAGE": IMAGE,
        **more,
    }


def task_env(project: Path, runtime: str, **more: str) -> dict[str, str]:
    """What the task of rank 1 holds (launch job exported the first eight)."""
    return {
        "RUNTIME": runtime,
        "PROJECT_DIR": str(project),
        "IMAGE": IMAGE,
        "NNODES": "2",
        "NPROC_PER_NODE": "8",
        "RDZV_ENDPOINT": "gpu01:29642",
        "RDZV_ID": "4242",
        "RDZV_TIMEOUT": "900",
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "1",
        "SLURM_NODEID": "1",
        "SLURM_STEP_GPUS": "0,1,2,3,4,5,6,7",
        **more,
    }


def printed(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


# ---------------------------------------------------------------------------------------
# Fast tier
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_scripts_pass_shellcheck_and_run_with_sh(request, framework):
    project = request.getfixturevalue("project" if framework == "pytorch" else "tf_project")
    scripts = ["deploy/slurm/train.sbatch", "deploy/slurm/launch"]
    result = run([tool("shellcheck"), *scripts], cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    for script in scripts:
        assert (project / script).read_text().startswith("#!/bin/sh\n"), script
    assert (project / "deploy/slurm/launch").stat().st_mode & 0o100


def test_the_allocation_is_the_sbatch_lines_at_the_top(project):
    lines = (project / "deploy/slurm/train.sbatch").read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    options = dict(line.removeprefix("#SBATCH ").split("=", 1) for line in lines if line.startswith("#SBATCH "))
    assert all(not line.startswith("#SBATCH") for line in lines[first_command:])  # sbatch stops reading there
    assert options == {
        "--job-name": f"{SLUG}-train",
        "--nodes": "2",
        "--ntasks-per-node": "1",
        "--gpus-per-node": "8",
        "--cpus-per-task": "16",
        "--time": "24:00:00",
        "--partition": "gpu",
        "--output": "slurm-%x-%j.out",
    }


def test_the_batch_script_runs_pyxis_by_default_from_the_submit_folder(project, tmp_path):
    env = job_env(project, "pyxis")
    del env["RUNTIME"]
    line = printed(launch(project, "job", env, tmp_path, script="deploy/slurm/train.sbatch"))
    assert line == printed(launch(project, "job", {**env, "RUNTIME": "pyxis"}, tmp_path))
    assert line.startswith(f"env RUNTIME=pyxis PROJECT_DIR={project} ")


@pytest.mark.parametrize(
    ("runtime", "srun_tail"),
    [
        (
            "pyxis",
            (
                "'--container-image=registry.example.com#team/gpu_lab:0123456789ab' "
                "--container-mounts={project}:/workspace --container-workdir=/workspace "
                "sh /workspace/deploy/slurm/launch task"
            ),
        ),
        ("apptainer", "sh {project}/deploy/slurm/launch task"),
        ("docker", "sh {project}/deploy/slurm/launch task"),
    ],
)
def test_the_job_starts_one_agent_per_task(project, tmp_path, runtime, srun_tail):
    line = printed(launch(project, "job", job_env(project, runtime), tmp_path))
    assert line == (
        f"env RUNTIME={runtime} PROJECT_DIR={project} IMAGE={IMAGE} NNODES=2 NPROC_PER_NODE=8 "
        "RDZV_ENDPOINT=gpu01:29642 RDZV_ID=4242 RDZV_TIMEOUT=900 "
        "srun --export=ALL --kill-on-bad-exit=1 --cpus-per-task=16 " + srun_tail.format(project=project)
    )


def test_job_settings_override_the_defaults(project, tmp_path):
    env = job_env(project, "docker", RDZV_HOST="10.0.0.1", RDZV_PORT="29400", RDZV_TIMEOUT="60", NPROC_PER_NODE="4")
    del env["SLURM_CPUS_PER_TASK"], env["SLURM_GPUS_ON_NODE"]
    line = printed(launch(project, "job", env, tmp_path))
    assert "NNODES=2 NPROC_PER_NODE=4 RDZV_ENDPOINT=10.0.0.1:29400 RDZV_ID=4242 RDZV_TIMEOUT=60 " in line
    assert "srun --export=ALL --kill-on-bad-exit=1 sh " in line
    del env["NPROC_PER_NODE"]
    assert " NPROC_PER_NODE=1 " in printed(launch(project, "job", env, tmp_path))


def test_pyxis_task_sets_the_rank_in_the_container(project, tmp_path):
    line = printed(launch(project, "task", task_env(project, "pyxis"), tmp_path))
    assert line == "env NODE_RANK=1 sh /workspace/docker/train"


def test_apptainer_task(project, tmp_path):
    line = printed(launch(project, "task", task_env(project, "apptainer"), tmp_path))
    assert line == (
        f"apptainer exec --nv --bind {project}:/workspace --pwd /workspace "
        f"--env NODE_RANK=1 --env PYTHONPATH=/workspace/src docker://{IMAGE} sh /workspace/docker/train"
    )
    sif = printed(launch(project, "task", task_env(project, "apptainer", IMAGE="/shared/gpu_lab.sif"), tmp_path))
    assert " /shared/gpu_lab.sif sh /workspace/docker/train" in sif


def test_docker_task(project, tmp_path):
    ids = f"{os.getuid()}:{os.getgid()}"
    env = task_env(project, "docker", NCCL_SOCKET_IFNAME="ib0", NCCL_DEBUG="INFO", GLOO_SOCKET_IFNAME="ib0")
    line = printed(launch(project, "task", env, tmp_path))
    assert line == (
        f"docker run --rm --name {SLUG}-job4242-task1 --network=host --pid=host --user {ids} "
        "--security-opt=no-new-privileges --gpus '\"device=0,1,2,3,4,5,6,7\"' --ipc=host "
        f"-v {project}:/workspace -w /workspace -e NNODES=2 -e NPROC_PER_NODE=8 -e RDZV_ENDPOINT=gpu01:29642 "
        "-e RDZV_ID=4242 -e RDZV_TIMEOUT=900 -e NODE_RANK=1 "
        "-e GLOO_SOCKET_IFNAME=ib0 -e NCCL_DEBUG=INFO -e NCCL_SOCKET_IFNAME=ib0 "
        f"{IMAGE} sh /workspace/docker/train"
    )


@pytest.fixture(scope="module")
def tf_project(tmp_path_factory, _cookiecutter_config_file) -> Path:
    output = tmp_path_factory.mktemp("slurm-tf-project")
    path = cookiecutter(
        str(TEMPLATE), no_input=True, output_dir=str(output), config_file=str(_cookiecutter_config_file),
        extra_context={"framework": "tensorflow", "cuda_version": "12.5"},
    )  # fmt: skip
    return Path(path)


@pytest.mark.parametrize(
    ("tasks", "per_node", "workers"),
    [
        ("2", "1(x2)", "gpu01:29642,gpu02:29643"),
        ("4", "2(x2)", "gpu01:29642,gpu01:29643,gpu02:29644,gpu02:29645"),
        ("3", "2,1", "gpu01:29642,gpu01:29643,gpu02:29644"),
    ],
)
def test_tensorflow_job_lists_every_tasks_worker(tf_project, tmp_path, tasks, per_node, workers):
    """TensorFlow's workers, host:port in task order (Slurm's block placement), one port
    per task, so that tasks sharing a node never share one; no torchrun settings."""
    env = job_env(tf_project, "docker", SLURM_NTASKS=tasks, SLURM_TASKS_PER_NODE=per_node)
    line = printed(launch(tf_project, "job", env, tmp_path))
    assert f" NNODES={tasks} WORKERS={workers} RDZV_TIMEOUT=900 srun " in line
    assert "RDZV_ENDPOINT" not in line and "NPROC_PER_NODE" not in line


def test_tensorflow_job_refuses_more_nodes_than_the_job_has(tf_project, tmp_path):
    env = job_env(tf_project, "docker", SLURM_NTASKS="6", SLURM_TASKS_PER_NODE="2(x3)")
    result = launch(tf_project, "job", env, tmp_path)
    assert (
        result.returncode == 1
        and "SLURM_TASKS_PER_NODE=2(x3) names more nodes than SLURM_JOB_NODELIST" in result.stderr
    )


def test_tensorflow_docker_task_passes_the_workers(tf_project, tmp_path):
    env = task_env(tf_project, "docker", WORKERS="gpu01:29642,gpu02:29643")
    for torchrun_only in ("NPROC_PER_NODE", "RDZV_ENDPOINT", "RDZV_ID"):
        del env[torchrun_only]
    line = printed(launch(tf_project, "task", env, tmp_path))
    assert (
        f"-v {tf_project}:/workspace -w /workspace -e NNODES=2 -e WORKERS=gpu01:29642,gpu02:29643 "
        "-e RDZV_TIMEOUT=900 -e NODE_RANK=1 "
    ) in line
    missing = launch(tf_project, "task", {**env, "WORKERS": ""}, tmp_path)
    assert missing.returncode == 1 and "WORKERS is not set: train.sbatch (launch job) sets it" in missing.stderr


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "--gpus '\"device=0,1,2,3,4,5,6,7\"' --ipc=host"),
        ({"SLURM_STEP_GPUS": "", "SLURM_JOB_GPUS": "2,3"}, "--gpus '\"device=2,3\"' --ipc=host"),
        ({"SLURM_STEP_GPUS": ""}, "--gpus all --ipc=host"),
        ({"DOCKER_GPUS": "none"}, "--ipc=host"),
        ({"DOCKER_GPUS": "count=2", "DOCKER_SHM_SIZE": "64gb"}, "--gpus count=2 --shm-size=64gb"),
    ],
)
def test_docker_gpus_and_shared_memory(project, tmp_path, settings, expected):
    env = {key: value for key, value in task_env(project, "docker", **settings).items() if value}
    line = printed(launch(project, "task", env, tmp_path))
    assert f"--security-opt=no-new-privileges {expected} -v " in line


def test_docker_args_and_the_docker_cli(project, tmp_path):
    env = task_env(
        project, "docker", DOCKER="/usr/bin/docker", DOCKER_ARGS="--device=/dev/infiniband --cap-add=IPC_LOCK"
    )
    line = printed(launch(project, "task", env, tmp_path))
    assert line.startswith("/usr/bin/docker run --rm --name ")
    assert line.endswith(
        f"-e NODE_RANK=1 --device=/dev/infiniband --cap-add=IPC_LOCK {IMAGE} sh /workspace/docker/train"
    )


@pytest.mark.parametrize(
    ("image", "pyxis"),
    [
        (IMAGE, "registry.example.com#team/gpu_lab:0123456789ab"),
        ("localhost:5000/gpu_lab:0123456789ab", "localhost:5000#gpu_lab:0123456789ab"),
        ("nvcr.io#nvidia/pytorch:24.01-py3", "nvcr.io#nvidia/pytorch:24.01-py3"),
        ("team/gpu_lab:0123456789ab", "team/gpu_lab:0123456789ab"),  # Docker Hub
        ("/shared/gpu_lab.sqsh", "/shared/gpu_lab.sqsh"),
    ],
)
def test_pyxis_names_the_registry_with_a_hash(project, tmp_path, image, pyxis):
    line = printed(launch(project, "job", job_env(project, "pyxis", IMAGE=image), tmp_path))
    assert re.search(r"'?--container-image=([^' ]+)'? ", line).group(1) == pyxis


def git(project: Path, *args: str) -> str:
    result = run(["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com", *args])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_image_is_the_one_make_push_tags(project_copy, tmp_path):
    """REGISTRY/SLUG:COMMIT from .env and git (docker/push --ref), -dirty with changes to
    what the image is built from; IMAGE_TAG replaces the tag."""
    env_file = project_copy / ".env"
    env_file.write_text(env_file.read_text() + "REGISTRY=registry.example.com/team/\n")
    env = job_env(project_copy, "docker")
    del env["IMAGE"]
    no_commit = launch(project_copy, "job", env, tmp_path)
    assert no_commit.returncode == 1 and "is not in a git repository" in no_commit.stderr
    assert "or set IMAGE (or IMAGE_TAG)" in no_commit.stderr
    git(project_copy, "init", "-q")
    git(project_copy, "add", "-A")
    git(project_copy, "commit", "-qm", "first")
    commit = git(project_copy, "rev-parse", "HEAD")[:12]
    # The project's name, not this clone's IMAGE_NAME: every teammate pushes to one repository.
    ids = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line.startswith("USER_"))
    base = re.search(r"^ARG BASE_IMAGE=(.+)$", (project_copy / "Dockerfile").read_text(), re.MULTILINE)[1]
    inputs = f"u{ids['USER_UID']}-g{ids['USER_GID']}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"
    image = f"registry.example.com/team/{SLUG}:{commit}-{inputs}"
    assert f" IMAGE={image} " in printed(launch(project_copy, "job", env, tmp_path))
    # Files the image does not hold leave the tag: the job's own log (git-ignored too),
    # notes, an edited batch script.
    (project_copy / "slurm-gpu_lab-train-4242.out").write_text("the job's log\n")
    (project_copy / "notes.txt").write_text("not committed\n")
    (project_copy / "deploy/slurm/train.sbatch").write_text("#!/bin/sh\n")
    assert f" IMAGE={image} " in printed(launch(project_copy, "job", env, tmp_path))
    # Code the image holds, committed or not, makes it -dirty: an untracked module too.
    (project_copy / "src" / SLUG / "new.py").write_text("x = 1\n")
    assert f" IMAGE={image}-dirty " in printed(launch(project_copy, "job", env, tmp_path))
    (project_copy / "src" / SLUG / "new.py").unlink()
    (project_copy / "pyproject.toml").write_text((project_copy / "pyproject.toml").read_text() + "\n")
    assert f" IMAGE={image}-dirty " in printed(launch(project_copy, "job", env, tmp_path))
    tagged = printed(launch(project_copy, "job", {**env, "IMAGE_TAG": "v1"}, tmp_path))
    assert f" IMAGE={image.rsplit(':', 1)[0]}:v1 " in tagged
    env_file.write_text(env_file.read_text().replace("REGISTRY=registry.example.com/team/\n", ""))
    refused = launch(project_copy, "job", env, tmp_path)
    assert refused.returncode == 1 and "set REGISTRY in .env" in refused.stderr


def test_refusals_name_the_setting(project, tmp_path):
    outside = launch(project, "job", {"RUNTIME": "docker"}, tmp_path)
    assert outside.returncode != 0 and "not in a Slurm job" in outside.stderr
    wrong = launch(project, "job", job_env(project, "podman"), tmp_path)
    assert wrong.returncode == 1 and "RUNTIME=podman is not pyxis, apptainer or docker" in wrong.stderr
    elsewhere = launch(project, "job", job_env(project, "docker", SLURM_SUBMIT_DIR=str(tmp_path)), tmp_path)
    assert elsewhere.returncode == 1 and "is not the project folder" in elsewhere.stderr
    env = task_env(project, "docker")
    del env["RDZV_ENDPOINT"]
    missing = launch(project, "task", env, tmp_path)
    assert missing.returncode == 1 and "RDZV_ENDPOINT is not set" in missing.stderr


# ---------------------------------------------------------------------------------------
# Slurm tier: a real one-node Slurm (tests/slurm.py) and the Docker engine
# ---------------------------------------------------------------------------------------

STAND_IN = r"""#!/bin/sh
# Stand-in for docker/train (tests/test_slurm.py): the rendezvous, without torch.
exec perl -x "$0" "$@"
#!perl
use strict;
use warnings;
use Cwd;
use IO::Socket::INET;

my %e = map { $_ => ($ENV{$_} // '') }
  qw(NNODES NODE_RANK NPROC_PER_NODE RDZV_ENDPOINT RDZV_ID RDZV_TIMEOUT CUDA_VISIBLE_DEVICES);
my ($host, $port) = $e{RDZV_ENDPOINT} =~ /^(.+):(\d+)$/
  or die "RDZV_ENDPOINT=$e{RDZV_ENDPOINT} is not HOST:PORT\n";
my ($rank, $nnodes) = ($e{NODE_RANK}, $e{NNODES});
my $out = "/workspace/checkpoints";
mkdir $out;
$SIG{TERM} = sub {
  open my $f, '>', "$out/standin-$rank.stopped" or die;
  print $f "SIGTERM\n";
  close $f;
  # A slow checkpoint: SIGTERM is not enough, only SIGKILL ends this agent.
  if (-e "/workspace/standin-slow-stop") { $SIG{TERM} = 'IGNORE'; sleep 1 while 1 }
  exit 143;
};
my $deadline = time + $e{RDZV_TIMEOUT};
my @heard;
if ($rank == 0) {
  my $server = IO::Socket::INET->new(
    LocalAddr => '0.0.0.0', LocalPort => $port, Listen => 16, ReuseAddr => 1, Timeout => 2)
    or die "rank 0: cannot listen on port $port: $!\n";
  while (@heard < $nnodes - 1) {
    die "rank 0: only @{[scalar @heard]} of @{[$nnodes - 1]} agents came\n" if time > $deadline;
    my $peer = $server->accept or next;
    my $line = <$peer>;
    chomp $line;
    push @heard, $line;
    print $peer "rank 0 of $nnodes welcomes you to $e{RDZV_ID}\n";
    close $peer;
  }
} else {
  my $peer;
  until ($peer = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port)) {
    die "rank $rank: nobody at $host:$port\n" if time > $deadline;
    sleep 1;
  }
  print $peer "rank $rank of $nnodes joins $e{RDZV_ID}\n";
  my $reply = <$peer>;
  chomp $reply;
  push @heard, $reply;
}
open my $f, '>', "$out/standin-$rank.txt.tmp" or die;
print $f "$_=$e{$_}\n" for sort keys %e;
print $f "uid=$<\ngid=", (split ' ', $()[0], "\ncwd=", getcwd(), "\n";
print $f "heard=$_\n" for sort @heard;
close $f;
rename "$out/standin-$rank.txt.tmp", "$out/standin-$rank.txt" or die;
if (-e "/workspace/standin-hold") { sleep 1 while 1 }
"""


@dataclass
class Training:
    image: str
    stand_in: bool
    docker_gpus: str
    timeout: float


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[slurm_cluster.Slurm]:
    reason = slurm_cluster.missing()
    if reason:
        unavailable(reason)
    for running in slurm_cluster.cluster(tmp_path_factory.mktemp("slurm")):
        BENCHMARKS.append(f"one-node Slurm (munged, slurmctld, slurmd) up in {running.setup_seconds:.1f} s")
        yield running


@pytest.fixture
def training(docker_env) -> Training:
    """The stand-in on the base image, or SLURM_TEST_IMAGE's own docker/train."""
    image = os.environ.get("SLURM_TEST_IMAGE", "")
    return Training(
        image=image or docker_env.base_image,
        stand_in=not image,
        docker_gpus=os.environ.get("SLURM_TEST_DOCKER_GPUS", "none"),
        timeout=float(os.environ.get("SLURM_TEST_TIMEOUT", "180")),
    )


def submit(slurm, docker_env, training: Training, project: Path) -> str:
    """train.sbatch with the Docker runtime, as two tasks on the one node (its
    --ntasks-per-node=1 overridden too)."""
    if training.stand_in:
        (project / "docker/train").write_text(STAND_IN)
    env = {
        **slurm.env,
        "RUNTIME": "docker",
        "IMAGE": training.image,
        "DOCKER": docker_env.cli,
        "DOCKER_GPUS": training.docker_gpus,
        "RDZV_TIMEOUT": "60",
        "STOP_TIMEOUT": "3",  # below the test cluster's KillWait
    }
    submitted = slurm.run(
        "sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", f"--gpus-per-node={slurm_cluster.GPUS}",
        "--cpus-per-task=1", f"--partition={slurm_cluster.PARTITION}", "--time=10",
        f"--chdir={project}", "deploy/slurm/train.sbatch",
        cwd=project, env=env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def containers(docker_env, job_id: str, *flags: str) -> list[str]:
    listed = run([docker_env.cli, "ps", *flags, "--filter", f"name={SLUG}-job{job_id}-", "--format", "{{.Names}}"])
    assert listed.returncode == 0, listed.stderr
    return sorted(listed.stdout.split())


def job_output(project: Path, job_id: str) -> str:
    log = project / f"slurm-{SLUG}-train-{job_id}.out"
    return log.read_text(errors="replace") if log.exists() else "(no output file)"


def read_stand_in(project: Path, rank: int) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (project / f"checkpoints/standin-{rank}.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return values


@pytest.mark.docker
@pytest.mark.slurm
def test_two_agents_meet_through_the_rendezvous(slurm, docker_env, training, project_copy):
    job_id = submit(slurm, docker_env, training, project_copy)
    state = slurm.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, training.timeout)
    assert state == "COMPLETED", f"{job_output(project_copy, job_id)}\n{slurm.log()}"
    assert containers(docker_env, job_id, "--all") == []
    if not training.stand_in:
        return
    endpoint = f"{slurm.node}:{29400 + int(job_id) % 1000}"
    for rank, heard in ((0, f"rank 1 of 2 joins {job_id}"), (1, f"rank 0 of 2 welcomes you to {job_id}")):
        seen = read_stand_in(project_copy, rank)
        assert seen["NODE_RANK"] == [str(rank)]
        assert seen["NNODES"] == ["2"]
        assert seen["NPROC_PER_NODE"] == [str(slurm_cluster.GPUS)]  # the GPUs Slurm gave the node
        assert seen["RDZV_ENDPOINT"] == [endpoint]
        assert seen["RDZV_ID"] == [job_id]
        assert seen["RDZV_TIMEOUT"] == ["60"]
        assert seen["CUDA_VISIBLE_DEVICES"] == [""]  # Docker's --gpus decides, not Slurm's variable
        assert seen["uid"] == [str(os.getuid())] and seen["gid"] == [str(os.getgid())]
        assert seen["cwd"] == ["/workspace"]
        assert seen["heard"] == [heard]


@pytest.mark.docker
@pytest.mark.slurm
@pytest.mark.parametrize("agent", ["stops-on-sigterm", "needs-sigkill"])
def test_scancel_stops_and_removes_the_containers(slurm, docker_env, project_copy, agent):
    """Slurm signals the task's processes, not the containers the Docker daemon runs.
    An agent that stops on SIGTERM gets it (from the docker CLI, which passes signals on,
    and from launch's trap); one that outlasts SIGTERM (a checkpoint slower than Slurm's
    KillWait) is killed by the trap's `docker stop` after STOP_TIMEOUT, before Slurm's
    SIGKILL ends the task and the docker CLI (without the trap, that container is left
    running). Once Slurm is done with the job, no container is left."""
    (project_copy / "standin-hold").write_text("the stand-in keeps running until it is stopped\n")
    if agent == "needs-sigkill":
        (project_copy / "standin-slow-stop").write_text("SIGTERM is ignored\n")
    # Always the stand-in: an agent that holds, as training does.
    job_id = submit(slurm, docker_env, Training(docker_env.base_image, True, "none", 120), project_copy)
    deadline = time.monotonic() + 120
    while not all((project_copy / f"checkpoints/standin-{rank}.txt").exists() for rank in (0, 1)):
        state = slurm.job(job_id).get("JobState", "")
        assert state in {"PENDING", "RUNNING"}, f"{state}\n{job_output(project_copy, job_id)}\n{slurm.log()}"
        assert time.monotonic() < deadline, f"the agents did not meet\n{job_output(project_copy, job_id)}"
        time.sleep(0.5)
    assert containers(docker_env, job_id) == [f"{SLUG}-job{job_id}-task0", f"{SLUG}-job{job_id}-task1"]
    cancelled = time.monotonic()
    assert slurm.run("scancel", job_id).returncode == 0
    # Until Slurm has finished the job (no longer in squeue, not even COMPLETING).
    while slurm.run("squeue", "-h", "-j", job_id).stdout.strip():
        assert time.monotonic() - cancelled < 90, slurm.run("squeue", "-j", job_id).stdout
        time.sleep(0.2)
    seconds = time.monotonic() - cancelled
    BENCHMARKS.append(f"scancel of a 2-container Docker job, agent {agent}: Slurm done in {seconds:.1f} s")
    if agent == "needs-sigkill":  # docker stop's SIGKILL, not Slurm's (KillWait)
        assert seconds < slurm_cluster.KILL_WAIT
    assert slurm.job(job_id).get("JobState") == "CANCELLED"
    assert containers(docker_env, job_id, "--all") == []
    # The agents got SIGTERM (where training would save a checkpoint), not only SIGKILL.
    assert (project_copy / "checkpoints/standin-0.stopped").read_text() == "SIGTERM\n"
    assert (project_copy / "checkpoints/standin-1.stopped").read_text() == "SIGTERM\n"
