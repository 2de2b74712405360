"""Checks the host (or, with --in-container, the running container) for the problems
that stop GPU containers most often, before they bite, and prints the fix for each.

    make doctor                                    # on the host, before `make up`
    docker compose exec lab python docker/doctor.py --in-container

Exit status: 1 when a blocker was found, 0 when only warnings (or nothing) were.
Standard library only, so it runs with any Python 3.8+ on Linux, macOS or WSL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# docker/setup_env.py: what `make up` checks before Docker starts (GPU_DEVICES, the port).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_env

setup_env.smi_warns = False  # a hung nvidia-smi is a FAIL of the GPU check here

# Facts of this project, written by the template from its compatibility table.
CUDA_VERSION = "{{ cookiecutter.cuda_version }}"
# The driver rule (README: Choosing the CUDA build): from MIN_DRIVER on, the build runs
# through CUDA minor version compatibility; from TOOLKIT_DRIVER on, with every feature.
MIN_DRIVER = "{{ cookiecutter.__min_driver }}"
TOOLKIT_DRIVER = "{{ cookiecutter.__toolkit_driver }}"
# Every CUDA build of this framework: its driver floor and the GPU code compiled into it,
# to name the build that fits a GPU this one has no kernels for.
# fmt: off
BUILDS = json.loads(
    r"""{{ doctor_builds(cookiecutter) | tojson }}"""
)
# fmt: on
FRAMEWORK = "{{ cookiecutter.framework }}"
# The template's Jupyter port: where the suggestion of a free one starts.
JUPYTER_HOST_PORT = "{{ cookiecutter.jupyter_host_port }}"
# The Dockerfile's default base image (BASE_IMAGE in .env replaces it).
DEFAULT_BASE_IMAGE = "{{ cookiecutter.__base_image }}"
MIN_DOCKER = (20, 10)
MIN_COMPOSE = (2, 20)
# Files that run inside Linux: a Windows checkout with CRLF breaks them.
LF_FILES = ["Dockerfile", "compose.yaml", "compose.gpu.yaml", "Makefile", ".env", ".env.example", "team.env"]
LF_DIRS = ["docker", ".devcontainer"]
MIN_SHM_BYTES = 1 << 30
# What nvidia-smi answers when it works (ASCII digits: anything else is no answer).
DRIVER_VERSION = re.compile(r"[0-9]+(\.[0-9]+)+")
COMPUTE_CAPABILITY = re.compile(r"[0-9]+\.[0-9]+")


class Doctor:
    def __init__(self) -> None:
        self.blockers = 0
        self.warnings = 0

    def ok(self, message: str) -> None:
        print(f"  ok    {message}")

    def warn(self, message: str, fix: str) -> None:
        self.warnings += 1
        print(f"  WARN  {message}\n        fix: {fix}")

    def fail(self, message: str, fix: str) -> None:
        self.blockers += 1
        print(f"  FAIL  {message}\n        fix: {fix}")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    return setup_env.run(cmd)


def read_env(doctor: Doctor) -> dict[str, str] | None:
    """.env as `make up` and Compose read it (quotes, trailing comments). Lines that are
    not UTF-8 and values the build or `up` would fail on are failures naming their line;
    such values are left out, so the other checks go on with the sound ones."""
    path = PROJECT / ".env"
    if not os.path.lexists(path):
        return None
    try:
        text, not_utf8 = setup_env.decode_env(setup_env.read_bytes(path))
        if not_utf8:
            doctor.fail(setup_env.not_utf8_problem(".env", not_utf8), setup_env.not_utf8_fix(".env"))
        values = setup_env.parse_env(text)
    except setup_env.EnvError as error:  # unreadable, or not as Compose reads it: nothing to check
        doctor.fail(error.problem, error.fix)
        return None
    check_env_mode(doctor, path)
    lines = setup_env.env_line_numbers(text)
    for key, why, fix in env_value_problems(values):
        if lines[key] not in not_utf8:  # that line is reported already
            doctor.fail(f"`.env` line {lines[key]}: {key}={values[key]!r} {why}", fix)
        del values[key]
    return {**values, **{key: os.environ[key] for key in ("COMPOSE_FILE",) if key in os.environ}}


def check_env_mode(doctor: Doctor, path: Path) -> None:
    """The token in .env is the only barrier to Jupyter for every user of this host."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        doctor.fail(
            f".env is readable by other users of this host (mode {mode:o}), and it holds the Jupyter token",
            "chmod 600 .env (make up does it when it can), then a new token if others may have read it",
        )


