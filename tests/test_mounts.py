"""What the container may change (issue #26): the project is read-only in the lab
container but for the folders WRITABLE names (your work and git's folder), and what the
host executes (Makefile, docker/, .env, .git/hooks, .git/config ...) stays read-only
inside those too. Checked here as Compose resolves every COMPOSE_FILE form the README
gives (and the dev container's), per clone (a git folder, a linked worktree, no git, a
link to another disk), with every WRITABLE refusal naming the key and the fix. Writes
from a real container on each engine: test_docker, test_rootless, test_podman."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import env_values, run
from test_bake import compose_config
from test_push import git_config
from test_readme import fenced_blocks

DEFAULT_WRITABLE = ["src", "notebooks", "data", "cache", "checkpoints"]
# What git on the host executes or obeys, inside the writable .git.
GIT_READ_ONLY = [".git/hooks", ".git/config"]


def setup(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_HOST"))}
    return run([sys.executable, "docker/setup_env.py", *args], cwd=project, env=env)


def git(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": git_config(project.parent),
        "GIT_CEILING_DIRECTORIES": str(project.parent),
    }
    result = run(["git", *args], cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    return result


def set_writable(project: Path, value: str) -> None:
    env = project / ".env"
    env.write_text(re.sub(r"(?m)^WRITABLE=.*$", f"WRITABLE={value}", env.read_text()))


def mounts(project: Path, service: str = "lab", compose_file: str = "compose.yaml") -> dict[str, bool]:
    """target (relative to /workspace, "." for it) -> read-only, as Compose resolves it."""
    profiles = ("tools",) if service == "lock" else ()
    volumes = compose_config(project, compose_file, profiles)["services"][service]["volumes"]
    result = {}
    for volume in volumes:
        assert volume["type"] == "bind"
        target = os.path.relpath(volume["target"], "/workspace")
        assert volume["source"] == str(project / target) if target != "." else str(project)
        result[target] = bool(volume.get("read_only"))
    return result


@pytest.fixture
def project(bake) -> Path:
    """A generated project under git, set up as `make` sets it up."""
    path = bake().project_path
    git(path, "init", "-q")
    assert setup(path).returncode == 0
    return path


def test_the_lab_writes_only_its_folders_and_git_and_nothing_the_host_executes(project):
    lab = mounts(project)
    assert lab == {
        ".": True,
        **dict.fromkeys(DEFAULT_WRITABLE, False),
        ".git": False,
        **dict.fromkeys(GIT_READ_ONLY, True),
    }
    # The folders exist, the project user's, before Docker could create them as root.
    env = env_values(project / ".env")
    for name in DEFAULT_WRITABLE:
        info = (project / name).stat()
        assert (info.st_uid, info.st_gid) == (int(env["USER_UID"]), int(env["USER_GID"])), name


def test_every_compose_file_form_and_the_dev_container_get_the_same_mounts(project):
    """compose.yaml takes the mounts in (extends), so COMPOSE_FILE=compose.yaml (no GPU),
    the GPU form and the dev container's list all resolve to the same ones (Podman's, with
    podman-compose: test_podman)."""
    (project / "compose.gpu.yaml").write_text("services:\n  lab:\n    labels:\n      gpu: file\n")
    assert setup(project, "--get", "COMPOSE_FILE").returncode == 0
    run(["sh", ".devcontainer/select-gpu"], cwd=project)
    forms = [
        "compose.yaml",
        "compose.yaml:compose.gpu.yaml",
        f"compose.yaml:{project / '.devcontainer' / 'compose.selected.yaml'}",
    ]
    resolved = [mounts(project, compose_file=form) for form in forms]
    assert all(form == resolved[0] for form in resolved), resolved
    assert resolved[0]["."] is True and resolved[0][".git/hooks"] is True


def test_make_lock_writes_the_lock_files_but_not_what_the_host_executes_nor_git(project):
    lock = mounts(project, "lock")
    assert lock.pop(".") is False  # the lock files are at the project's top
    assert lock.pop(".git") is True
    assert all(lock.values()), lock
    assert {"Makefile", "docker", ".devcontainer", "deploy", ".env", "team.env", "compose.yaml"} <= set(lock)


def test_writable_dot_opens_the_project_but_not_what_the_host_executes(project):
    set_writable(project, ".")
    assert setup(project, "--preflight").returncode in (0, 1)  # a port or engine may be refused here
    lab = mounts(project)
    assert lab.pop(".") is False
    executed = {"Makefile", ".env", "team.env", "compose.yaml", "compose.podman.yaml", "compose.mounts.yaml",
                "docker", ".devcontainer", "deploy", ".git/hooks", ".git/config"}  # fmt: skip
    assert executed <= set(lab) and all(lab.values()), lab


def test_without_git_in_writable_git_stays_read_only(project):
    set_writable(project, "src notebooks")
    setup(project)
    assert mounts(project) == {".": True, "src": False, "notebooks": False}


def test_a_missing_folder_is_created_and_a_linked_worktree_or_no_git_gets_no_git_mount(project, tmp_path):
    set_writable(project, "src notebooks outputs/runs .git")
    setup(project)
    # Made as the project's owner, parents too, even when root runs `make` (CI does).
    owner = (project.stat().st_uid, project.stat().st_gid)
    for made in (project / "outputs", project / "outputs" / "runs"):
        assert made.is_dir() and (made.stat().st_uid, made.stat().st_gid) == owner, made
    assert mounts(project) == {".": True, "src": False, "notebooks": False, "outputs/runs": False, ".git": False,
                               ".git/hooks": True, ".git/config": True}  # fmt: skip
    # A linked worktree: .git is a file naming a git folder outside the project.
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first")
    worktree = tmp_path / "worktree"
    git(project, "worktree", "add", "-q", str(worktree))
    assert (worktree / ".git").is_file()
    (worktree / ".env").write_text((project / ".env").read_text())
    assert setup(worktree).returncode == 0
    lab = mounts(worktree)
    assert ".git" not in lab and lab["."] is True  # its .git file stays read-only with the rest
    # No git at all: nothing of it, and no .git made.
    bare = tmp_path / "nogit"
    run(["cp", "-a", str(worktree), str(bare)])
    (bare / ".git").unlink()
    assert setup(bare).returncode == 0
    assert not os.path.lexists(bare / ".git") and ".git" not in mounts(bare)


def test_git_hooks_and_config_are_made_where_git_left_them_out(project):
    """They are mounted read-only over the writable .git, so they must exist: a .git
    without hooks/ would let the container create one the host then runs."""
    (project / ".git" / "hooks").rename(project / ".git" / "hooks-gone")
    setup(project)
    assert (project / ".git" / "hooks").is_dir() and mounts(project)[".git/hooks"] is True


def test_a_link_at_the_top_is_mounted_as_its_folder(project, tmp_path):
    """data -> a dataset on another disk: the container cannot have made the link (the
    project's top is read-only there), so its folder is mounted."""
    disk = tmp_path / "datasets"
    disk.mkdir()
    (project / "data").rename(tmp_path / "old-data")
    (project / "data").symlink_to(disk)
    assert setup(project).returncode == 0
    volumes = compose_config(project, "compose.yaml")["services"]["lab"]["volumes"]
    [data] = [volume for volume in volumes if volume["target"] == "/workspace/data"]
    assert not data.get("read_only")


@pytest.mark.parametrize(
    ("value", "named", "fix"),
    [
        ("/etc", "'/etc' is not a folder in the project", "name folders by their path in it"),
        ("../elsewhere", "'../elsewhere' is not a folder in the project", "name folders by their path in it"),
        ("src docker", "docker is what the host executes", "change it on the host, and take it out of WRITABLE"),
        ("src .git/hooks", ".git/hooks is what the host executes", "take it out of WRITABLE"),
        (".git/objects", ".git/objects is what the host executes (or git's own files)", "take it out of WRITABLE"),
        ("src Makefile", "Makefile is what the host executes", "take it out of WRITABLE"),
        ("src pyproject.toml", "pyproject.toml is a file, and WRITABLE names folders", "edit it on the host"),
        ("src src/pkg", "src/pkg is a link", "replace it with a folder"),
        ("src a:b", "'a:b' is not a folder in the project", "name folders by their path in it"),
    ],
)
def test_writable_refusals_name_the_key_and_the_fix_and_only_stop_starting(project, value, named, fix, tmp_path):
    (project / "src" / "pkg").symlink_to(tmp_path)  # made in a folder the container writes
    set_writable(project, value)
    refused = setup(project, "--preflight")
    assert refused.returncode == 1
    assert f"ERROR: WRITABLE in .env: {named}" in refused.stderr and fix in refused.stderr, refused.stderr
    # Every other command goes on (stopping, entering), with a warning, and what is valid
    # is mounted; the refused entry is not.
    other = setup(project)
    assert other.returncode == 0 and "WARNING: WRITABLE in .env" in other.stderr
    lab = mounts(project)
    assert lab["."] is True and not any(target.startswith(("docker", "Makefile", "..", "/")) and not read_only
                                        for target, read_only in lab.items())  # fmt: skip
    doctor = run([sys.executable, "docker/doctor.py"], cwd=project)
    assert f"FAIL  WRITABLE in .env: {named}" in doctor.stdout, doctor.stdout


def test_a_planted_commondir_stops_make_up_naming_it(project):
    """.git/commondir points git at another folder's config and hooks; git writes one only
    in a linked worktree's folder, so in the project's own .git something planted it."""
    (project / "src" / "evil").mkdir()
    (project / ".git" / "commondir").write_text("../src/evil\n")
    refused = setup(project, "--preflight")
    assert refused.returncode == 1
    assert "ERROR: .git/commondir exists" in refused.stderr and "remove it" in refused.stderr
    doctor = run([sys.executable, "docker/doctor.py"], cwd=project)
    assert "FAIL  .git/commondir exists" in doctor.stdout


def test_the_labs_writable_comes_from_team_env_and_an_older_env_takes_it(project):
    """A key an older .env lacks comes from team.env, not from the template's default."""
    with (project / "team.env").open("a") as team:
        team.write("WRITABLE=src notebooks data cache checkpoints\n")  # commits on the host only
    env = project / ".env"
    env.write_text("".join(line + "\n" for line in env.read_text().splitlines() if not line.startswith("WRITABLE=")))
    setup(project)
    assert setup(project, "--get", "WRITABLE").stdout.strip() == "src notebooks data cache checkpoints"
    assert ".git" not in mounts(project)


def test_the_readme_examples_mount_what_they_say(project):
    """Each WRITABLE line of the README's section, set in .env, gives those folders."""
    readme = project / "README.md"
    [block] = [body for info, body in fenced_blocks(readme) if info == "dotenv"]
    lines = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(lines) == 3
    for line in lines:
        value = line.removeprefix("WRITABLE=")
        set_writable(project, value)
        assert setup(project).returncode == 0
        lab = mounts(project)
        writable = sorted(target for target, read_only in lab.items() if not read_only)
        expected = sorted(value.split()) if value != "." else ["."]
        assert writable == expected, line


# Run in the lab container by the engine tiers (test_docker, test_rootless, test_podman):
# a notebook's ways to plant a command for the host's next `make` or commit. Each must fail.
HOST_EXECUTED_WRITES = [
    "echo 'touch /tmp/planted' > .git/hooks/pre-commit",
    "printf '[core]\\n\\tfsmonitor = touch /tmp/planted\\n' >> .git/config",
    "rm -rf .git/hooks",
    "mv .git .git-moved",
    "echo 'up:; touch /tmp/planted' >> Makefile",
    "echo 'up:; touch /tmp/planted' > GNUmakefile",
    "echo 'touch /tmp/planted' >> docker/compose-up",
    "echo '{}' > .devcontainer/devcontainer.json",
    "echo 'COMPOSE_FILE=compose.planted.yaml' >> .env",
    "echo 'touch /tmp/planted' >> deploy/slurm/launch",
]
PLANT = "cd /workspace\n" + "".join(
    f"if ( {command} ) 2>/dev/null; then echo 'planted: {number}'; fi\n"
    for number, command in enumerate(HOST_EXECUTED_WRITES)
)


def planted(output: str) -> list[str]:
    """The writes of HOST_EXECUTED_WRITES that worked, from PLANT's output."""
    return [HOST_EXECUTED_WRITES[int(number)] for number in re.findall(r"planted: (\d+)", output)]


def save_notebook(port: int, token: str, api_path: str) -> int:
    """Jupyter's answer to saving a small notebook at api_path (as JupyterLab saves)."""
    import json
    import urllib.error
    import urllib.request

    notebook = {"cells": [{"cell_type": "code", "source": "1 + 1", "metadata": {}, "outputs": [],
                           "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/contents/{api_path}", method="PUT",
        data=json.dumps({"type": "notebook", "format": "json", "content": notebook}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def assert_nothing_planted(project: Path, attempt: subprocess.CompletedProcess, port: int, token: str) -> None:
    """After PLANT ran in a project's lab container (attempt): no write worked, git's hooks
    and config on the host are as they were, and Jupyter refuses a notebook at the top."""
    assert attempt.returncode == 0, attempt.stderr
    assert planted(attempt.stdout) == []
    assert (project / ".git" / "hooks").is_dir() and not (project / ".git" / "hooks" / "pre-commit").exists()
    assert "fsmonitor" not in (project / ".git" / "config").read_text()
    assert save_notebook(port, token, "at-the-top.ipynb") >= 400
    assert not (project / "at-the-top.ipynb").exists()
