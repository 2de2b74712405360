"""Engine modes without an engine: what `docker info`, `docker version` and `podman info`
answer decides ENGINE_MODE, and ENGINE_MODE decides the container's user, its user
namespace, the GPU file and what `make up` and `make doctor` say. The stand-in `docker`
and `podman` scripts answer as the real ones do (their output measured on Docker 20.10
rootful and rootless and Podman 4.3's Docker-compatible API). The real engines run in
the rootless tier (tests/test_rootless.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import env_values, fake_bin, run
from test_bake import compose_config
from test_doctor import FAKE_SMI, doctor, doctor_module

# `docker info` and `docker version` as text. A rootless engine lists "rootless" among
# its security options (Docker 20.10 prints the bare name, later ones name=rootless).
FAKE_DOCKER = """#!/bin/sh
case "$1" in
  info) printf ' Server Version: 20.10.24\\n Runtimes: %s\\n Security Options:\\n  seccomp\\n   Profile: default\\n%b Cgroup Version: %s\\n' \\
          "${FAKE_RUNTIMES:-io.containerd.runc.v2 runc}" "${FAKE_SECURITY:-}" "${FAKE_CGROUP_VERSION:-2}" ;;
  version) printf 'Server:\\n %s:\\n  Version: 1\\n' "${FAKE_SERVER:-Engine}" ;;
  compose) echo 2.40.3 ;;
esac
"""
ROOTLESS = {"FAKE_SECURITY": "  rootless\\n"}
PODMAN = {"FAKE_SERVER": "Podman Engine"}
# Podman's own CLI, where no docker CLI is installed.
FAKE_PODMAN = """#!/bin/sh
[ "$1" = info ] && printf '{"host": {"security": {"rootless": %s}}, "store": {"graphDriverName": "%s"}}\\n' \\
  "${FAKE_ROOTLESS:-true}" "${FAKE_STORAGE:-overlay}"
