"""`make lock` moves only what was asked (docker/lock, run here on the host with uv, as
the tools container runs it): a relock keeps every pin that still fits its input, and an
upgrade is explicit, of one package (`make lock UPGRADE_PACKAGE=name`) or of all
(`make lock UPGRADE=1`). Poetry's relocks take minutes: the Docker tier runs them
(test_docker.py, a small dependency of the framework moved down and up); its refusals
are checked here with the others."""

from __future__ import annotations

import pytest
from conftest import locked_pins, locked_version, run, template_rules
from test_bake import INPUT_EDIT, lock_tools_env

MANAGERS = ["uv", "pip", "poetry"]


def relock(project, *args: str):
    return run(["sh", "docker/lock", *args], cwd=project, env=lock_tools_env(), timeout=600)


def names(pins: set[tuple[str, str]]) -> set[str]:
    return {name for name, _ in pins}


def hold_filelock_down(project, manager: str):
    """The input asks for a filelock below the locked one; relocked. Returns the input's
    path and its text as it was, the lock's path and its pins as they were."""
    name, old, new = INPUT_EDIT[manager]
    path, lock = project / name, project / template_rules.MANAGER_FILES[manager][1]
    original_input, original = path.read_text(), locked_pins(lock)
    [version] = {v for n, v in original if n == "filelock"}
    path.write_text(original_input.replace(old, new.replace("tqdm", f"filelock<{version}")))
    result = relock(project)
    assert result.returncode == 0, result.stderr
    return path, original_input, lock, original


@pytest.mark.network
@pytest.mark.parametrize("manager", ["uv", "pip"])
def test_a_relock_keeps_every_pin_and_an_upgrade_moves_only_the_package_named(bake, manager):
    """filelock (torch needs it) is held below its locked version by the input, then the
    input is as it was: the plain relock keeps the older pin (it still fits), and
    UPGRADE_PACKAGE=filelock moves it, and nothing else, back up."""
    project = bake(dependency_manager=manager).project_path
    path, original_input, lock, original = hold_filelock_down(project, manager)
    held = locked_pins(lock)
    assert names(held ^ original) == {"filelock"}
    assert locked_version(held, "filelock") < locked_version(original, "filelock")

    path.write_text(original_input)
    result = relock(project)
    assert result.returncode == 0, result.stderr
    assert locked_pins(lock) == held  # the older filelock still fits: kept
    assert "updated. Rebuild and start with: make up" in result.stdout

    result = relock(project, "--upgrade-package", "filelock")
    assert result.returncode == 0, result.stderr
    upgraded = locked_pins(lock)
    assert names(upgraded ^ held) == {"filelock"}
    assert locked_version(upgraded, "filelock") >= locked_version(original, "filelock")


@pytest.mark.network
@pytest.mark.parametrize("manager", ["uv", "pip"])
def test_upgrade_moves_everything_to_the_newest_allowed(bake, manager):
    """UPGRADE=1 resolves afresh: filelock, held back by a relock that kept its old pin,
    goes to the newest version, as a new lock would have it."""
    project = bake(dependency_manager=manager).project_path
    path, original_input, lock, original = hold_filelock_down(project, manager)
    path.write_text(original_input)
    result = relock(project, "--upgrade")
    assert result.returncode == 0, result.stderr
    assert locked_version(locked_pins(lock), "filelock") >= locked_version(original, "filelock")


@pytest.mark.parametrize("manager", MANAGERS)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upgrade-package", "filelok"], "UPGRADE_PACKAGE=filelok: {lock} has no package filelok; name one it locks"),
        (["--upgrade-package", "file;rm"], "UPGRADE_PACKAGE='file;rm' is not a package name"),
        (["--upgrade-package"], "UPGRADE_PACKAGE='' is not a package name"),
        (["--upgrade", "--upgrade-package", "filelock"], "Give UPGRADE=1 (every package) or UPGRADE_PACKAGE=name"),
        (["--newest"], "usage: docker/lock [--upgrade | --upgrade-package NAME ...]"),
    ],
    ids=["unknown", "not-a-name", "no-name", "both", "unknown-option"],
)
def test_an_upgrade_that_cannot_be_meant_is_refused_before_resolving(bake, manager, args, message):
    """Offline and at once, the lock untouched: a misspelt name would otherwise upgrade
    nothing, silently."""
    project = bake(dependency_manager=manager).project_path
    lock = project / template_rules.MANAGER_FILES[manager][1]
    before = lock.read_bytes()
    result = run(["sh", "docker/lock", *args], cwd=project, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert message.format(lock=lock.name) in result.stderr
    assert lock.read_bytes() == before


@pytest.mark.parametrize("manager", MANAGERS)
def test_a_package_name_is_found_in_the_lock_whatever_its_spelling(bake, manager):
    """PEP 503: Typing_Extensions names typing-extensions. The check passes (and only the
    resolver, absent here, is missing: the name was not refused)."""
    project = bake(dependency_manager=manager).project_path
    result = run(["sh", "docker/lock", "--upgrade-package", "Typing_Extensions"], cwd=project,
                 env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode != 2, result.stderr
    assert "has no package" not in result.stderr
