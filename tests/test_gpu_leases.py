"""GPUs leased, not grabbed (issue #26): GPU_DEVICES=auto takes, at `make up`, GPUs that
no other container on this engine holds and that have little memory in use; the lab
container is labelled with its lease; too few free GPUs are refused with the table of
who holds which; `make gpus` prints that table. A stand-in nvidia-smi lists four GPUs,
and a stand-in docker answers with other clones' containers (fast); the Docker tier
runs the same against containers on the real engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_values, fake_bin, run
from test_clones import FAKE_DOCKER, NVIDIA, clone, origin  # noqa: F401 - the committed project fixture
from test_readme import readme_block

UUIDS = [f"GPU-{digit * 4}0000-0000-0000-0000-000000000000" for digit in "abcd"]
# Four H100s: GPU 0 busy outside any container (70 GB in use), the others idle but for
# GPU 3's FAKE_GPU3_USED MiB.
SMI_FOUR = f"""#!/bin/sh
case "$*" in
  -L) i=0; for uuid in {" ".join(UUIDS)}; do echo "GPU $i: NVIDIA H100 (UUID: $uuid)"; i=$((i + 1)); done ;;
  *compute-apps*) echo "{UUIDS[0]}, 4242, python, 70000" ;;
  *index,uuid*) echo "0, {UUIDS[0]}, NVIDIA H100, 70123, 81559"
                echo "1, {UUIDS[1]}, NVIDIA H100, 1, 81559"
                echo "2, {UUIDS[2]}, NVIDIA H100, 3, 81559"
                echo "3, {UUIDS[3]}, NVIDIA H100, ${{FAKE_GPU3_USED:-2}}, 81559" ;;
  *compute_cap*) for i in 0 1 2 3; do echo "580.95.05, NVIDIA H100, 9.0"; done ;;
  *) for i in 0 1 2 3; do echo "580.95.05, NVIDIA H100"; done ;;