def env_value_problems(values: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, why, fix) for each value in .env that is not what its key needs."""
    found = []
    if "JUPYTER_HOST_PORT" in values and setup_env.port_number(values["JUPYTER_HOST_PORT"]) is None:
        free = setup_env.free_port(setup_env.port_number(JUPYTER_HOST_PORT) or 8888)
        found.append(("JUPYTER_HOST_PORT", "is not a port (1-65535)", f"set it to a free port, such as {free}"))
    ids = setup_env.host_ids("1000", "1000")
    for key, mine, command in (("USER_UID", ids[0], "id -u"), ("USER_GID", ids[1], "id -g")):
        why = setup_env.id_problem(values[key]) if key in values else None
        if why:
            found.append((key, why, f"set {key}={mine} (`{command}` on the host)"))
    return found


def check_env(doctor: Doctor, env: dict[str, str] | None) -> None:
    if env is None:
        if not os.path.lexists(PROJECT / ".env"):  # else read_env named what is wrong with it
            doctor.warn(
                ".env is missing (a fresh clone): `make up` writes it for this clone",
                "nothing to do, or write it now: python3 docker/setup_env.py",
            )
        return
    if not env.get("JUPYTER_TOKEN"):
        doctor.fail(
            "JUPYTER_TOKEN is empty in .env", 'set it: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    else:
        doctor.ok(".env is present with a Jupyter token")
    getuid = getattr(os, "getuid", None)
    # Ids that are not ids were reported by read_env and left out.
    if getuid and getuid() != 0 and "USER_UID" in env and "USER_GID" in env:
        ids = (str(getuid()), str(os.getgid()))
        if (env.get("USER_UID"), env.get("USER_GID")) != ids:
            doctor.warn(
                f".env has USER_UID/USER_GID {env.get('USER_UID')}/{env.get('USER_GID')}, you are {ids[0]}/{ids[1]}",
                f"set USER_UID={ids[0]} and USER_GID={ids[1]} in .env, then `make up` (files the container writes would not be yours)",
            )
        else:
            doctor.ok(f".env's user ids match yours ({ids[0]}/{ids[1]})")


def check_team_settings(doctor: Doctor, env: dict[str, str] | None) -> None:
    """Where each of the lab's settings comes from: team.env (committed), this clone's
    .env (which overrides it), your shell's environment (which overrides both, as
    Compose takes it), or the template's default."""
    try:
        team = setup_env.read_team_env()
    except setup_env.EnvError as error:
        doctor.fail(error.problem, error.fix)
        return
    env = env or {}
    for key in setup_env.TEAM_KEYS:
        value = os.environ[key] if key in os.environ else env.get(key, "")
        if key in os.environ:
            where = "your shell's environment"
        elif not value:
            where = "the template's default"
        elif key not in team:
            where = ".env"
        elif value == team[key]:
            where = "team.env"
        else:
            where = f".env, overriding team.env's {team[key]!r}"
        doctor.ok(f"{key}={value or '(unset)'}  from {where}")


# The Docker CLI's words when the engine's socket refuses this user.
SOCKET_DENIED = re.compile(
    r"permission denied while trying to connect to the Docker daemon socket at (?:unix://)?([^\s:]+)", re.IGNORECASE
)


def docker_info() -> dict[str, str] | None:
    """`docker info`'s "Key: value" lines (plain text: the same on every engine version)."""
    result = run(["docker", "info"])
    if result is None or result.returncode != 0:
        return None
    return {
        key.strip(): value.strip() for key, _, value in (line.partition(":") for line in result.stdout.splitlines())
    }


def check_docker(doctor: Doctor) -> dict[str, str] | None:
    if not shutil.which("docker"):
        doctor.fail("docker is not on PATH", "install Docker Engine (Linux) or Docker Desktop (Windows, macOS)")
        return None
    info = docker_info()
    if info is None:
        answer = run(["docker", "info"])
        denied = SOCKET_DENIED.search(answer.stdout + answer.stderr if answer else "")
        if denied:
            # What a student on a lab server meets first: an engine they are not allowed to use.
            user = setup_env.user_name(str(os.getuid())) or "YOUR_USER"
            doctor.fail(
                f"permission denied on the Docker engine's socket ({denied[1]}): your user is not in the "
                "`docker` group (`id` lists your groups)",
                f"ask the server's admin to add you (`sudo usermod -aG docker {user}`), then "
                "log out and in again; membership is as good as root on this server, so some labs say no: then "
                'rootless Docker or Podman, which need no group (README "Docker without root")',
            )
            return None
        doctor.fail(
            "the Docker engine does not answer",
            "start it (sudo systemctl start docker, or Docker Desktop) and check you may use it (docker info)",
        )
        return None
    version = info.get("Server Version", "")
    if version_tuple(version) < MIN_DOCKER:
        doctor.fail(f"Docker Engine {version} is older than 20.10", "upgrade Docker Engine")
    else:
        doctor.ok(f"Docker Engine {version}")
    compose = run(["docker", "compose", "version", "--short"])
    if compose is None or compose.returncode != 0:
        doctor.fail(
            "Docker Compose v2 (`docker compose`) is missing",
            "install the docker-compose-plugin package (the old `docker-compose` v1 will not do)",
        )
    elif version_tuple(compose.stdout) < MIN_COMPOSE:
        doctor.fail(f"Docker Compose {compose.stdout.strip()} is older than 2.20", "upgrade the docker-compose-plugin")
    else:
        doctor.ok(f"Docker Compose {compose.stdout.strip()}")
    return info


