"""One project, many clones on one server: each clone sets itself up (docker/setup_env.py
writes .env), gets its own compose project and image, takes only its GPUs, and hears
about a port, a GPU or a base image that would fail before Docker starts anything.

Docker and nvidia-smi are stand-in scripts here (each test controls what they answer);
the Docker tier runs two real clones on the real engine (test_docker_clones.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_values, fake_bin, run
from test_bake import compose_config

# A docker that answers `info` (runtimes from FAKE_RUNTIMES), records every other call
# in $DOCKER_CALLS, and for `ps -q` / `inspect` prints $FAKE_PS / $FAKE_INSPECT.
FAKE_DOCKER = """#!/bin/sh
case "$*" in
  info) printf ' Server Version: 24.0.7\\n Runtimes: %s\\n' "${FAKE_RUNTIMES:-io.containerd.runc.v2 runc}" ;;
  version) printf 'Server: Docker Engine - Community\\n Engine:\\n  Version: 24.0.7\\n' ;;
  "compose version --short") echo 2.29.1 ;;
  "ps -q") printf '%s\\n' "${FAKE_PS:-}" ;;
  inspect*) printf '%s\\n' "${FAKE_INSPECT:-[]}" ;;
  "image inspect"*) [ -z "${FAKE_NO_BASE:-}" ] ;;
  "manifest inspect"*) echo 'dial tcp: lookup registry-1.docker.io: no such host' >&2; exit 1 ;;
  *) echo "$*" >>"${DOCKER_CALLS:-/dev/null}" ;;