esac
"""


def container(name: str, project: str, labels: dict | None = None, device_ids: list[str] | None = None) -> dict:
    """A running container as `docker inspect` shows it."""
    requests = [{"Driver": "nvidia", "Count": 0, "DeviceIDs": device_ids, "Capabilities": [["gpu"]]}]
    return {
        "Name": f"/{name}",
        "Config": {"Labels": {"com.docker.compose.project": project, **(labels or {})}},
        "HostConfig": {"DeviceRequests": requests if device_ids is not None else None},
    }


# Bob's clone leased GPU 1 (its lease label); another tool's container asked Docker for GPU 2.
BOB = container(
    "gpu_lab-bob-abc123-lab-1",
    "gpu_lab-bob-abc123",
    {"dev.gpu-template.gpus": UUIDS[1], "dev.gpu-template.user": "bob"},
)
TRAINER = container("nightly-trainer", "", device_ids=["2"])


def setup(project: Path, tmp_path: Path, *args: str, containers=(), **env: str) -> subprocess.CompletedProcess:
    bin_dir = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": SMI_FOUR})
    full = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "GPU_"))},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_RUNTIMES": NVIDIA,
        "FAKE_PS": " ".join(f"c{number}" for number in range(len(containers))),
        "FAKE_INSPECT": json.dumps(list(containers)),
        **env,
    }
    return run([sys.executable, "docker/setup_env.py", *args], cwd=project, env=full)


def gpu_file(project: Path) -> tuple[list[str], dict[str, str]]:
    """The device ids the GPU file reserves, and its lease labels."""
    text = (project / "compose.gpu.yaml").read_text()
    ids = json.loads(re.search(r"device_ids: (\[.*\])", text)[1])
    labels = dict(re.findall(r"^\s+(dev\.gpu-template\.\w+): (\S+)$", text, re.MULTILINE))
    return ids, {key: json.loads(value) for key, value in labels.items()}


@pytest.fixture
def mine(origin, tmp_path) -> Path:  # noqa: F811 - origin is the fixture imported above
    """A fresh clone on the four-GPU host."""
    project = clone(origin, tmp_path / "alice" / "lab")
    assert setup(project, tmp_path).returncode == 0
    return project


def test_a_fresh_clone_on_a_host_with_several_gpus_leases_them(mine):
    env = env_values(mine / ".env")
    assert env["GPU_DEVICES"] == "auto" and env["GPU_COUNT"] == "1"
    assert env["COMPOSE_FILE"] == "compose.yaml:compose.gpu.yaml"


def test_auto_takes_a_gpu_no_one_holds_and_labels_the_container_with_it(mine, tmp_path):
    result = setup(mine, tmp_path, "--preflight", containers=[BOB, TRAINER])
    assert result.returncode == 0, result.stderr
    # GPU 0 is busy (70 GB in use outside any container), 1 is Bob's lease, 2 the trainer's.
    ids, labels = gpu_file(mine)
    assert ids == [UUIDS[3]]
    assert labels["dev.gpu-template.gpus"] == UUIDS[3] and labels["dev.gpu-template.user"]
    assert f"GPU_DEVICES=auto: this clone takes GPU 3 ({UUIDS[3]})" in result.stdout
    # With no one else on the engine, the least used GPU: 1.
    (mine / "compose.gpu.yaml").unlink()
    assert setup(mine, tmp_path, "--preflight").returncode == 0
    assert gpu_file(mine)[0] == [UUIDS[1]]


def test_too_few_free_gpus_are_refused_naming_their_holders(mine, tmp_path):
    env_file = mine / ".env"
    env_file.write_text(env_file.read_text().replace("GPU_COUNT=1", "GPU_COUNT=2"))
    before = (mine / "compose.gpu.yaml").read_text()
    result = setup(mine, tmp_path, "--preflight", containers=[BOB, TRAINER])
    assert result.returncode == 1
    assert "ERROR: GPU_DEVICES=auto: 1 GPU(s) free here, and this clone asks for GPU_COUNT=2:" in result.stderr
    rows = result.stderr.splitlines()
    assert any(
        re.fullmatch(r"\s+0\s+70123 / 81559 MiB\s+busy: 70123 MiB in use outside this engine's containers", row)
        for row in rows
    )
    assert any(re.fullmatch(r"\s+1\s+1 / 81559 MiB\s+gpu_lab-bob-abc123 \(bob\)", row) for row in rows)
    assert any(re.fullmatch(r"\s+2\s+3 / 81559 MiB\s+nightly-trainer", row) for row in rows)
    assert any(re.fullmatch(r"\s+3\s+2 / 81559 MiB\s+free", row) for row in rows)
    assert "share a GPU on purpose with its holder: GPU_DEVICES=<index> in .env" in result.stderr
    assert (mine / "compose.gpu.yaml").read_text() == before  # nothing leased
    # `make down`, `make shell`: the same settings never refuse what is running.
    assert setup(mine, tmp_path, containers=[BOB, TRAINER]).returncode == 0


def test_the_clones_own_lease_is_kept_while_its_container_uses_it(mine, tmp_path):
    assert setup(mine, tmp_path, "--preflight", containers=[BOB], FAKE_GPU3_USED="500").returncode == 0
    ids, _ = gpu_file(mine)
    assert ids == [UUIDS[2]]  # the least used free one (3 MiB against GPU 3's 500)
    own = container(
        f"{env_values(mine / '.env')['COMPOSE_PROJECT_NAME']}-lab-1",
        env_values(mine / ".env")["COMPOSE_PROJECT_NAME"],
        {"dev.gpu-template.gpus": UUIDS[2]},
    )
    # Its own training now fills GPU 2 (and GPU 3 became the least used): `make up` again keeps 2.
    result = setup(mine, tmp_path, "--preflight", containers=[BOB, own], FAKE_GPU3_USED="0")
    assert result.returncode == 0, result.stderr
    assert gpu_file(mine)[0] == [UUIDS[2]] and "takes GPU" not in result.stdout
    # Commands that start nothing keep the lease as it is, whoever holds what.
    assert setup(mine, tmp_path, containers=[own, container("x", "x", device_ids=["2"])]).returncode == 0
    assert gpu_file(mine)[0] == [UUIDS[2]]


def test_make_gpus_shows_who_holds_which_and_the_free_ones(mine, tmp_path):
    assert setup(mine, tmp_path, "--preflight", containers=[BOB, TRAINER]).returncode == 0
    project_name = env_values(mine / ".env")["COMPOSE_PROJECT_NAME"]
    own = container(f"{project_name}-lab-1", project_name, {"dev.gpu-template.gpus": UUIDS[3]})
    bin_dir = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": SMI_FOUR})
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_PS": "c0 c1 c2",
        "FAKE_INSPECT": json.dumps([BOB, TRAINER, own]),
    }
    [command] = readme_block(mine / "README.md", "gpus")  # as the README gives it
    result = run(["sh", "-c", command], cwd=mine, env={k: v for k, v in env.items() if not k.startswith("MAKE")})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\s+GPU\s+memory used\s+held by", lines[0])
    assert re.fullmatch(r"\s+1\s+1 / 81559 MiB\s+gpu_lab-bob-abc123 \(bob\)", lines[2])
    assert re.fullmatch(r"\s+3\s+2 / 81559 MiB\s+this clone", lines[4])
    assert f"This clone: GPU_DEVICES=auto, GPU_COUNT=1; last leased: {UUIDS[3]}" in result.stdout


@pytest.mark.parametrize("count", ["0", "two", "-1"])
def test_a_bad_gpu_count_is_named(mine, tmp_path, count):
    env_file = mine / ".env"
    env_file.write_text(env_file.read_text().replace("GPU_COUNT=1", f"GPU_COUNT={count}"))
    result = setup(mine, tmp_path, "--preflight")
    assert result.returncode == 1
    assert f"GPU_COUNT='{count}' in .env is not a number of GPUs (1 or more), e.g. GPU_COUNT=2" in result.stderr


# ---------------------------------------------------------------------------------------
# On the real engine: other clones' containers, labelled with their leases
# ---------------------------------------------------------------------------------------


@pytest.mark.docker
def test_leases_of_containers_on_the_real_engine(docker_env, bake, tmp_path):
    """Two other clones run containers on this engine, labelled with their leases (as
    their compose.gpu.yaml labels them): auto takes the one GPU left, `make gpus` names
    the holders, and asking for two is refused."""
    project = bake().project_path
    bin_dir = fake_bin(tmp_path, **{"nvidia-smi": SMI_FOUR})
    os.symlink(docker_env.cli, Path(bin_dir) / "docker")
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "GPU_", "MAKE"))},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "COMPOSE_FILE": "compose.yaml:compose.gpu.yaml",
    }
    env_file = project / ".env"
    env_file.write_text(re.sub(r"(?m)^GPU_DEVICES=.*$", "GPU_DEVICES=auto", env_file.read_text()))
    started = []
    try:
        for user, gpu in (("bob", UUIDS[3]), ("carol", UUIDS[2])):
            labels = {"com.docker.compose.project": f"gpu_lab-{user}-0a1b2c", "dev.gpu-template.gpus": gpu,
                      "dev.gpu-template.user": user}  # fmt: skip
            result = run(
                [docker_env.cli, "run", "-d", "--rm", *(f"--label={key}={value}" for key, value in labels.items()),
                 docker_env.base_image, "sleep", "600"]
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            started.append(result.stdout.strip())
        leased = run([sys.executable, "docker/setup_env.py", "--preflight"], cwd=project, env=env)
        assert leased.returncode == 0, leased.stderr
        assert gpu_file(project)[0] == [UUIDS[1]]  # 0 is busy, 2 and 3 are Carol's and Bob's
        table = run(["make", "gpus"], cwd=project, env=env).stdout
        assert re.search(r"(?m)^\s+3\s+2 / 81559 MiB\s+gpu_lab-bob-0a1b2c \(bob\)$", table), table
        assert re.search(r"(?m)^\s+2\s+3 / 81559 MiB\s+gpu_lab-carol-0a1b2c \(carol\)$", table), table
        env_file.write_text(env_file.read_text().replace("GPU_COUNT=1", "GPU_COUNT=2"))
        refused = run([sys.executable, "docker/setup_env.py", "--preflight"], cwd=project, env=env)
        assert refused.returncode == 1 and "gpu_lab-bob-0a1b2c (bob)" in refused.stderr
    finally:
        if started:
            run([docker_env.cli, "rm", "-f", *started])