"""


def engine_path(tmp_path: Path, monkeypatch, docker: bool = True, podman: bool = False, **answers: str) -> str:
    # `docker compose config` (compose_config) stays the real one: it needs no engine.
    real = os.environ.get("DOCKER") or shutil.which("docker")
    if real:
        monkeypatch.setenv("DOCKER", real)
    scripts = {**({"docker": FAKE_DOCKER} if docker else {}), **({"podman": FAKE_PODMAN} if podman else {})}
    folder = fake_bin(tmp_path, **scripts)
    # Only the stand-ins and the system's tools: no real engine answers.
    path = os.pathsep.join([folder, str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if not docker and Path("/usr/bin/docker").exists():
        path = os.pathsep.join([folder, str(Path(sys.executable).parent)])
    monkeypatch.setenv("PATH", path)
    for key, value in answers.items():
        monkeypatch.setenv(key, value)
    return path


@pytest.mark.parametrize(
    ("engine", "answers", "mode", "container_user", "lab", "lock", "userns"),
    [
        ("rootful Docker", {}, "docker", "", "dev", "1000:1000", ""),
        ("rootless Docker", ROOTLESS, "rootless-docker", "0:0", "0:0", "0:0", ""),
        ("Podman's Docker API", PODMAN, "podman", "", "dev", "1000:1000", "keep-id:uid=1000,gid=1000"),
    ],
)  # fmt: skip
def test_the_engine_decides_who_the_container_runs_as(
    bake, tmp_path, monkeypatch, engine, answers, mode, container_user, lab, lock, userns
):
    """The lab runs as "dev" (your ids) by name, which keeps its groups; the lock stage
    has no "dev" and runs as your ids. On rootless Docker both run as the container's
    root: you."""
    engine_path(tmp_path, monkeypatch, **answers)
    baked = bake(uid=1000, gid=1000)
    assert baked.exit_code == 0, baked.output
    values = env_values(baked.project_path / ".env")
    assert (values["ENGINE_MODE"], values["CONTAINER_USER"], values["USERNS_MODE"]) == (mode, container_user, userns)
    services = compose_config(baked.project_path, "compose.yaml", profiles=("tools",))["services"]
    assert (services["lab"]["user"], services["lock"]["user"]) == (lab, lock), engine
    for service in ("lab", "lock"):
        assert services[service].get("userns_mode", "") == userns
    assert services["lab"]["environment"]["ENGINE_MODE"] == mode  # Jupyter allows root on rootless Docker only


@pytest.mark.parametrize(("rootless", "mode"), [("true", "podman"), ("false", "docker")])
def test_podman_without_a_docker_cli_is_asked_itself(bake, tmp_path, monkeypatch, rootless, mode):
    engine_path(tmp_path, monkeypatch, docker=False, podman=True, FAKE_ROOTLESS=rootless)
    baked = bake()
    assert baked.exit_code == 0, baked.output
    assert env_values(baked.project_path / ".env")["ENGINE_MODE"] == mode


def test_editing_engine_mode_moves_the_container_user_and_make_up_checks_the_engine(bake, tmp_path, monkeypatch):
    """ENGINE_MODE is the one setting to change: the next make target rewrites the two
    values it implies, and `make up` refuses a mode the engine here contradicts."""
    path = engine_path(tmp_path, monkeypatch)
    project = bake(uid=1000, gid=1000).project_path
    env = project / ".env"
    env.write_text(env.read_text().replace("ENGINE_MODE=docker", "ENGINE_MODE=podman"))
    untouched = [
        line for line in env.read_text().splitlines() if not line.startswith(("CONTAINER_USER", "USERNS_MODE"))
    ]
    setup = run([sys.executable, "docker/setup_env.py"], cwd=project, env={"PATH": path})
    assert setup.returncode == 0, setup.stderr
    assert ".env: USERNS_MODE=keep-id:uid=1000,gid=1000, as ENGINE_MODE=podman needs" in setup.stdout
    values = env_values(project / ".env")
    assert (values["CONTAINER_USER"], values["USERNS_MODE"]) == ("", "keep-id:uid=1000,gid=1000")
    assert [
        line for line in env.read_text().splitlines() if not line.startswith(("CONTAINER_USER", "USERNS_MODE"))
    ] == untouched
    # The engine here is rootful Docker: `make up` stops before Docker starts, naming the fix.
    preflight = run([sys.executable, "docker/setup_env.py", "--preflight"], cwd=project, env={"PATH": path})
    assert preflight.returncode == 1
    assert (
        "ERROR: ENGINE_MODE=podman in .env, but the engine here is rootful Docker: files the container writes "
        "would not be yours: set ENGINE_MODE=docker in .env, then `make up`"
    ) in preflight.stderr
    env.write_text(env.read_text().replace("ENGINE_MODE=podman", "ENGINE_MODE=sudo"))
    preflight = run([sys.executable, "docker/setup_env.py", "--preflight"], cwd=project, env={"PATH": path})
    assert preflight.returncode == 1
    assert "ENGINE_MODE='sudo' in .env is not one of docker, rootless-docker, podman" in preflight.stderr


def test_make_runs_podman_compose_on_podman_and_docker_compose_elsewhere(bake, tmp_path, monkeypatch):
    """The Makefile's COMPOSE follows ENGINE_MODE (and, before .env exists, the engine):
    `make -n` shows each target's command as the user would run it."""
    engine_path(tmp_path, monkeypatch, **PODMAN)
    project = bake(uid=1000, gid=1000).project_path
    assert env_values(project / ".env")["ENGINE_MODE"] == "podman"
    dry = run(["make", "-n", "stop", "lock"], cwd=project)
    assert "docker/podman-compose stop" in dry.stdout, dry.stdout + dry.stderr
    assert "docker/podman-compose --profile tools run --rm --build lock with-build-ca docker/lock" in dry.stdout
    env = project / ".env"
    env.write_text(env.read_text().replace("ENGINE_MODE=podman", "ENGINE_MODE=docker"))
    assert "docker compose stop" in run(["make", "-n", "stop"], cwd=project).stdout
    # No .env yet (a fresh clone): the engine that answers decides, and nothing is written.
    env.unlink()
    assert run([sys.executable, "docker/setup_env.py", "--compose"], cwd=project).stdout == "docker/podman-compose\n"
    assert not env.exists()
    monkeypatch.delenv("FAKE_SERVER")
    assert run([sys.executable, "docker/setup_env.py", "--compose"], cwd=project).stdout == "docker compose\n"