# Podman's first release that takes keep-id's uid and gid (USERNS_MODE in .env).
MIN_PODMAN = (4, 3)


def check_podman(doctor: Doctor) -> dict[str, str] | None:
    """Podman in place of Docker (ENGINE_MODE=podman): its version, as `podman version`
    prints it; podman-compose is checked with the engine mode."""
    result = run(["podman", "version"]) if shutil.which("podman") else None
    if result is None or result.returncode != 0:
        doctor.fail(
            "ENGINE_MODE=podman, and podman does not answer",
            "install it (sudo dnf install podman; sudo apt-get install podman catatonit) and check `podman info`",
        )
        return None
    version = re.search(r"^Version:\s*(\S+)", result.stdout, re.MULTILINE)
    shown = version.group(1) if version else "unknown"
    if version_tuple(shown) < MIN_PODMAN:
        doctor.fail(f"Podman {shown} is older than 4.3: it cannot map your ids (keep-id)", "upgrade Podman")
    else:
        doctor.ok(f"Podman {shown}")
    return {"Server Version": shown, "Runtimes": ""}


# Where a rootless engine takes the user's subordinate ids from, and the fix for each.
ID_RANGES = {"/etc/subuid": "--add-subuids", "/etc/subgid": "--add-subgids"}
# The NVIDIA Container Toolkit's settings, which rootless Docker needs changed.
TOOLKIT_CONFIG = Path("/etc/nvidia-container-runtime/config.toml")


def check_engine(doctor: Doctor, env: dict[str, str] | None) -> str | None:
    """The engine mode (README "Docker without root"): what it means for your files, that
    .env's ENGINE_MODE matches it, and what a rootless engine needs of the host."""
    info = setup_env.docker_info_text()
    detected = setup_env.detect_engine(info)
    mode = (env or {}).get("ENGINE_MODE", "docker")
    problem = setup_env.engine_mode_problem(env or {}, detected)
    if problem:
        doctor.fail(*problem)
    elif detected is not None:
        doctor.ok(f"engine mode {detected}: {setup_env.ENGINE_MODES[detected]}")
    if detected not in ("rootless-docker", "podman"):
        return detected or mode
    check_id_ranges(doctor)
    if not shutil.which("newuidmap") or not shutil.which("newgidmap"):
        doctor.fail(
            "newuidmap/newgidmap are missing: a rootless engine cannot map the container's ids",
            "install them: sudo apt-get install uidmap (Debian, Ubuntu); sudo dnf install shadow-utils (RHEL family)",
        )
    if info is not None and re.search(r"^\s*Cgroup Version:\s*1\s*$", info, re.MULTILINE):
        doctor.warn(
            "cgroup v1 under a rootless engine: containers get no memory or CPU limits (shared memory still works)",
            "boot the host with cgroup v2 (the default of current distributions: systemd.unified_cgroup_hierarchy=1)",
        )
    if detected == "podman":
        check_podman_storage(doctor)
        check_podman_tools(doctor)
    return detected


# Where Podman finds the init process compose.yaml's `init: true` asks for.
CATATONIT = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit", "/usr/local/libexec/podman/catatonit")


def check_podman_tools(doctor: Doctor) -> None:
    """What `make` needs beside Podman: podman-compose, and the init process."""
    problem = setup_env.podman_problem({"ENGINE_MODE": "podman"})
    if problem:
        doctor.fail(*problem)
    else:
        version = run(["podman-compose", "--version"])
        said = [line for line in (version.stdout if version else "").splitlines() if "podman-compose" in line]
        shown = said[0].strip() if said else "podman-compose"
        doctor.ok(f"{shown}: make runs the services with it (docker/podman-compose)")
    if not any(os.path.exists(path) for path in CATATONIT):
        doctor.fail(
            "catatonit is missing: Podman cannot start the container's init process (compose.yaml: init: true)",
            "sudo apt-get install catatonit (Debian, Ubuntu); RHEL-family podman includes it",
        )