esac
"""
NVIDIA = "io.containerd.runc.v2 nvidia runc"


def git(*args: str, cwd: Path) -> None:
    # safe.directory: as root, the project belongs to the user it was generated for.
    cmd = ["git", "-c", "safe.directory=*", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    result = run(cmd, cwd=cwd)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def origin(bake, tmp_path) -> Path:
    """A generated project, committed to git as a team would: .env stays out of it."""
    project = bake().project_path
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "project", cwd=project)
    tracked = run(["git", "-c", "safe.directory=*", "ls-files"], cwd=project).stdout.split()
    assert ".env" not in tracked and "compose.gpu.yaml" not in tracked
    return project


def clone(origin: Path, dest: Path) -> Path:
    git("clone", "-q", str(origin), str(dest), cwd=origin.parent)
    return dest


def setup(project: Path, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    path = f"{fake_bin(tmp_path, docker=FAKE_DOCKER)}{os.pathsep}{os.environ['PATH']}"
    return run([sys.executable, "docker/setup_env.py", *args], cwd=project, env={**os.environ, "PATH": path, **env})


def test_a_fresh_clone_writes_its_own_env(origin, tmp_path):
    first = clone(origin, tmp_path / "alice" / "lab")
    second = clone(origin, tmp_path / "bob" / "lab")
    with socket.socket() as holder:  # the configured port, taken (say, by the first clone's Jupyter)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", int(env_values(origin / ".env")["JUPYTER_HOST_PORT"])))
        holder.listen()
        result = setup(first, tmp_path, FAKE_RUNTIMES=NVIDIA)
        setup(second, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ".env written for this clone" in result.stdout and "is taken here, so Jupyter gets" in result.stdout
    one, two = env_values(first / ".env"), env_values(second / ".env")
    assert (first / ".env").stat().st_mode & 0o777 == 0o600
    for values in (one, two):
        assert values["USER_UID"] == str(os.getuid()) or os.getuid() == 0
        assert len(values["JUPYTER_TOKEN"]) >= 40
    assert one["JUPYTER_TOKEN"] != two["JUPYTER_TOKEN"]
    assert one["COMPOSE_PROJECT_NAME"] != two["COMPOSE_PROJECT_NAME"]  # same user and folder name, other path
    assert one["IMAGE_NAME"] == f"{one['COMPOSE_PROJECT_NAME']}:dev" != two["IMAGE_NAME"]
    assert re.fullmatch(r"gpu_lab-[a-z0-9-]+-[0-9a-f]{6}", one["COMPOSE_PROJECT_NAME"])
    assert int(one["JUPYTER_HOST_PORT"]) > int(env_values(origin / ".env")["JUPYTER_HOST_PORT"])
    assert one["COMPOSE_FILE"] == "compose.yaml:compose.gpu.yaml"  # NVIDIA runtime
    assert two["COMPOSE_FILE"] == "compose.yaml"  # none: a CPU .env, `make up` works as it is
    assert (first / "compose.gpu.yaml").is_file()
    assert compose_config(first)["name"] == one["COMPOSE_PROJECT_NAME"]  # what Compose itself uses


def test_an_existing_env_is_never_overwritten_only_completed(origin, tmp_path):
    """A .env from an older template lacks the new keys: they are appended with their
    defaults, the user is told, and every existing value stays."""
    env = origin / ".env"
    old = "".join(
        line + "\n" for line in env.read_text().splitlines() if not line.startswith(("GPU_DEVICES=", "SHM_SIZE="))
    )
    env.write_text(old)
    result = setup(origin, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "added the settings a newer template introduced" in result.stdout
    assert "GPU_DEVICES=all" in result.stdout and "SHM_SIZE=8gb" in result.stdout
    text = env.read_text()
    assert text.startswith(old)
    assert env_values(env)["GPU_DEVICES"] == "all"
    again = setup(origin, tmp_path)
    assert again.stdout == "" and env.read_text() == text  # nothing left to add: silent, unchanged


def test_an_env_from_before_per_clone_names_keeps_its_compose_project(origin, tmp_path):
    """Its containers run under the project's own name: `make up` must find them, not
    start a second Jupyter on the same port. The user is told how to get names of its own."""
    env = origin / ".env"
    env.write_text(
        "".join(line + "\n" for line in env.read_text().splitlines() if not line.startswith("COMPOSE_PROJECT"))
    )
    result = setup(origin, tmp_path)
    assert env_values(env)["COMPOSE_PROJECT_NAME"] == "gpu_lab"
    assert "COMPOSE_PROJECT_NAME=gpu_lab keeps this clone's running containers" in result.stdout
    # Removing both names gives the clone names of its own, as for a fresh clone.
    env.write_text(
        "".join(
            line + "\n"
            for line in env.read_text().splitlines()
            if not line.startswith(("COMPOSE_PROJECT", "IMAGE_NAME"))
        )
    )
    setup(origin, tmp_path)
    values = env_values(env)
    assert values["COMPOSE_PROJECT_NAME"].startswith("gpu_lab-") and values["IMAGE_NAME"].startswith("gpu_lab-")


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        ("all", {"count": -1}),
        ("0,1", {"device_ids": ["0", "1"]}),
        ("GPU-6f1e4a52-1a2b-4c3d-9e8f-0123456789ab", {"device_ids": ["GPU-6f1e4a52-1a2b-4c3d-9e8f-0123456789ab"]}),
        ("MIG-0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", {"device_ids": ["MIG-0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"]}),
    ],
)
def test_gpu_devices_become_the_reservation(origin, tmp_path, value, devices):
    env = origin / ".env"
    env.write_text(re.sub(r"(?m)^GPU_DEVICES=.*$", f"GPU_DEVICES={value}", env.read_text()))
    assert setup(origin, tmp_path).returncode == 0
    config = compose_config(origin, "compose.yaml:compose.gpu.yaml")
    [reservation] = config["services"]["lab"]["deploy"]["resources"]["reservations"]["devices"]
    assert reservation == {"capabilities": ["gpu"], "driver": "nvidia", **devices}
    # NCCL's limits, as NVIDIA's containers have them (--ulimit memlock=-1 --ulimit stack=67108864).
    assert config["services"]["lab"]["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert "ulimits" not in compose_config(origin, "compose.yaml")["services"]["lab"]  # not without a GPU


NVIDIA_SMI_L = """#!/bin/sh
if [ "$1" = -L ]; then
  echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)"
  echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)"
  echo "  MIG 3g.40gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)"
