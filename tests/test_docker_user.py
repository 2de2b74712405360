"""docker/create-user on a real engine, in the base image alone (seconds, no framework):
the ids real users have work, whatever the base image already holds, and the ids of its
system accounts are refused without touching them."""

from __future__ import annotations

import pytest
from conftest import TEMPLATE, run

pytestmark = pytest.mark.docker

SCRIPT = TEMPLATE / "{{cookiecutter.project_slug}}" / "docker" / "create-user"
# As the Dockerfile has it when create-user runs: the group "venv" of the environment;
# "ubuntu" stands for Ubuntu 24.04's user 1000.
SETUP = "groupadd --system venv && groupadd --gid 1000 ubuntu && useradd --uid 1000 --gid 1000 -m ubuntu"


def create_user(docker_env, uid: str, gid: str, then: str = "true"):
    return run(
        [docker_env.cli, "run", "--rm", "-v", f"{SCRIPT}:/usr/local/bin/create-user:ro", docker_env.base_image,
         "sh", "-c", f"{SETUP} && create-user {uid} {gid} && {then}"],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("uid", "gid", "group"),
    [("501", "20", "dialout"), ("1000", "1000", "ubuntu"), ("4321", "4321", "dev"), ("1000001", "1000001", "dev")],
)
def test_the_ids_users_have_work(docker_env, uid, gid, group):
    """macOS (501:20, gid 20 is Debian's "dialout", reused as it is), the base image's
    ordinary user (renamed), a new pair, and a directory service's large ids."""
    result = create_user(docker_env, uid, gid, "id dev; stat -c '%u:%g' /home/dev /workspace; getent group 20")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("\n")
    assert lines[0].startswith(f"uid={uid}(dev) gid={gid}({group})") and "(venv)" in lines[0]
    assert lines[1:3] == [f"{uid}:{gid}", f"{uid}:{gid}"]
    assert lines[3].startswith("dialout:x:20:")  # the system group keeps its name


@pytest.mark.parametrize(("uid", "account"), [("1", "daemon"), ("33", "www-data"), ("42", "_apt"), ("65534", "nobody")])
def test_a_system_account_is_refused_and_left_alone(docker_env, uid, account):
    result = create_user(docker_env, uid, "1000")
    assert result.returncode != 0
    assert f"ERROR: USER_UID={uid} is '{account}', a system account of the base image" in result.stderr
    assert "Fix: USER_UID and USER_GID in .env are your ids on the host" in result.stderr


@pytest.mark.parametrize(("uid", "gid"), [("0501", "20"), ("501", "020"), ("0", "0"), ("-1", "20"), ("1e3", "20")])
def test_ids_that_are_not_plain_numbers_are_refused(docker_env, uid, gid):
    result = create_user(docker_env, uid, gid)
    assert result.returncode != 0
    assert "ERROR: USER_" in result.stderr and "Fix:" in result.stderr