def check_id_ranges(doctor: Doctor) -> None:
    """The subordinate id ranges a rootless engine maps container ids other than root to."""
    user = setup_env.user_name(str(os.getuid())) if hasattr(os, "getuid") else ""
    for path, option in ID_RANGES.items():
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        ranges = [line.split(":") for line in lines if line.count(":") == 2]
        mine = [int(count) for owner, _, count in ranges if owner in (user, str(os.getuid())) and count.isdigit()]
        if sum(mine) < 65536:
            doctor.fail(
                f"{path} gives {user or 'you'} {sum(mine)} subordinate ids, fewer than 65536: the engine cannot "
                "map the image's users",
                f"sudo usermod {option} 100000-165535 {user or '$USER'} (a range no other user has), then restart the engine",
            )
        else:
            doctor.ok(f"{path} gives {user} {sum(mine)} subordinate ids")


def check_podman_storage(doctor: Doctor) -> None:
    info = run(["podman", "info", "--format", "json"]) if shutil.which("podman") else None
    try:
        driver = json.loads(info.stdout)["store"]["graphDriverName"] if info and info.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        driver = None
    if driver == "vfs":
        doctor.warn(
            "Podman stores images with the vfs driver: each layer is a full copy (a 6 GB image takes tens of GB) and builds are slow",
            'install fuse-overlayfs, put `[storage]` / `driver = "overlay"` in ~/.config/containers/storage.conf, '
            "then `podman system reset` (it deletes your Podman images)",
        )
    elif driver:
        doctor.ok(f"Podman stores images with the {driver} driver")


def check_gpu_access(doctor: Doctor, env: dict[str, str], mode: str | None) -> bool:
    """How a rootless engine reaches the GPUs: Podman through a CDI spec naming them,
    rootless Docker through the toolkit with no-cgroups. False when that cannot work."""
    if mode == "podman":
        specs = setup_env.cdi_gpu_devices()
        generate = "sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml (again after each driver update)"
        if not specs:
            doctor.fail(
                f"no CDI spec in {' or '.join(setup_env.CDI_SPEC_DIRS)} names the GPUs: `up` would fail with "
                f"'unresolvable CDI devices {setup_env.CDI_GPU_KIND}=...'",
                f"{generate}; or run on the CPU: set COMPOSE_FILE=compose.yaml in .env",
            )
            return False
        names = {name for found in specs.values() for name in found}
        wanted = setup_env.parse_gpu_devices(env.get("GPU_DEVICES", "all")) or ["all"]
        missing = [name for name in wanted if name not in names]
        gpus = setup_env.host_gpus() or []
        unknown = [gpu["uuid"] for gpu in gpus if gpu["uuid"] not in names]
        if missing or unknown:
            doctor.fail(
                f"the CDI spec ({', '.join(specs)}) is stale: it lacks {', '.join(missing + unknown)}",
                generate,
            )
            return False
        doctor.ok(f"CDI spec {', '.join(specs)} names {', '.join(sorted(names))}")
        return True
    if mode == "rootless-docker":
        try:
            config = TOOLKIT_CONFIG.read_text(encoding="utf-8", errors="replace")
        except OSError:
            config = ""
        if not re.search(r"^\s*no-cgroups\s*=\s*true", config, re.MULTILINE):
            doctor.fail(
                "rootless Docker reaches GPUs through the NVIDIA runtime only with its `no-cgroups = true` setting "
                f"({TOOLKIT_CONFIG}), which a rootless engine needs because it cannot manage device cgroups",
                "sudo nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place; then "
                "nvidia-ctk runtime configure --runtime=docker --config=$HOME/.config/docker/daemon.json and restart "
                "your engine (systemctl --user restart docker). Rootful Docker on this host then needs the GPUs "
                "named per container: another reason to use one engine",
            )
            return False
        doctor.ok(f"{TOOLKIT_CONFIG} has no-cgroups = true, as rootless Docker needs")
    return True