fi
"""


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0,,1", "is not `auto`, `all` or a comma-separated list"),
        ("first", "is not `auto`, `all` or a comma-separated list"),
        ("0,0", "is not `auto`, `all` or a comma-separated list"),
        ("2", "names 2, which this host does not have"),
        ("GPU-deadbeef-0000-0000-0000-000000000000", "names GPU-deadbeef-0000-0000-0000-000000000000, which"),
    ],
)
def test_a_bad_gpu_devices_stops_make_up_before_docker(origin, tmp_path, value, message):
    env = origin / ".env"
    env.write_text(
        re.sub(r"(?m)^GPU_DEVICES=.*$", f"GPU_DEVICES={value}", env.read_text()).replace(
            "COMPOSE_FILE=compose.yaml\n", "COMPOSE_FILE=compose.yaml:compose.gpu.yaml\n"
        )
    )
    bin_dir = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": NVIDIA_SMI_L})
    calls = tmp_path / "docker-calls"
    result = run(
        ["make", "up"],
        cwd=origin,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_CALLS": str(calls)},
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not calls.exists()  # Docker was asked for nothing
    for good in (
        "1",
        "0,1",
        "1:0",
        "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "GPU-66666666-7777-8888-9999-000000000000",
    ):
        env.write_text(re.sub(r"(?m)^GPU_DEVICES=.*$", f"GPU_DEVICES={good}", env.read_text()))
        ok = run(
            [sys.executable, "docker/setup_env.py"], cwd=origin, env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
        )
        assert ok.returncode == 0, (good, ok.stderr)


def container_publishing(port: int) -> str:
    """`docker inspect` of another clone's container that publishes this port."""
    return (
        '[{"Name": "/gpu_lab-bob-abc123-lab-1", "Config": {"Labels": {"com.docker.compose.project": '
        f'"gpu_lab-bob-abc123"}}}}, "HostConfig": {{"PortBindings": {{"8888/tcp": [{{"HostIp": "127.0.0.1", '
        f'"HostPort": "{port}"}}]}}}}}}]'
    )


@pytest.mark.parametrize("holder_kind", ["process", "container"])
def test_a_taken_port_is_reported_with_what_holds_it(origin, tmp_path, holder_kind):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = origin / ".env"
        env.write_text(re.sub(r"(?m)^JUPYTER_HOST_PORT=.*$", f"JUPYTER_HOST_PORT={port}", env.read_text()))
        docker = {"FAKE_PS": "c0ffee", "FAKE_INSPECT": container_publishing(port)} if holder_kind == "container" else {}
        result = setup(origin, tmp_path, "--preflight", **docker)
    assert result.returncode == 1
    if holder_kind == "process":  # this test's own socket
        assert f"port {port} on 127.0.0.1 is taken by process " in result.stderr
        assert f"(pid {os.getpid()})" in result.stderr
    else:
        assert "taken by container gpu_lab-bob-abc123-lab-1 (compose project gpu_lab-bob-abc123)" in result.stderr


# ---------------------------------------------------------------------------------------
# doctor: the GPUs, who holds them, and the base image
# ---------------------------------------------------------------------------------------

SMI_USAGE = """#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA H100 (UUID: GPU-aaaa0000-0000-0000-0000-000000000000)"
      echo "GPU 1: NVIDIA H100 (UUID: GPU-bbbb0000-0000-0000-0000-000000000000)" ;;
  *compute-apps*) echo "GPU-aaaa0000-0000-0000-0000-000000000000, 4242, python, 70000" ;;
  *index,uuid*) echo "0, GPU-aaaa0000-0000-0000-0000-000000000000, NVIDIA H100, 70123, 81559"
                echo "1, GPU-bbbb0000-0000-0000-0000-000000000000, NVIDIA H100, 1, 81559" ;;
  *compute_cap*) echo "580.95.05, NVIDIA H100, 9.0"; echo "580.95.05, NVIDIA H100, 9.0" ;;
  *) echo "580.95.05, NVIDIA H100" ;;
esac
"""
# Another clone's container, holding GPU 0 by index.
OTHER_HOLDS_GPU0 = (
    '[{"Name": "/gpu_lab-bob-abc123-lab-1", "Config": {"Labels": {"com.docker.compose.project": "gpu_lab-bob-abc123"}},'
    ' "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["0"],'
    ' "Capabilities": [["gpu"]]}]}}]'
)


