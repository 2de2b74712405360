"""`make doctor` against real conditions this machine can create: a port held by a
listening socket, src/ owned by another uid, no .env, CRLF in a script, no docker on
PATH, an nvidia-smi reporting an old driver. Docker itself is a stand-in script here,
so each test controls exactly what the engine answers."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest
from conftest import fake_bin, run, template_rules

FAKE_DOCKER = """#!/bin/sh
case "$*" in
  info) printf ' Server Version: %s\\n Runtimes: %s\\n Cgroup Driver: %s\\n' "${FAKE_DOCKER_VERSION:-24.0.7}" "${FAKE_RUNTIMES:-io.containerd.runc.v2 runc}" "${FAKE_CGROUP_DRIVER:-cgroupfs}" ;;
  "compose version --short") echo 2.29.1 ;;
  *) ;;
esac
"""


def doctor(project: Path, path: str, **env: str):
    """python3 docker/doctor.py with PATH limited to `path` plus the Python that runs it."""
    full_path = os.pathsep.join([path, str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if "NO_SYSTEM_BIN" in env:
        full_path = os.pathsep.join([path, str(Path(sys.executable).parent)])
        env.pop("NO_SYSTEM_BIN")
    result = run(
        [sys.executable, "docker/doctor.py"], cwd=project, env={"PATH": full_path, "HOME": str(project), **env}
    )
    return result.returncode, result.stdout


@pytest.fixture
def cpu_project(bake):
    """A project set to run on the CPU, so GPU checks stay out of the way unless asked."""
    project = bake().project_path
    env = project / ".env"
    env.write_text(env.read_text().replace("COMPOSE_FILE=compose.yaml:compose.gpu.yaml", "COMPOSE_FILE=compose.yaml"))
    return project


def test_healthy_cpu_project_passes(cpu_project, tmp_path):
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    assert code == 0, out
    assert "0 blocker(s)" in out and "GPU not requested" in out


def test_port_held_by_a_listening_socket(bake, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        project = bake(jupyter_host_port=port).project_path
        code, out = doctor(project, fake_bin(tmp_path, docker=FAKE_DOCKER), COMPOSE_FILE="compose.yaml")
    assert code == 1
    assert f"FAIL  port {port} on 127.0.0.1 is taken" in out and "pick a free JUPYTER_HOST_PORT" in out


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0, reason="giving src/ to another uid needs root")
def test_src_owned_by_another_uid(cpu_project, tmp_path):
    os.chown(cpu_project / "src", 54321, 54321)
    (cpu_project / "src").chmod(0o755)
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    assert code == 1
    assert "FAIL  src/ belongs to 54321:54321, so the container user" in out
    assert "sudo chown -R" in out


def test_missing_env_file_is_what_make_up_writes(cpu_project, tmp_path):
    (cpu_project / ".env").unlink()
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    assert code == 0, out
    assert "WARN  .env is missing (a fresh clone): `make up` writes it for this clone" in out


def test_crlf_in_a_script(cpu_project, tmp_path):
    script = cpu_project / "docker" / "lock"
    script.write_bytes(script.read_bytes().replace(b"\n", b"\r\n"))
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    assert code == 1 and "Windows (CRLF) line endings in docker/lock" in out


def test_docker_absent_from_path(cpu_project, tmp_path):
    code, out = doctor(cpu_project, fake_bin(tmp_path), NO_SYSTEM_BIN="1")
    assert code == 1 and "FAIL  docker is not on PATH" in out


def test_old_docker_engine(cpu_project, tmp_path):
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER), FAKE_DOCKER_VERSION="19.03.15")
    assert code == 1 and "Docker Engine 19.03.15 is older than 20.10" in out


# nvidia-smi as a GPU host answers doctor's queries; a driver before R510 (CC empty) has
# no compute_cap field and says so.
FAKE_SMI = """#!/bin/sh
case "$1" in
  *compute_cap*)
    if [ -z "${CC}" ]; then echo 'Field "compute_cap" is not a valid field to query.'; exit 2; fi
    echo "${DRIVER}, ${NAME}, ${CC}" ;;
  *) echo "${DRIVER}, ${NAME}" ;;