def check_gpu(doctor: Doctor, env: dict[str, str] | None, info: dict[str, str] | None, mode: str | None = None) -> None:
    compose_file = (env or {}).get("COMPOSE_FILE", "")
    if "compose.gpu.yaml" not in compose_file:
        if info is not None and "nvidia" in info.get("Runtimes", ""):
            doctor.warn(
                "Docker has the NVIDIA runtime, but COMPOSE_FILE leaves out compose.gpu.yaml: the project runs on the CPU",
                "set COMPOSE_FILE=compose.yaml:compose.gpu.yaml in .env for the GPU, then `make up`",
            )
        else:
            doctor.ok("GPU not requested (COMPOSE_FILE leaves out compose.gpu.yaml): the project runs on the CPU")
        return
    no_gpu_fix = "or run on the CPU: set COMPOSE_FILE=compose.yaml in .env"
    if mode in ("podman", "rootless-docker") and not check_gpu_access(doctor, env or {}, mode):
        return
    if info is not None and mode != "podman":
        if "nvidia" not in info.get("Runtimes", ""):
            doctor.fail(
                "Docker has no NVIDIA runtime: `up` would fail with 'could not select device driver \"nvidia\"'",
                f"install the NVIDIA Container Toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker` and restart Docker; {no_gpu_fix}",
            )
        else:
            doctor.ok("Docker has the NVIDIA runtime")
    if not shutil.which("nvidia-smi"):
        doctor.fail(
            "nvidia-smi is not on PATH: no NVIDIA driver found",
            f"install the NVIDIA driver >= {MIN_DRIVER}; {no_gpu_fix}",
        )
        return
    rows = query_gpus()
    if setup_env.smi_hung:
        doctor.fail(setup_env.NVIDIA_SMI_HUNG, setup_env.NVIDIA_SMI_HUNG_FIX)
        return
    if not rows:
        doctor.fail(
            "nvidia-smi gives no driver version: the driver is not loaded, or broken",
            f"reboot after installing the driver, or reinstall it; {no_gpu_fix}",
        )
        return
    driver = rows[0][0]
    if version_tuple(driver) < version_tuple(MIN_DRIVER):
        doctor.fail(
            f"driver {driver} ({rows[0][1]}) is older than {MIN_DRIVER}, the minimum for CUDA {CUDA_VERSION}: "
            "the container would not start (unsatisfied condition: cuda>=...)",
            f"update the NVIDIA driver to >= {MIN_DRIVER}, or generate the project with a CUDA build "
            "your driver runs (README: Choosing the CUDA build)",
        )
        return
    if version_tuple(driver) < version_tuple(TOOLKIT_DRIVER):
        doctor.ok(
            f"driver {driver} ({rows[0][1]}) runs CUDA {CUDA_VERSION} through minor version compatibility "
            f"(no PTX JIT, no features of drivers >= {TOOLKIT_DRIVER})"
        )
    else:
        doctor.ok(f"driver {driver} ({rows[0][1]}) runs CUDA {CUDA_VERSION}")
    check_gpu_kernels(doctor, rows)
    check_gpu_devices(doctor, env or {})
    check_dev_char(doctor, info)


# The host's device files (a test points it elsewhere).
DEV = Path("/dev")
# NVIDIA's rule that keeps the /dev/char links after reboots and driver reloads.
DEV_CHAR_RULE = (
    'ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", '
    'RUN+="/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"'
)


# Device files NVIDIA's `create-dev-char-symlinks --create-all` leaves out (GPUDirect
# Storage, NVSwitch, NVLink): asking for their links would warn after the fix.
DEV_CHAR_SKIPPED = ("nvidia-fs", "nvidia-nvswitch", "nvidia-nvlink")


def missing_dev_char_links(dev: Path) -> list[str]:
    """The NVIDIA device files (/dev/nvidia*, /dev/nvidia-caps/*) that /dev/char has no
    link to, as /dev/char/MAJOR:MINOR, among those NVIDIA's fix links."""
    missing = []
    for node in sorted([*dev.glob("nvidia*"), *dev.glob("nvidia-caps/*")]):
        if node.name.startswith(DEV_CHAR_SKIPPED):
            continue
        try:
            info = node.stat()
        except OSError:
            continue
        if not stat.S_ISCHR(info.st_mode):
            continue
        link = dev / "char" / f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
        if not os.path.lexists(link):
            missing.append(str(node))
    return missing


def check_dev_char(doctor: Doctor, info: dict[str, str] | None, dev: Path | None = None) -> None:
    """Docker under systemd's cgroup driver: a `systemctl daemon-reload` on the host (a
    package upgrade runs one) takes the GPUs from running containers ("Failed to
    initialize NVML: Unknown Error") unless /dev/char links every NVIDIA device file, so
    that runc can name them in the rules systemd rewrites (NVIDIA's notice in
    nvidia-docker issue 1730)."""
    dev = dev or DEV
    if info is None or info.get("Cgroup Driver") != "systemd":
        return
    missing = missing_dev_char_links(dev)
    if not missing:
        doctor.ok("/dev/char links every NVIDIA device: containers keep their GPUs when systemd reloads")
        return
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    doctor.warn(
        f"/dev/char has no link to {shown}: with Docker's systemd cgroup driver, the next "
        "`systemctl daemon-reload` on this host takes the GPUs from running containers "
        "('Failed to initialize NVML: Unknown Error' until they are recreated)",
        "sudo nvidia-ctk system create-dev-char-symlinks --create-all, and to keep them after reboots, "
        f"NVIDIA's udev rule in /lib/udev/rules.d/71-nvidia-dev-char.rules: {DEV_CHAR_RULE}",
    )


