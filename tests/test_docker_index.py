"""Docker tier: a CUDA 12.6 project, whose torch comes from PyTorch's own wheel index,
from generation to a running container, on the real engine.

PyTorch's index is not reachable from these machines, so a PEP 503 index on 127.0.0.1
stands in for it (the one test-only change to the project: its index URL). It serves
the real torch and torchvision wheels of the project's pins (PyPI's builds, fetched
once, under the index's role); their CUDA libraries (nvidia-*) come from PyPI as they would
with the real index. The project is generated without a lock, `make up` refuses to
start, `make lock` (in the project's lock container) writes the lock, and `make up`
builds and starts an environment holding the index's torch.

The containers reach 127.0.0.1 through host networking, added by a compose file the
test writes, so nothing leaves the loopback interface.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import BENCHMARKS, TEMPLATE, run, serve_index, template_rules
from cookiecutter.main import cookiecutter
from test_docker import RunningProject, project_on_engine, remove_images_and_layers, wait_for_jupyter

pytestmark = [pytest.mark.docker, pytest.mark.network]

CUDA = "12.6"
# The Python of the test base image (Debian trixie), which the container installs into.
CONTAINER_PYTHON = "3.13"
WHEEL_CACHE = Path.home() / ".cache" / "gpu-template" / "index-wheels"


def fetch_wheels(packages: dict[str, str], pythons: list[str]) -> list[Path]:
    """The wheels of these pins from PyPI, as PyTorch's index has them: for both lock
    platforms (uv resolves for x86_64 and aarch64 and wants a wheel for each), for the
    container's Python and for the lock's lowest (uv wants a wheel for it too)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    # pip's site configuration here adds a local wheel folder and a version cap; neither applies.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": ""}
    wheels = []
    for python, machine in ((python, machine) for python in pythons for machine in ("x86_64", "aarch64")):
        tag = python.replace(".", "")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        cmd += ["--platform", f"manylinux_2_28_{machine}", "--python-version", python, "-d", str(WHEEL_CACHE)]
        cmd += (
            ["--cert", "/etc/ssl/certs/ca-certificates.crt"]
            if Path("/etc/ssl/certs/ca-certificates.crt").is_file()
            else []
        )
        result = run([*cmd, *(f"{name}=={version}" for name, version in packages.items())], env=env)
        assert result.returncode == 0, result.stderr
        for name, version in packages.items():
            found = sorted(WHEEL_CACHE.glob(f"{name}-{version}-cp{tag}-cp{tag}-*{machine}.whl"))
            assert found, f"no {name} {version} wheel for cp{tag} in {WHEEL_CACHE}"
            wheels.append(found[-1])
    return wheels


@pytest.fixture(scope="module")
def index_project(docker_env, tmp_path_factory):
    table = template_rules.load_table()
    build = template_rules.build_spec(table, "pytorch", CUDA)
    answers = {"project_name": "Docker Index", "jupyter_host_port": "28889", "cuda_version": CUDA}
    pythons = sorted({table["defaults"]["python_version"], CONTAINER_PYTHON})
    index = serve_index(tmp_path_factory.mktemp("index"), fetch_wheels(build["packages"], pythons))
    out = tmp_path_factory.mktemp("docker-index")
    path = Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=answers, output_dir=str(out)))
    # The test-only override: the project's index URL, in its config and its lock script.
    for name in ("pyproject.toml", "docker/lock"):
        file = path / name
        file.write_text(file.read_text().replace(build["index_url"], index.url))
    (path / "compose.localindex.yaml").write_text(
        yaml.safe_dump(
            {
                "services": {
                    "lab": {"build": {"network": "host"}},
                    "lock": {"build": {"network": "host"}, "network_mode": "host"},
                }
            }
        )
    )
    project = project_on_engine(path, answers, docker_env, "compose.yaml:compose.localindex.yaml")
    project.env["UV_HTTP_TIMEOUT"] = "300"
    try:
        yield project, index, build
    finally:
        project.compose("--profile", "tools", "down", "-v", "--rmi", "all", "--remove-orphans", check=False)
        remove_images_and_layers(docker_env, project.compose_project)
        index.close()


def make(project: RunningProject, target: str) -> subprocess.CompletedProcess:
    return run(["make", target, f"COMPOSE={project.docker} compose"], cwd=project.path, env=project.env)


def test_an_index_build_locks_builds_and_runs_with_the_index_torch(index_project):
    project, index, build = index_project
    lock = project.path / "uv.lock"
    placeholder = lock.read_text()

    refused = make(project, "up")
    assert refused.returncode != 0
    assert "uv.lock is not written yet: CUDA 12.6 builds come from PyTorch's index" in refused.stderr
    assert project.compose("ps", "-aq").stdout.strip() == ""  # Docker was never asked to start anything
    assert lock.read_text() == placeholder

    start = time.monotonic()
    locked = make(project, "lock")
    lock_seconds = time.monotonic() - start
    assert locked.returncode == 0, locked.stdout[-3000:] + locked.stderr[-3000:]
    packages = {package["name"]: package for package in tomllib.loads(lock.read_text())["package"]}
    for name, version in build["packages"].items():
        assert packages[name]["version"] == version
        assert packages[name]["source"] == {"registry": index.url}, name  # from the index, nothing else
        wheels = {Path(wheel["url"]).name.replace("%2B", "+"): wheel["hash"] for wheel in packages[name]["wheels"]}
        served = {wheel: f"sha256:{digest}" for wheel, digest in index.digests.items() if wheel.startswith(f"{name}-")}
        assert wheels == served, name  # pinned to exactly the files the index serves, by hash
    others = {package["source"].get("registry") for n, package in packages.items() if n not in build["packages"]}
    assert others - {None} == {"https://pypi.org/simple"}

    start = time.monotonic()
    up = make(project, "up")
    build_seconds = time.monotonic() - start
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    wait_for_jupyter(project)
    # The environment is the lock, package for package (uv verifies every wheel's hash).
    check = project.exec("uv", "sync", "--locked", "--check", "--no-install-project", "--offline", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    versions = project.exec(
        "python", "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
    )
    # (torch.__version__ carries the wheel's CUDA as a local version: PyPI's files, under the index's role here.)
    installed = [version.split("+")[0] for version in versions.stdout.split()]
    assert installed == [build["packages"]["torch"], build["packages"]["torchvision"]]
    BENCHMARKS.append(
        f"CUDA {CUDA} from a local index: make lock {lock_seconds:.0f} s, make up (build) {build_seconds:.0f} s"
    )
