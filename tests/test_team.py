"""A lab's shared settings in the committed team.env (issue #26): a teammate's fresh
clone gets them in its .env with nothing typed, as Compose then resolves them; .env
overrides them; a key .env leaves empty is taken later too; doctor names where each
value came from; a personal key in team.env is refused, naming it, with nothing written.
The real build from team.env is in the Docker tier (test_docker: the default project)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_values, run
from test_push import git_config

LAB = {
    "BASE_IMAGE": "registry.lab.example/nvidia/cuda:13.0.1-base-ubuntu24.04",
    "CA_BUNDLE": "certs/lab ca.pem",  # committed with the project; a space, quoted
    "REGISTRY": "registry.lab.example/team",
    "SHM_SIZE": "16gb",
}


def user_env() -> dict[str, str]:
    """A teammate's shell: none of the settings typed, no Compose settings inherited."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_HOST"))}
    for key in (*LAB, "GPU_DEVICES", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(key, None)
    return env


def setup(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "docker/setup_env.py", *args], cwd=project, env=user_env())


def git(project: Path, *args: str) -> None:
    result = run(["git", *args], cwd=project, env={**os.environ, "GIT_CONFIG_GLOBAL": git_config(project.parent)})
    assert result.returncode == 0, result.stderr


@pytest.fixture
def lab_project(bake, tmp_path) -> Path:
    """The lab's project, team.env filled in and committed with its CA file; then a
    teammate's fresh clone of it (no .env)."""
    project = bake().project_path
    (project / "certs").mkdir()
    (project / "certs" / "lab ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    with (project / "team.env").open("a") as team:
        team.write("".join(f'{key}="{value}"  # the lab\'s\n' for key, value in LAB.items()))
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "Lab settings")
    clone = tmp_path / "teammate" / project.name
    clone.parent.mkdir()
    git(project, "clone", "-q", str(project), str(clone))
    assert not (clone / ".env").exists()
    return clone


def test_a_fresh_clone_takes_the_labs_settings_with_nothing_typed(lab_project, docker_cli):
    result = setup(lab_project)
    assert result.returncode == 0, result.stderr
    assert "from team.env" in result.stdout
    env = env_values(lab_project / ".env")
    # Written as .env lines: the value with a space quoted, which Compose reads back (below).
    assert {key: env[key] for key in LAB} == {**LAB, "CA_BUNDLE": "'certs/lab ca.pem'"}
    assert len(env["JUPYTER_TOKEN"]) >= 32 and env["IMAGE_NAME"]  # and the clone's own values
    # As Compose resolves them: the build's base image and CA secret, shared memory.
    config = run([docker_cli, "compose", "config", "--format", "json"], cwd=lab_project, env=user_env())
    assert config.returncode == 0, config.stderr
    resolved = json.loads(config.stdout)
    assert resolved["services"]["lab"]["build"]["args"]["BASE_IMAGE"] == LAB["BASE_IMAGE"]
    assert resolved["secrets"]["ca_bundle"]["file"] == str(lab_project / "certs" / "lab ca.pem")
    assert resolved["services"]["lab"]["shm_size"] == str(16 * 1024**3)
    # And `make push`'s registry, with no REGISTRY typed.
    ref = run(["sh", "docker/push", "--ref"], cwd=lab_project, env=user_env())
    assert ref.stdout.startswith(f"{LAB['REGISTRY']}/{lab_project.name}:"), ref.stderr
    # Settings run again take nothing more, and keep the clone's token.
    again = setup(lab_project)
    assert "team.env" not in again.stdout and env_values(lab_project / ".env") == env


def test_env_overrides_team_env_and_doctor_names_the_source(lab_project):
    assert setup(lab_project).returncode == 0
    env_file = lab_project / ".env"
    env_file.write_text(env_file.read_text().replace(f"REGISTRY={LAB['REGISTRY']}", "REGISTRY=mine.example/me"))
    assert setup(lab_project).returncode == 0
    assert env_values(env_file)["REGISTRY"] == "mine.example/me"  # the clone's value stays
    doctor = run([sys.executable, "docker/doctor.py"], cwd=lab_project, env={**user_env(), "SHM_SIZE": "1gb"})
    assert f"BASE_IMAGE={LAB['BASE_IMAGE']}  from team.env" in doctor.stdout
    assert f"REGISTRY=mine.example/me  from .env, overriding team.env's '{LAB['REGISTRY']}'" in doctor.stdout
    assert "SHM_SIZE=1gb  from your shell's environment" in doctor.stdout
    assert "GPU_DEVICES=all  from .env" in doctor.stdout


def test_a_key_an_older_env_leaves_empty_or_lacks_is_taken_later(lab_project):
    """A clone set up before the lab filled team.env: its empty REGISTRY and its missing
    BASE_IMAGE come from team.env at the next `make`; what it set stays."""
    team = (lab_project / "team.env").read_text()
    (lab_project / "team.env").write_text(team.split("\n# GPU_DEVICES")[0] + "\n")  # no lab values yet
    assert setup(lab_project).returncode == 0
    env_file = lab_project / ".env"
    assert env_values(env_file)["REGISTRY"] == "" and "BASE_IMAGE" not in env_values(env_file)
    env_file.write_text(env_file.read_text().replace("SHM_SIZE=8gb", "SHM_SIZE=4gb"))
    (lab_project / "team.env").write_text(team)
    result = setup(lab_project)
    assert result.returncode == 0, result.stderr
    env = env_values(env_file)
    assert env["REGISTRY"] == LAB["REGISTRY"] and env["BASE_IMAGE"] == LAB["BASE_IMAGE"]
    assert env["SHM_SIZE"] == "4gb"  # set by this clone: kept
    assert f"REGISTRY={LAB['REGISTRY']}" in result.stdout and "from team.env" in result.stdout
    assert (env_file.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("key", ["JUPYTER_TOKEN", "USER_UID", "COMPOSE_PROJECT_NAME", "JUPYTER_HOST_PORT"])
def test_a_personal_setting_in_team_env_is_refused_naming_it(lab_project, key):
    with (lab_project / "team.env").open("a") as team:
        team.write(f"{key}=shared\n")
    result = setup(lab_project, "--preflight")
    assert result.returncode == 1
    assert f"ERROR: team.env sets {key}: team.env is for what the whole lab shares" in result.stderr
    assert f"move {key} from team.env to your .env" in result.stderr
    assert not (lab_project / ".env").exists()  # nothing half-written
    assert "Traceback" not in result.stderr
    doctor = run([sys.executable, "docker/doctor.py"], cwd=lab_project, env=user_env())
    assert f"FAIL  team.env sets {key}" in doctor.stdout


def test_a_team_value_env_cannot_hold_is_refused_naming_its_key(lab_project):
    with (lab_project / "team.env").open("a") as team:
        team.write('REGISTRY="registry.lab.example/o\'brien"\n')
    result = setup(lab_project, "--preflight")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'ERROR: team.env: REGISTRY="registry.lab.example/o\'brien" holds a single quote' in result.stderr
    assert "set REGISTRY in team.env without them" in result.stderr
    assert not (lab_project / ".env").exists()


@pytest.fixture
def docker_cli() -> str:
    """The docker client whose `compose config` is the reference (no engine needed)."""
    for candidate in (os.environ.get("DOCKER"), "/usr/bin/docker", "docker"):
        if candidate and run([candidate, "compose", "version"]).returncode == 0:
            return candidate
    pytest.skip("no docker client with Compose v2 here")
