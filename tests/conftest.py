"""Shared fixtures: baking projects, and the Docker engine for the Docker tier.

The Docker tier runs when asked (RUN_DOCKER_TESTS=1: it builds multi-GB images) and
skips where no engine runs (a laptop without Docker); with REQUIRE_DOCKER=1 (set by
.ci/run) it always runs, and a missing engine or base image fails instead, because a
skipped Docker tier proves nothing about `docker compose up`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
# Tests load the project's scripts from the template folder: no __pycache__ there, or
# cookiecutter would copy it into every project generated afterwards.
sys.dont_write_bytecode = True
sys.path.insert(0, str(TEMPLATE / "hooks"))
sys.path.insert(0, str(TEMPLATE))  # template_jinja, as cookiecutter loads it

import template_rules

QUESTIONS = {key for key in json.loads((TEMPLATE / "cookiecutter.json").read_text()) if not key.startswith("_")}
BENCHMARKS: list[str] = []


@dataclass
class Baked:
    """A bake's outcome plus everything the hooks printed."""

    exit_code: int
    exception: BaseException | None
    project_path: Path | None
    output_dir: Path
    output: str
    answers: dict = field(default_factory=dict)


@pytest.fixture
def bake(tmp_path, capfd, _cookiecutter_config_file):
    """bake(**answers) -> Baked, into a fresh output folder, with pytest-cookies' private
    cookiecutter config (the user's ~/.cookiecutterrc never leaks in).

    Refuses keys that are not questions: cookiecutter ignores unknown keys silently,
    and the test would then test the defaults."""
    counter = iter(range(1000))

    def _bake(**answers) -> Baked:
        unknown = set(answers) - QUESTIONS
        assert not unknown, f"not questions of the template: {sorted(unknown)}"
        output_dir = tmp_path / f"bake{next(counter):02d}"
        output_dir.mkdir()
        capfd.readouterr()
        exit_code, exception, project = 0, None, None
        try:
            project = Path(
                cookiecutter(
                    str(TEMPLATE),
                    no_input=True,
                    extra_context={key: str(value) for key, value in answers.items()},
                    output_dir=str(output_dir),
                    config_file=str(_cookiecutter_config_file),
                )
            )
        except Exception as error:  # noqa: BLE001 - the outcome is what the tests assert on
            exit_code, exception = 1, error
        out, err = capfd.readouterr()
        return Baked(
            exit_code, exception, project, output_dir, out + err + (str(exception) if exception else ""), answers
        )

    return _bake


def working_tree_files() -> list[str]:
    """The template repository's files as they are now, committed or not (no caches, no
    virtualenvs: what git would take)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=TEMPLATE, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    return [name for name in listed if (TEMPLATE / name).is_file()]


def copy_working_tree(dest: Path) -> None:
    """Write the template's working tree into dest (an empty folder or a clone)."""
    for name in working_tree_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATE / name, dest / name)


def fake_bin(tmp_path: Path, **scripts: str) -> str:
    """A folder of executable stand-ins (name -> script text), for PATH."""
    folder = tmp_path / "fake-bin"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text(body)
        path.chmod(0o755)
    return str(folder)


def fake_nvidia_smi(tmp_path: Path, monkeypatch, body: str) -> None:
    """An nvidia-smi first on PATH, running `body` (shell), for the generation in this
    process and the hooks it starts alike."""
    folder = fake_bin(tmp_path, **{"nvidia-smi": f"#!/bin/sh\n{body}\n"})
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(cmd, check=kwargs.pop("check", False), **kwargs)


def env_values(path: Path) -> dict[str, str]:
    """A generated .env's values (written by the template: KEY=value lines, comments)."""
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def tool(name: str) -> str:
    """A tool installed with the template's dev requirements (same venv as pytest)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: pip install -r requirements-dev.txt")
    return found


# ---------------------------------------------------------------------------------------
# A local wheel index (PEP 503), standing in for PyTorch's, which is not reachable here
# ---------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LocalIndex:
    url: str
    digests: dict[str, str]  # wheel file name -> sha256
    server: http.server.ThreadingHTTPServer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_index(root: Path, wheels: list[Path]) -> LocalIndex:
    """A PEP 503 simple index of these wheels on 127.0.0.1 (a free port), with each
    wheel's METADATA beside it (PEP 658), so resolvers need not download a wheel to read
    its dependencies."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    links: dict[str, list[str]] = {}
    digests = {}
    for wheel in wheels:
        served = files / wheel.name
        if not served.exists():
            served.symlink_to(wheel.resolve())
        digests[wheel.name] = sha256(served)
        with zipfile.ZipFile(served) as archive:
            [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
            (files / f"{wheel.name}.metadata").write_bytes(archive.read(metadata))
        project = wheel.name.split("-")[0].lower().replace("_", "-")
        href = f"../../files/{wheel.name.replace('+', '%2B')}#sha256={digests[wheel.name]}"
        core = f"sha256={sha256(files / f'{wheel.name}.metadata')}"
        links.setdefault(project, []).append(f'<a href="{href}" data-core-metadata="{core}">{wheel.name}</a>')
    for project, anchors in links.items():
        page = root / "simple" / project
        page.mkdir(parents=True, exist_ok=True)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{''.join(anchors)}</body></html>\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return LocalIndex(f"http://127.0.0.1:{server.server_port}/simple", digests, server)


def make_wheel(directory: Path, name: str, version: str) -> Path:
    """A one-module pure-Python wheel (PEP 427) whose module prints its version: a package
    a user installs by hand, with no index and no network."""
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},{len(text.encode())}"
        for path, text in files.items()
    ]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