def test_make_up_on_podman_without_podman_compose_says_how_to_install_it(bake, tmp_path, monkeypatch):
    path = engine_path(tmp_path, monkeypatch, **PODMAN)
    project = bake(uid=1000, gid=1000).project_path
    preflight = run([sys.executable, "docker/setup_env.py", "--preflight"], cwd=project)
    assert preflight.returncode == 1
    assert (
        "ERROR: ENGINE_MODE=podman, and podman-compose is not installed: the project runs its services with it: "
        "`sudo dnf install podman-compose` (RHEL family, from EPEL), elsewhere `pipx install podman-compose`"
    ) in preflight.stderr
    # With podman-compose on PATH, the same check passes.
    (Path(path.split(os.pathsep)[0]) / "podman-compose").write_text("#!/bin/sh\necho 'podman-compose version 1.6.0'\n")
    (Path(path.split(os.pathsep)[0]) / "podman-compose").chmod(0o755)
    preflight = run([sys.executable, "docker/setup_env.py", "--preflight"], cwd=project)
    assert preflight.returncode == 0, preflight.stderr


def test_podman_compose_passes_the_files_the_token_and_the_image_format(bake, tmp_path, monkeypatch):
    """docker/podman-compose: COMPOSE_FILE from .env plus compose.podman.yaml, the token
    in a file only the user reads, Docker's image format; the arguments as given."""
    path = engine_path(tmp_path, monkeypatch, **PODMAN)
    project = bake(uid=1000, gid=1000).project_path
    (Path(path.split(os.pathsep)[0]) / "podman-compose").write_text(
        '#!/bin/sh\necho "COMPOSE_FILE=$COMPOSE_FILE BUILDAH_FORMAT=$BUILDAH_FORMAT TMPDIR=$TMPDIR $*"\n'
    )
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    (Path(path.split(os.pathsep)[0]) / "podman-compose").chmod(0o755)
    shown = run(["docker/podman-compose", "up", "-d"], cwd=project)
    assert shown.returncode == 0, shown.stderr
    files = env_values(project / ".env")["COMPOSE_FILE"]
    # TMPDIR: a folder of the user's own (Podman 4.3 shares TMPDIR/buildah-cache between users).
    own = tmp_path / f"podman-{os.getuid()}"
    assert shown.stdout == f"COMPOSE_FILE={files}:compose.podman.yaml BUILDAH_FORMAT=docker TMPDIR={own} up -d\n"
    assert own.is_dir() and own.stat().st_mode & 0o777 == 0o700
    token = project / ".jupyter-token"
    assert token.read_text() == env_values(project / ".env")["JUPYTER_TOKEN"]
    assert token.stat().st_mode & 0o777 == 0o600
    # Read by podman-compose only (Docker Compose refuses a secret with a file and an
    # environment variable, and never sees this file).
    podman = yaml.safe_load((project / "compose.podman.yaml").read_text())
    assert podman["secrets"]["jupyter_token"] == {"environment": "", "file": ".jupyter-token"}
    assert podman["services"]["lab"]["group_add"] == ["venv"]
    assert podman["x-podman"] == {"in_pod": False}


NVIDIA_CTK_SPEC = """---
cdiVersion: 0.5.0
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
  env:
  - NVIDIA_VISIBLE_DEVICES=void
devices:
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: "0"
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c
- containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
  name: all
kind: nvidia.com/gpu
"""


def test_cdi_specs_are_read_for_the_gpus_they_name(bake, tmp_path, monkeypatch):
    project = bake().project_path
    setup = doctor_module(project).setup_env
    specs = tmp_path / "cdi"
    specs.mkdir()
    (specs / "nvidia.yaml").write_text(NVIDIA_CTK_SPEC)
    (specs / "other.json").write_text('{"cdiVersion": "0.6.0", "kind": "vendor.com/fpga", "devices": [{"name": "0"}]}')
    (specs / "nvidia-mig.json").write_text('{"kind": "nvidia.com/gpu", "devices": [{"name": "0:1"}]}')
    (specs / "notes.txt").write_text("kind: nvidia.com/gpu\n- name: 9\n")
    monkeypatch.setattr(setup, "CDI_SPEC_DIRS", (str(specs), str(tmp_path / "missing")))
    assert setup.cdi_gpu_devices() == {
        str(specs / "nvidia-mig.json"): ["0:1"],
        str(specs / "nvidia.yaml"): ["0", "GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c", "all"],
    }