def check_gpu_devices(doctor: Doctor, env: dict[str, str]) -> None:
    """GPU_DEVICES against the host's GPUs; each GPU with its memory and processes, which
    of them this clone takes (GPU_DEVICES=auto: its lease, or what `make up` would
    lease), and other running containers that hold the same ones."""
    problem = setup_env.gpu_devices_problem(env)
    if problem:
        doctor.fail(problem, "correct GPU_DEVICES in .env (`nvidia-smi -L` lists the GPUs)")
        return
    gpus = setup_env.gpu_usage()
    holders = setup_env.gpu_holders()
    others = setup_env.other_holders(holders, env.get("COMPOSE_PROJECT_NAME", ""))
    wanted = setup_env.parse_gpu_devices(env.get("GPU_DEVICES", "all")) or []
    if setup_env.is_auto(env):
        try:
            wanted = [gpu["uuid"] for gpu in setup_env.lease_gpus(env, gpus=gpus, holders=holders)]
        except setup_env.LeaseError as error:
            doctor.fail(str(error).split("\n")[0], "`make gpus` shows who holds which; lower GPU_COUNT, or wait")
            wanted = ["none"]
        print(f"        GPUs (* = this clone's lease, GPU_DEVICES=auto, GPU_COUNT={setup_env.gpu_count(env)}):")
    else:
        print("        GPUs (* = this clone takes it):")
    for gpu in gpus:
        mine = not wanted or gpu["index"] in wanted or gpu["uuid"] in wanted
        processes = (
            ", ".join(f"{p['name']} (pid {p['pid']}, {p['memory']} MiB)" for p in gpu["processes"]) or "no processes"
        )
        print(
            f"        {'*' if mine else ' '} {gpu['index']} {gpu['name']} {gpu['uuid']}: "
            f"{gpu['memory_used']} / {gpu['memory_total']} MiB used; {processes}"
        )
        holding = [holder["name"] for holder in others if setup_env.holds(holder, gpu)]
        if mine and holding:
            doctor.warn(
                f"GPU {gpu['index']} is also held by running container(s) {', '.join(holding)}",
                "agree on GPUs with whoever runs them, and set GPU_DEVICES in .env to yours (e.g. GPU_DEVICES=1), "
                "or GPU_DEVICES=auto to take free ones",
            )


def query_gpus() -> list[list[str]]:
    """[driver, name, compute capability or ""] per GPU; drivers before R510 lack compute_cap.
    [] when nvidia-smi fails or answers something that is not a driver version."""
    for fields in ("driver_version,name,compute_cap", "driver_version,name"):
        smi = setup_env.nvidia_smi(f"--query-gpu={fields}", "--format=csv,noheader")
        if smi is not None and smi.returncode == 0 and smi.stdout.strip():
            rows = [[cell.strip() for cell in line.split(",")] for line in smi.stdout.strip().splitlines()]
            rows = [(row + ["", ""])[:3] for row in rows]
            if not all(DRIVER_VERSION.fullmatch(driver) for driver, _, _ in rows):
                return []
            # An unreadable capability is an unknown one ("[N/A]", or bytes that were not UTF-8).
            return [[driver, name, cap if COMPUTE_CAPABILITY.fullmatch(cap) else ""] for driver, name, cap in rows]
    return []


def check_gpu_kernels(doctor: Doctor, rows: list[list[str]]) -> None:
    """Whether this build has code for each GPU, by the rule gpu_test.py applies."""
    sys.path.insert(0, str(PROJECT))
    from gpu_test import kernels_for

    for index, (driver, name, capability) in enumerate(rows):
        if not capability:
            continue
        kernels = kernels_for(BUILDS[CUDA_VERSION]["architectures"], capability)
        if kernels == "native":
            doctor.ok(f"GPU {index} ({name}, compute {capability}): native kernels in this CUDA {CUDA_VERSION} build")
            continue
        fitting = [
            cuda
            for cuda, build in BUILDS.items()
            if kernels_for(build["architectures"], capability) == "native"
            and version_tuple(driver) >= version_tuple(build["min_driver"])
        ]
        other = f"generate the project with cuda_version={max(fitting, key=version_tuple)}" if fitting else ""
        if kernels == "ptx" and version_tuple(driver) >= version_tuple(TOOLKIT_DRIVER):
            doctor.warn(
                f"GPU {index} ({name}, compute {capability}) has only PTX in this CUDA {CUDA_VERSION} build: "
                "the driver compiles each kernel on first use (slow once, then cached)",
                other or "expected for a GPU newer than the build; nothing to do",
            )
        elif kernels == "ptx":
            doctor.fail(
                f"GPU {index} ({name}, compute {capability}) has only PTX in this CUDA {CUDA_VERSION} build, "
                f"and PTX needs driver >= {TOOLKIT_DRIVER} (no PTX JIT through minor version compatibility)",
                other or f"update the NVIDIA driver to >= {TOOLKIT_DRIVER}",
            )
        else:
            doctor.fail(
                f"GPU {index} ({name}, compute {capability}) has no kernels in this CUDA {CUDA_VERSION} build",
                other or "no build of this framework covers this GPU (README: Choosing the CUDA build)",
            )