# ---------------------------------------------------------------------------------------
# Docker tier
# ---------------------------------------------------------------------------------------


@dataclass
class DockerEnv:
    cli: str
    base_image: str
    ca_bundle: str | None


def locked_pins(lock: Path) -> set[tuple[str, str]]:
    """(name, version) of every package a lock pins: requirements.txt, uv.lock or
    poetry.lock (which may pin a package twice, under different markers)."""
    text = lock.read_text()
    if lock.name == "requirements.txt":
        found = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, re.MULTILINE)
    else:
        found = re.findall(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', text, re.MULTILINE)
    return {(re.sub(r"[-_.]+", "-", name).lower(), version) for name, version in found}


def locked_version(pins: set[tuple[str, str]], package: str) -> tuple[int, ...]:
    """The one version `pins` holds of `package`, as numbers to compare."""
    [version] = {version for name, version in pins if name == package}
    return tuple(int(part) for part in re.findall(r"\d+", version))


def docker_required() -> bool:
    return os.environ.get("REQUIRE_DOCKER") == "1"


# Where an engine runs, the Docker tier still waits to be asked: it builds a dozen
# PyTorch and TensorFlow images of 6-7 GB on that engine (a shared one, often), so
# `make test` must not start it by surprise.
DOCKER_TIER_NOT_ASKED = (
    "the Docker tier builds 6-7 GB images on your engine for about 50 min (2 cores): "
    "RUN_DOCKER_TESTS=1 make test runs it"
)


def docker_tier_wanted() -> bool:
    return docker_required() or os.environ.get("RUN_DOCKER_TESTS") == "1"


def unavailable(reason: str):
    if docker_required():
        pytest.fail(f"Docker tier required (REQUIRE_DOCKER=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_env() -> Iterator[DockerEnv]:
    # The Debian client (engine 20.10) has BuildKit built in; a newer client may lack buildx.
    cli = os.environ.get("DOCKER") or (
        "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    )
    if not cli:
        unavailable("no docker client on PATH")
    if run([cli, "info"]).returncode != 0:
        unavailable("no Docker engine answers (`docker info` fails)")
    if run([cli, "compose", "version"]).returncode != 0:
        unavailable("Docker Compose v2 is missing (`docker compose version` fails)")
    base = os.environ.get("TEST_BASE_IMAGE", "local/debian:trixie")
    if run([cli, "image", "inspect", base]).returncode != 0:
        unavailable(f"base image {base} is missing: run tests/docker/make-base-image.sh")
    # Containers here must trust the network's TLS-intercepting proxy: pass the host's bundle.
    ca_bundle = os.environ.get("TEST_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    yield DockerEnv(cli=cli, base_image=base, ca_bundle=ca_bundle if Path(ca_bundle).is_file() else None)
    if os.environ.get("DOCKER_TEST_PRUNE") == "1":
        # CI leaves the machine as it found it: the download caches go too.
        run([cli, "builder", "prune", "-af"])


@pytest.fixture(scope="session")
def devcontainer_cli() -> str:
    """The real devcontainer CLI (npm: @devcontainers/cli); .ci/run installs it and sets
    DEVCONTAINER."""
    cli = os.environ.get("DEVCONTAINER") or shutil.which("devcontainer")
    if not cli or run([cli, "--version"]).returncode != 0:
        unavailable("the devcontainer CLI is missing (npm install @devcontainers/cli; set DEVCONTAINER)")
    return cli


def python_with(module: str, variable: str) -> str | None:
    """An interpreter that imports `module`: $variable, the tests' own, python3 on PATH."""
    candidates = [os.environ.get(variable), sys.executable, shutil.which("python3")]
    for candidate in filter(None, candidates):
        try:
            found = run([candidate, "-c", f"import {module}"], timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="session")
def torch_python() -> str:
    """A Python with torch on the host (TORCH_PYTHON; .ci/run makes one with a CPU torch):
    the tests that need one skip without it, except under REQUIRE_DOCKER=1 (CI)."""
    found = python_with("torch", "TORCH_PYTHON")
    if not found:
        unavailable("no Python with torch on this host (set TORCH_PYTHON); the Docker tier runs it in the image")
    return found


def pytest_collection_modifyitems(config, items):
    """Tests marked `network` need PyPI: they run only with RUN_NETWORK_TESTS=1 (CI).

    A test marked `variants("default", ...)` runs on those parametrized projects only: the
    others are deselected, not skipped (in CI a skipped Docker test is a failure, and
    this one was never meant for them)."""
    kept, deselected = [], []
    for item in items:
        wanted = item.get_closest_marker("variants")
        callspec = getattr(item, "callspec", None)
        if wanted and callspec and callspec.id not in wanted.args:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    skips = {}
    if os.environ.get("RUN_NETWORK_TESTS") != "1":
        skips["network"] = pytest.mark.skip(reason="needs PyPI: set RUN_NETWORK_TESTS=1")
    if not docker_tier_wanted():
        skips["docker"] = pytest.mark.skip(reason=DOCKER_TIER_NOT_ASKED)
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if BENCHMARKS:
        terminalreporter.section("measured (figures, not assertions)")
        for line in BENCHMARKS:
            terminalreporter.write_line(line)


__all__ = [
    "BENCHMARKS",
    "TEMPLATE",
    "copy_working_tree",
    "fake_bin",
    "fake_nvidia_smi",
    "run",
    "serve_index",
    "sha256",
    "template_rules",
    "tool",
    "torch_python",
    "working_tree_files",
]