esac
"""
NVIDIA_RUNTIMES = "io.containerd.runc.v2 nvidia runc"
GPU_FILES = "compose.yaml:compose.gpu.yaml"  # the GPU requested, as .env says on a GPU host


def gpu_doctor(project, tmp_path, driver: str, name: str, capability: str = ""):
    path = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": FAKE_SMI})
    return doctor(
        project, path, FAKE_RUNTIMES=NVIDIA_RUNTIMES, DRIVER=driver, NAME=name, CC=capability, COMPOSE_FILE=GPU_FILES
    )


def test_old_driver_reported_by_nvidia_smi(bake, tmp_path):
    project = bake().project_path  # GPU requested (the default .env)
    code, out = gpu_doctor(project, tmp_path, "470.57.02", "Tesla T4")
    minimum = template_rules.min_driver(template_rules.load_table(), "13.0")
    assert code == 1
    assert f"FAIL  driver 470.57.02 (Tesla T4) is older than {minimum}, the minimum for CUDA 13.0" in out
    assert "ok    Docker has the NVIDIA runtime" in out


def test_a_cuda_12_project_runs_on_a_535_driver_through_minor_version_compatibility(bake, tmp_path):
    project = bake(cuda_version="12.8").project_path
    code, out = gpu_doctor(project, tmp_path, "535.288.01", "Tesla V100-SXM2-32GB", "7.0")
    assert code == 0, out
    assert "ok    driver 535.288.01 (Tesla V100-SXM2-32GB) runs CUDA 12.8 through minor version compatibility" in out
    assert "ok    GPU 0 (Tesla V100-SXM2-32GB, compute 7.0): native kernels in this CUDA 12.8 build" in out
    assert "FAIL" not in out, out


def test_a_gpu_the_build_has_no_kernels_for_names_the_build_that_has(bake, tmp_path):
    project = bake().project_path  # CUDA 13.0: Turing and newer
    code, out = gpu_doctor(project, tmp_path, "580.95.05", "NVIDIA GeForce GTX 1080 Ti", "6.1")
    assert code == 1
    assert "FAIL  GPU 0 (NVIDIA GeForce GTX 1080 Ti, compute 6.1) has no kernels in this CUDA 13.0 build" in out
    assert "fix: generate the project with cuda_version=12.6" in out


def test_ptx_only_needs_the_toolkits_driver(bake, tmp_path):
    """TensorFlow 2.21 has PTX, not native code, for Hopper: a warning on a driver that
    JIT-compiles it, a blocker on one that runs CUDA 12.5 only through minor version
    compatibility (no PTX JIT there)."""
    project = bake(framework="tensorflow").project_path
    code, out = gpu_doctor(project, tmp_path, "580.95.05", "NVIDIA H100 80GB HBM3", "9.0")
    assert "WARN  GPU 0 (NVIDIA H100 80GB HBM3, compute 9.0) has only PTX in this CUDA 12.5 build" in out
    code, out = gpu_doctor(project, tmp_path, "550.163.01", "NVIDIA H100 80GB HBM3", "9.0")
    assert code == 1
    assert "PTX needs driver >= 555.42.02" in out and "fix: update the NVIDIA driver to >= 555.42.02" in out


def test_gpu_requested_without_the_container_toolkit(bake, tmp_path):
    project = bake().project_path
    path = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": FAKE_SMI})
    code, out = doctor(project, path, DRIVER="590.10.01", NAME="NVIDIA H200", CC="9.0", COMPOSE_FILE=GPU_FILES)
    assert code == 1 and "Docker has no NVIDIA runtime" in out and "COMPOSE_FILE=compose.yaml" in out
    assert "ok    driver 590.10.01 (NVIDIA H200) runs CUDA 13.0" in out


def doctor_module(project: Path):
    """The project's docker/doctor.py, imported (it finds setup_env.py beside itself)."""
    spec = importlib.util.spec_from_file_location(f"doctor_{project.name}", project / "docker" / "doctor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_dev(tmp_path: Path, linked: list[str]) -> Path:
    """A /dev with NVIDIA device files (links to /dev/null and /dev/zero, character
    devices 1:3 and 1:5, as the real ones are 195:N) and /dev/char links for `linked`."""
    dev = tmp_path / "dev"
    (dev / "char").mkdir(parents=True)
    (dev / "nvidia-caps").mkdir()
    (dev / "nvidia0").symlink_to("/dev/null")
    (dev / "nvidia-caps" / "nvidia-cap1").symlink_to("/dev/zero")
    (dev / "nvidia-smi-not-a-device").write_text("")
    # NVIDIA's fix leaves these out, so asking for their links would warn after it.
    (dev / "nvidia-nvswitch0").symlink_to("/dev/full")
    (dev / "nvidia-fs0").symlink_to("/dev/full")
    for name in linked:
        (dev / "char" / name).symlink_to("../nvidia0")
    return dev


@pytest.mark.parametrize(
    ("driver", "linked", "expected"),
    [
        ("systemd", [], "WARN  /dev/char has no link to {dev}/nvidia-caps/nvidia-cap1, {dev}/nvidia0: with Docker's systemd cgroup driver"),
        ("systemd", ["1:3"], "WARN  /dev/char has no link to {dev}/nvidia-caps/nvidia-cap1: "),
        ("systemd", ["1:3", "1:5"], "ok    /dev/char links every NVIDIA device"),
        ("cgroupfs", [], None),  # only systemd's reload takes the devices away
    ],
)  # fmt: skip
def test_doctor_checks_the_dev_char_links_systemd_needs(cpu_project, tmp_path, capfd, driver, linked, expected):
    module = doctor_module(cpu_project)
    dev = fake_dev(tmp_path, linked)
    checks = module.Doctor()
    module.check_dev_char(checks, {"Cgroup Driver": driver}, dev)
    out = capfd.readouterr().out
    if expected is None:
        assert out == ""
        return
    assert expected.format(dev=dev) in out
    if expected.startswith("WARN"):
        assert "Failed to initialize NVML: Unknown Error" in out
        assert "fix: sudo nvidia-ctk system create-dev-char-symlinks --create-all" in out
        assert "71-nvidia-dev-char.rules" in out and 'DEVPATH=="/bus/pci/drivers/nvidia"' in out
        assert checks.warnings == 1 and checks.blockers == 0


def test_doctor_on_a_gpu_host_under_systemd_checks_dev_char(bake, tmp_path):
    project = bake().project_path
    path = fake_bin(tmp_path, docker=FAKE_DOCKER, **{"nvidia-smi": FAKE_SMI})
    code, out = doctor(project, path, FAKE_RUNTIMES=NVIDIA_RUNTIMES, FAKE_CGROUP_DRIVER="systemd", DRIVER="590.10.01",
                       NAME="NVIDIA H200", CC="9.0", COMPOSE_FILE=GPU_FILES)  # fmt: skip
    # This host's own /dev: here, no NVIDIA device files, so nothing lacks a link.
    if doctor_module(project).missing_dev_char_links(Path("/dev")):
        assert "WARN  /dev/char has no link to /dev/nvidia" in out, out
    else:
        assert code == 0 and "ok    /dev/char links every NVIDIA device" in out, out


def set_env_line(project: Path, key: str, value: bytes) -> int:
    """Replace KEY's line in .env with KEY=value (raw bytes); its line number."""
    env = project / ".env"
    lines = env.read_bytes().split(b"\n")
    number = next(i for i, line in enumerate(lines) if line.startswith(key.encode() + b"="))
    lines[number] = key.encode() + b"=" + value
    env.write_bytes(b"\n".join(lines))
    return number + 1


# (key, value, what doctor must say after "`.env` line N: ", and in the fix)
BAD_ENV_VALUES = [
    (
        "JUPYTER_HOST_PORT",
        b"88a8",
        "JUPYTER_HOST_PORT='88a8' is not a port (1-65535)",
        "set it to a free port, such as ",
    ),
    ("JUPYTER_HOST_PORT", b"70000", "JUPYTER_HOST_PORT='70000' is not a port (1-65535)", "free port"),
    ("JUPYTER_HOST_PORT", b"0", "JUPYTER_HOST_PORT='0' is not a port (1-65535)", "free port"),
    ("JUPYTER_HOST_PORT", b"", "JUPYTER_HOST_PORT='' is not a port (1-65535)", "free port"),
    # str.isdigit() says yes to these, int() then fails (or Compose does).
    ("JUPYTER_HOST_PORT", "8²".encode(), "JUPYTER_HOST_PORT='8²' is not a port (1-65535)", "free port"),
    ("JUPYTER_HOST_PORT", "８８８８".encode(), "JUPYTER_HOST_PORT='８８８８' is not a port", "free port"),
    (
        "USER_UID",
        b"abc",
        "USER_UID='abc' is not an id (a number from 1 to 4294967294, no leading zeros)",
        "set USER_UID=",
    ),
    ("USER_UID", b"0501", "USER_UID='0501' is not an id", "(`id -u` on the host)"),
    ("USER_UID", b"0", "USER_UID='0' is root's id in every base image", "set USER_UID="),
    ("USER_GID", b"1.5", "USER_GID='1.5' is not an id", "(`id -g` on the host)"),
    ("USER_GID", b"99999999999", "USER_GID='99999999999' is not an id", "set USER_GID="),
]


@pytest.mark.parametrize(("key", "value", "problem", "fix"), BAD_ENV_VALUES, ids=lambda v: repr(v)[:30])
def test_a_malformed_env_value_is_a_failure_naming_its_line(cpu_project, tmp_path, key, value, problem, fix):
    number = set_env_line(cpu_project, key, value)
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    assert code == 1 and "Traceback" not in out, out
    assert f"FAIL  `.env` line {number}: {problem}" in out
    fix_line = out.split(f"`.env` line {number}:")[1].splitlines()[1]
    assert fix_line.strip().startswith("fix: ") and fix in fix_line
    # The other checks still run, on the values that are sound.
    assert "GPU not requested" in out and "line endings" in out and "blocker(s)" in out


def test_an_env_line_that_is_not_utf8_is_a_failure_naming_it(cpu_project, tmp_path):
    number = set_env_line(cpu_project, "SHM_SIZE", b"8gb # gr\xf6\xdfer")  # Latin-1
    port_line = set_env_line(cpu_project, "JUPYTER_HOST_PORT", b"\xff\xfe")
    code, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    assert code == 1 and "Traceback" not in out, out
    assert f"FAIL  `.env` lines {port_line}, {number} are not UTF-8" in out
    assert "fix: save .env as UTF-8" in out
    assert "is not a port" not in out  # that line is reported once, as not UTF-8
    assert "ok    .env is present with a Jupyter token" in out and "line endings" in out


def test_the_ids_of_a_valid_env_are_compared_as_before(cpu_project, tmp_path):
    """Ids that are sound but not yours: still the warning, not a failure."""
    set_env_line(cpu_project, "USER_UID", b"54321")
    _, out = doctor(cpu_project, fake_bin(tmp_path, docker=FAKE_DOCKER))
    if hasattr(os, "getuid") and os.getuid() != 0:
        assert "WARN  .env has USER_UID/USER_GID 54321/" in out
    assert "`.env` line" not in out


def test_a_docker_socket_the_user_may_not_use_is_named_with_what_to_ask_for(bake, tmp_path):
    """What a student on a lab server meets first: the real docker CLI against a socket
    this user may not open (issue #27). Root may open any socket, so as root the check
    runs as nobody, on a copy of the project nobody can read."""
    project = bake().project_path
    socket_path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(socket_path))
        server.listen()
        os.chmod(socket_path, 0)  # not even its owner may connect
        env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "DOCKER_HOST": f"unix://{socket_path}"}
        command = [sys.executable, "docker/doctor.py"]
        if os.geteuid() == 0:
            command = ["python3", "docker/doctor.py"]  # the host's, as `make doctor` runs it
            readable = Path("/tmp") / f"doctor-{os.getpid()}"
            run(["cp", "-a", str(project), str(readable)])
            try:
                for folder in (tmp_path, readable):
                    run(["chmod", "-R", "a+rX", str(folder)])
                result = run(["runuser", "-u", "nobody", "--", "env", *(f"{k}={v}" for k, v in env.items()), *command],
                             cwd=readable)  # fmt: skip
            finally:
                run(["rm", "-rf", str(readable)])
            user = "nobody"
        else:
            result = run(command, cwd=project, env=env)
            user = os.environ.get("USER", "")
    assert f"FAIL  permission denied on the Docker engine's socket ({socket_path})" in result.stdout, result.stdout
    assert "your user is not in the `docker` group" in result.stdout
    assert f"sudo usermod -aG docker {user}" in result.stdout and "Docker without root" in result.stdout
    assert "the Docker engine does not answer" not in result.stdout
