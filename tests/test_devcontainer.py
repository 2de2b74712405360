"""One devcontainer.json for GPU hosts and machines without a GPU: .devcontainer/select-gpu
(its initializeCommand) follows COMPOSE_FILE, the switch `docker compose` uses."""

from __future__ import annotations

import os
import re

import json5
import pytest
import yaml
from conftest import run
from test_bake import compose_config


@pytest.fixture
def project(bake):
    baked = bake()
    assert baked.exit_code == 0, baked.output
    return baked.project_path


def select(project, **env):
    base = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    result = run(["sh", ".devcontainer/select-gpu"], cwd=project, env={**base, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout, yaml.safe_load((project / ".devcontainer" / "compose.selected.yaml").read_text())


def devcontainer_compose(project) -> dict:
    """The services as the devcontainer CLI will start them: its dockerComposeFile list."""
    config = json5.loads((project / ".devcontainer" / "devcontainer.json").read_text())
    files = [str((project / ".devcontainer" / name).resolve()) for name in config["dockerComposeFile"]]
    return compose_config(project, os.pathsep.join(files))["services"][config["service"]]


def set_compose_file(project, value: str) -> None:
    env = project / ".env"
    env.write_text(re.sub(r"(?m)^COMPOSE_FILE=.*$", f"COMPOSE_FILE={value}", env.read_text()))


def test_gpu_when_compose_file_lists_the_gpu_file(project):
    set_compose_file(project, "compose.yaml:compose.gpu.yaml")  # as on a host with the NVIDIA runtime
    output, selected = select(project)
    assert "dev container: GPU" in output
    assert selected == yaml.safe_load((project / "compose.gpu.yaml").read_text())
    devices = devcontainer_compose(project)["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": -1}]


def test_cpu_when_the_shell_says_so(project):
    output, selected = select(project, COMPOSE_FILE="compose.yaml")
    assert "CPU only" in output and selected == {"services": {"lab": {}}}
    assert "deploy" not in devcontainer_compose(project)


def test_cpu_when_env_file_says_so(project):
    set_compose_file(project, "compose.yaml")
    assert "CPU only" in select(project)[0]
    assert "deploy" not in devcontainer_compose(project)


def test_selection_is_ignored_by_git(project):
    assert ".devcontainer/compose.selected.yaml" in (project / ".gitignore").read_text().splitlines()