def check_base_image(doctor: Doctor, env: dict[str, str] | None, cli: str = "docker") -> None:
    """The image the build starts FROM: on this machine already, or in a registry that
    answers. Otherwise the build would end in the registry's DNS or "not found" error."""
    if not shutil.which(cli):
        return
    base = os.environ.get("BASE_IMAGE") or (env or {}).get("BASE_IMAGE") or DEFAULT_BASE_IMAGE
    local = run([cli, "image", "inspect", base])
    if local is not None and local.returncode == 0:
        doctor.ok(f"base image {base} is on this machine")
        return
    remote = run([cli, "manifest", "inspect", base])
    if remote is not None and remote.returncode == 0:
        doctor.ok(f"base image {base} can be pulled")
        return
    said = (remote.stderr or remote.stdout).strip().splitlines() if remote is not None else []
    # A warning: this asks the registry from the docker CLI, which does not use the
    # engine's registry-mirrors or a proxy set for the engine alone; the build may pull.
    doctor.warn(
        f"base image {base} is not on this machine, and its registry does not answer here ({said[-1] if said else 'no answer'})",
        "check the name; if `make up` then fails to pull it, set BASE_IMAGE in .env to a mirror's copy "
        f"(e.g. BASE_IMAGE=registry.example.com/{DEFAULT_BASE_IMAGE})",
    )


def check_port(doctor: Doctor, env: dict[str, str] | None) -> None:
    port = setup_env.port_number((env or {}).get("JUPYTER_HOST_PORT", ""))
    if port is None:  # no .env, or a value read_env reported
        return
    if setup_env.port_free(port):
        doctor.ok(f"port {port} is free")
        return
    # A container of this clone's compose project (its label, on Docker and Podman alike).
    kind, holder = setup_env.port_holder(port)
    if kind == "container" and f"(compose project {(env or {}).get('COMPOSE_PROJECT_NAME')})" in holder:
        doctor.ok(f"port {port} is this project's Jupyter")
        return
    doctor.fail(
        f"port {port} on 127.0.0.1 is taken by {holder or 'another program'}",
        f"pick a free JUPYTER_HOST_PORT in .env, or stop it (`ss -ltnp | grep {port}` or `lsof -i :{port}`)",
    )


def check_user_dirs(doctor: Doctor, env: dict[str, str] | None) -> None:
    """The folders the container may write (WRITABLE): each writable by the container
    user, or created as you at the next `make`; and nothing that `make up` refuses."""
    # read_env left out values that are not ids.
    uid = int((env or {}).get("USER_UID") or -1)
    gid = int((env or {}).get("USER_GID") or -1)
    folders, problems = setup_env.writable_folders(env or {})
    for problem in problems + [problem for problem in [setup_env.git_problem()] if problem]:
        problem, _, fix = problem.partition("; ")
        doctor.fail(problem, fix)
    for name in folders:
        path = PROJECT / name
        if name == "." or name == ".git" and not path.is_dir():
            continue
        if not path.is_dir():
            doctor.ok(f"{name}/ does not exist yet: the next `make` creates it, as you")
            continue
        info = path.stat()
        writable = info.st_uid == uid or (info.st_gid == gid and info.st_mode & 0o020) or info.st_mode & 0o002
        if uid >= 0 and not writable:
            doctor.fail(
                f"{name}/ belongs to {info.st_uid}:{info.st_gid}, so the container user {uid}:{gid} cannot write to it",
                f"sudo chown -R {uid}:{gid} {name}",
            )
        else:
            doctor.ok(f"{name}/ is writable by the container user")
    mounted = [f"{name}/" for name in folders if name != ".git" or (PROJECT / name).is_dir()]
    shown = "the whole project" if "." in folders else " ".join(mounted)
    doctor.ok(f"the container may write {shown} (WRITABLE); what the host executes stays read-only there")