@pytest.mark.parametrize(
    ("mode", "devices", "expected"),
    [
        ("podman", "all", ["nvidia.com/gpu=all"]),
        ("podman", "0,GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c", ["nvidia.com/gpu=0", "nvidia.com/gpu=GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c"]),
        ("rootless-docker", "1", None),
    ],
)  # fmt: skip
def test_the_gpu_file_follows_the_engine(bake, mode, devices, expected):
    """Podman: CDI device names (Compose passes them to the engine as CDI requests).
    Docker: the NVIDIA runtime's reservation. Rootless engines: no ulimits, which they
    cannot raise above the user's own (the container would not start)."""
    project = bake().project_path
    env = project / ".env"
    text = env.read_text().replace("ENGINE_MODE=docker", f"ENGINE_MODE={mode}")
    env.write_text(text.replace("GPU_DEVICES=all", f"GPU_DEVICES={devices}"))
    assert run([sys.executable, "docker/setup_env.py"], cwd=project).returncode == 0
    lab = compose_config(project, "compose.yaml:compose.gpu.yaml")["services"]["lab"]
    assert "ulimits" not in lab
    if expected is None:
        assert lab["deploy"]["resources"]["reservations"]["devices"] == [
            {"capabilities": ["gpu"], "driver": "nvidia", "device_ids": devices.split(",")}
        ]
        return
    assert "deploy" not in lab
    assert [device["source"] for device in lab["devices"]] == expected


def test_rootful_docker_keeps_nvidias_limits(bake):
    lab = compose_config(bake().project_path, "compose.yaml:compose.gpu.yaml")["services"]["lab"]
    assert lab["ulimits"] == {"memlock": -1, "stack": 67108864}


def test_doctor_names_the_rootless_engine_and_what_it_needs_of_the_host(bake, tmp_path, monkeypatch):
    path = engine_path(tmp_path, monkeypatch, **ROOTLESS, FAKE_CGROUP_VERSION="1")
    project = bake().project_path
    code, out = doctor(project, path, COMPOSE_FILE="compose.yaml", **ROOTLESS, FAKE_CGROUP_VERSION="1")
    assert "ok    engine mode rootless-docker: rootless Docker: the container runs as its root" in out
    assert "WARN  cgroup v1 under a rootless engine: containers get no memory or CPU limits" in out
    user = doctor_module(project).setup_env.user_name(str(os.getuid()))
    ranges = [line for line in Path("/etc/subuid").read_text().splitlines()] if Path("/etc/subuid").exists() else []
    if not any(line.split(":")[0] in (user, str(os.getuid())) for line in ranges):
        assert code == 1
        assert f"FAIL  /etc/subuid gives {user} 0 subordinate ids, fewer than 65536" in out
        assert f"fix: sudo usermod --add-subuids 100000-165535 {user}" in out


def test_doctor_on_podman_with_a_gpu_needs_a_cdi_spec_naming_it(bake, tmp_path, monkeypatch):
    path = engine_path(tmp_path, monkeypatch, **PODMAN, podman=True, FAKE_STORAGE="vfs")
    monkeypatch.setenv("PATH", os.pathsep.join([fake_bin(tmp_path, **{"nvidia-smi": FAKE_SMI}), path]))
    project = bake().project_path
    module = doctor_module(project)
    monkeypatch.setattr(module.setup_env, "CDI_SPEC_DIRS", (str(tmp_path / "cdi"),))
    env = {"ENGINE_MODE": "podman", "COMPOSE_FILE": "compose.yaml:compose.gpu.yaml", "GPU_DEVICES": "all"}
    checks = module.Doctor()
    assert module.check_gpu_access(checks, env, "podman") is False
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "nvidia.yaml").write_text(NVIDIA_CTK_SPEC.replace("name: all", "name: x"))
    assert module.check_gpu_access(checks, env, "podman") is False
    (tmp_path / "cdi" / "nvidia.yaml").write_text(NVIDIA_CTK_SPEC)
    assert module.check_gpu_access(checks, env, "podman") is True
    module.check_podman_storage(checks)
    assert checks.blockers == 2 and checks.warnings == 1