def doctor(project: Path, tmp_path: Path, **env: str) -> tuple[int, str]:
    bin_dir = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": SMI_USAGE})
    full = {"PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(project)}
    result = run([sys.executable, "docker/doctor.py"], cwd=project, env={**full, **env})
    return result.returncode, result.stdout


@pytest.mark.parametrize(("devices", "mine", "warned"), [("all", "01", True), ("1", "1", False), ("0", "0", True)])
def test_doctor_lists_the_gpus_marks_this_clones_and_warns_of_other_holders(origin, tmp_path, devices, mine, warned):
    env = origin / ".env"
    env.write_text(re.sub(r"(?m)^GPU_DEVICES=.*$", f"GPU_DEVICES={devices}", env.read_text()))
    _, out = doctor(
        origin, tmp_path, FAKE_RUNTIMES=NVIDIA, COMPOSE_FILE="compose.yaml:compose.gpu.yaml",
        FAKE_PS="c0ffee", FAKE_INSPECT=OTHER_HOLDS_GPU0,
    )  # fmt: skip
    busy = (
        "0 NVIDIA H100 GPU-aaaa0000-0000-0000-0000-000000000000: 70123 / 81559 MiB used; python (pid 4242, 70000 MiB)"
    )
    free = "1 NVIDIA H100 GPU-bbbb0000-0000-0000-0000-000000000000: 1 / 81559 MiB used; no processes"
    assert f"{'*' if '0' in mine else ' '} {busy}" in out, out
    assert f"{'*' if '1' in mine else ' '} {free}" in out, out
    holder = "WARN  GPU 0 is also held by running container(s) gpu_lab-bob-abc123-lab-1"
    assert (holder in out) is warned


def test_doctor_names_base_image_when_it_cannot_be_pulled(origin, tmp_path):
    image = "registry.invalid/nvidia/cuda:13.0.2-base-ubuntu24.04"
    _, out = doctor(origin, tmp_path, FAKE_NO_BASE="1", BASE_IMAGE=image)
    # A warning, not a blocker: the engine may pull through a mirror the CLI does not see.
    assert f"WARN  base image {image} is not on this machine, and its registry does not answer here" in out
    assert "no such host" in out and "set BASE_IMAGE in .env to a mirror's copy" in out


def test_setup_reads_env_values_as_compose_does_and_fills_empty_ones(origin, tmp_path):
    """Quotes and trailing comments are Compose's syntax too; a .env copied from
    .env.example by hand has empty names and token, which are filled in place."""
    env = origin / ".env"
    text = re.sub(r"(?m)^JUPYTER_HOST_PORT=(.*)$", r'JUPYTER_HOST_PORT="\1"', env.read_text())
    text = re.sub(r"(?m)^GPU_DEVICES=.*$", "GPU_DEVICES=0,1  # the two free ones", text)
    text = re.sub(r"(?m)^(COMPOSE_PROJECT_NAME|IMAGE_NAME|JUPYTER_TOKEN)=.*$", r"\1=", text)
    env.write_text(text)
    result = setup(origin, tmp_path, "--preflight")
    assert result.returncode == 0, result.stderr
    values = env_values(env)
    assert values["COMPOSE_PROJECT_NAME"].startswith("gpu_lab-") and len(values["JUPYTER_TOKEN"]) >= 40
    assert values["IMAGE_NAME"] == f"{values['COMPOSE_PROJECT_NAME']}:dev"
    assert 'device_ids: ["0", "1"]' in (origin / "compose.gpu.yaml").read_text()
    env.write_text(re.sub(r"(?m)^JUPYTER_HOST_PORT=.*$", "JUPYTER_HOST_PORT=jupyter", env.read_text()))
    result = setup(origin, tmp_path, "--preflight")
    assert result.returncode == 1 and "JUPYTER_HOST_PORT='jupyter' in .env is not a port" in result.stderr


def test_a_bad_gpu_devices_does_not_block_stopping(origin, tmp_path):
    env = origin / ".env"
    env.write_text(re.sub(r"(?m)^GPU_DEVICES=.*$", "GPU_DEVICES=first", env.read_text()))
    result = setup(origin, tmp_path)  # what `make down`, `make stop` and `make shell` run first
    assert result.returncode == 0 and "WARNING: GPU_DEVICES='first'" in result.stderr


def test_the_dev_container_sets_up_a_fresh_clone_too(origin, tmp_path):
    """VS Code runs initializeCommand on the host before the container starts: in a fresh
    clone it writes .env (here: no NVIDIA runtime, so CPU) before choosing GPU or CPU."""
    import json5

    fresh = clone(origin, tmp_path / "fresh")
    command = json5.loads((fresh / ".devcontainer" / "devcontainer.json").read_text())["initializeCommand"]
    path = f"{fake_bin(tmp_path, docker=FAKE_DOCKER)}{os.pathsep}{os.environ['PATH']}"
    result = run(["sh", "-c", command], cwd=fresh, env={**os.environ, "PATH": path})
    assert result.returncode == 0, result.stderr
    assert ".env written for this clone" in result.stdout
    assert "dev container: CPU only (COMPOSE_FILE=compose.yaml)" in result.stdout
    assert env_values(fresh / ".env")["COMPOSE_FILE"] == "compose.yaml"