def check_line_endings(doctor: Doctor) -> None:
    files = [PROJECT / name for name in LF_FILES] + [p for d in LF_DIRS for p in (PROJECT / d).glob("*") if p.is_file()]
    # A file this user cannot read (another owner's .env) is reported where it is read.
    readable = [path for path in files if path.is_file() and os.access(path, os.R_OK)]
    crlf = [str(path.relative_to(PROJECT)) for path in readable if b"\r\n" in path.read_bytes()]
    if crlf:
        doctor.fail(
            f"Windows (CRLF) line endings in {', '.join(crlf)}: scripts fail with '\\r: command not found'",
            "git config core.autocrlf input, then `git rm --cached -r . && git reset --hard` (.gitattributes asks for LF)",
        )
    else:
        doctor.ok("scripts and container files have LF line endings")


def check_in_container(doctor: Doctor) -> None:
    shm = os.statvfs("/dev/shm")
    size = shm.f_frsize * shm.f_blocks
    if size < MIN_SHM_BYTES:
        doctor.warn(
            f"/dev/shm is {size >> 20} MiB: DataLoader workers die with 'Bus error'",
            "raise SHM_SIZE in .env, then `make up`",
        )
    else:
        doctor.ok(f"/dev/shm is {size / 2**30:.1f} GiB")
    env = read_env(doctor) or {}
    folders, _ = setup_env.writable_folders(env)
    for name in folders:
        path = PROJECT / name
        if name == ".git" and not path.is_dir():
            continue  # a linked worktree's .git file: git's folder is outside the project
        if os.access(path, os.W_OK):
            doctor.ok(f"{path} is writable")
        else:
            doctor.fail(
                f"{path} is not writable by uid {os.getuid()}",
                f"on the host: sudo chown -R {os.getuid()}:{os.getgid()} {name}, then `make up` (it mounts WRITABLE)",
            )
    for name in setup_env.HOST_EXECUTED:
        path = PROJECT / name
        if path.exists() and os.access(path, os.W_OK):
            doctor.fail(
                f"{path} is writable in the container, and the host executes it",
                "`make up` on the host mounts it read-only (compose.mounts.yaml, from WRITABLE in .env)",
            )
    probe = (
        "import torch; print(torch.cuda.is_available())"
        if FRAMEWORK == "pytorch"
        else "import tensorflow as tf; print(bool(tf.config.list_physical_devices('GPU')))"
    )
    result = run([sys.executable, "-c", probe])
    sees_gpu = result is not None and result.stdout.strip().endswith("True")
    if sees_gpu:
        doctor.ok(f"{FRAMEWORK} sees the GPU")
    elif os.environ.get("NVIDIA_VISIBLE_DEVICES") and Path("/dev/nvidiactl").exists():
        smi = setup_env.nvidia_smi("-L")
        if smi is not None and "Failed to initialize NVML: Unknown Error" in smi.stdout + smi.stderr:
            doctor.fail(
                "the container lost its GPUs (nvidia-smi: 'Failed to initialize NVML'): the host reloaded "
                "systemd since it started, and /dev/char lacks links to the NVIDIA devices",
                "`make down && make up` gives them back; `make doctor` on the host prints the lasting fix",
            )
        else:
            doctor.fail(
                f"a GPU is attached but {FRAMEWORK} does not see it",
                "run `python gpu_test.py` for the reason (CUDA build vs driver)",
            )
    else:
        doctor.warn(
            f"{FRAMEWORK} sees no GPU: this container runs on the CPU",
            "on a GPU host, COMPOSE_FILE in .env must list compose.gpu.yaml",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the host or the container for common problems.")
    parser.add_argument("--in-container", action="store_true", help="run the checks that belong inside the container")
    args = parser.parse_args(argv)
    # nvidia-smi's or .env's bytes that were not UTF-8 are U+FFFD here: a terminal in a
    # legacy encoding (latin-1, cp1252) cannot show that, which must not end the checks.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure:
        reconfigure(errors="backslashreplace")
    doctor = Doctor()
    if args.in_container:
        print("doctor: inside the container")
        check_in_container(doctor)
    else:
        print("doctor: the host")
        env = read_env(doctor)
        check_env(doctor, env)
        check_team_settings(doctor, env)
        podman = (env or {}).get("ENGINE_MODE") == "podman"
        info = check_podman(doctor) if podman else check_docker(doctor)
        mode = check_engine(doctor, env)
        if info is not None:
            check_base_image(doctor, env, "podman" if podman else "docker")
        check_gpu(doctor, env, info, mode)
        check_port(doctor, env)
        check_user_dirs(doctor, env)
        check_line_endings(doctor)
    print(f"\n{doctor.blockers} blocker(s), {doctor.warnings} warning(s)")
    return 1 if doctor.blockers else 0


if __name__ == "__main__":
    sys.exit(main())
