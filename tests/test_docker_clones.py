"""Docker tier: two teammates on one server, each with a clone of the team's project.

A generated project is committed to git and cloned twice; each clone belongs to its own
uid and runs `make` as that user (setpriv, in the docker group), with no hand-written
.env. Both run at the same time on one engine: different Jupyter ports and tokens,
container and image names; files belong to each clone's user; `make down` in one leaves
the other running; rebuilding one twice leaves no untagged image of it behind.
"""

from __future__ import annotations

import grp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BENCHMARKS, TEMPLATE, make_wheel, run
from cookiecutter.main import cookiecutter
from engine import layers, unique_bytes
from test_docker import http_status, remove_images_and_layers
from test_readme import readme_block

pytestmark = pytest.mark.docker

IS_ROOT = getattr(os, "geteuid", lambda: -1)() == 0
UIDS = (4101, 4102)
GIT = ["git", "-c", "safe.directory=*", "-c", "user.name=team", "-c", "user.email=team@example.com"]


@dataclass
class Clone:
    path: Path
    uid: int
    env: dict

    def make(self, *args: str) -> object:
        """`make` as this clone's user, from a shell like theirs."""
        return self.shell(" ".join(["make", *args]))

    def shell(self, line: str) -> object:
        """A command line, as this clone's user would type it."""
        cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", f"--groups={docker_gid()}", "bash", "-c", line]
        return run(cmd, cwd=self.path, env=self.env)

    def values(self) -> dict[str, str]:
        lines = (self.path / ".env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def compose(self, docker: str, *args: str):
        return run([docker, "compose", *args], cwd=self.path, env={**self.env, "HOME": "/root"})


def docker_gid() -> int:
    return grp.getgrnam("docker").gr_gid


@pytest.fixture(scope="module")
def clones(docker_env):
    if not IS_ROOT:
        pytest.skip("running clones as two other users needs root (CI runs as root)")
    # Not under pytest's own temporary folder: other users cannot enter it.
    root = Path(tempfile.mkdtemp(prefix="gpu-template-clones-", dir="/tmp"))
    root.chmod(0o755)
    origin = Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            extra_context={"project_name": "Docker Team", "jupyter_host_port": "28890"},
            output_dir=str(root / "origin"),
        )
    )
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "team project"]):
        assert run([*GIT, *args], cwd=origin).returncode == 0
    made = []
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(docker_env.cli)  # the client that builds here
    for uid in UIDS:
        path = root / f"home-{uid}" / "docker_team"
        assert run([*GIT, "clone", "-q", str(origin), str(path)]).returncode == 0
        home = path.parent
        shutil.chown(home, uid, uid)
        for entry in [path, *path.rglob("*")]:
            os.lchown(entry, uid, uid)
        env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "BASE_IMAGE": docker_env.base_image,
            "DOCKER_BUILDKIT": "1",
            "LANG": "C.UTF-8",
        }
        if docker_env.ca_bundle:
            env["CA_BUNDLE"] = docker_env.ca_bundle
        made.append(Clone(path, uid, env))
    try:
        yield made
    finally:
        for clone in made:
            if (clone.path / ".env").is_file():
                clone.compose(docker_env.cli, "--profile", "tools", "down", "-v", "--rmi", "all", "--remove-orphans")
                remove_images_and_layers(docker_env, clone.values()["COMPOSE_PROJECT_NAME"])
        shutil.rmtree(root, ignore_errors=True)


def wait_until_answers(port: int, token: str, timeout: float = 180) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if http_status(f"http://127.0.0.1:{port}/api/status", token) == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"Jupyter did not answer on port {port}")


def test_a_base_image_that_cannot_be_pulled_gets_our_message(clones):
    """A real build on the real engine, FROM a registry that does not exist."""
    first = clones[0]
    env = {**first.env, "BASE_IMAGE": "registry.invalid/nvidia/cuda:does-not-exist"}
    result = Clone(first.path, first.uid, env).make("up")
    assert result.returncode != 0
    assert "The base image registry.invalid/nvidia/cuda:does-not-exist could not be pulled" in result.stderr
    assert "Set BASE_IMAGE in .env to an image you can pull" in result.stderr


def test_two_clones_run_side_by_side_each_as_its_own_user(clones, docker_env):
    first, second = clones
    start = time.monotonic()
    up = first.make("up")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    # The second teammate follows the README's team section, verbatim, while the first runs.
    printed = ""
    for line in readme_block(second.path / "README.md", "teammate-start"):
        up = second.shell(line)
        assert up.returncode == 0, f"README `{line}`:\n{up.stdout[-3000:]}{up.stderr[-3000:]}"
        printed += up.stdout
    BENCHMARKS.append(f"two clones, two uids: both up in {time.monotonic() - start:.0f} s")
    one, two = first.values(), second.values()
    # Each clone wrote its own .env, for its own user.
    assert (one["USER_UID"], two["USER_UID"]) == tuple(map(str, UIDS))
    assert ".env written for this clone" in printed
    assert f"http://127.0.0.1:{two['JUPYTER_HOST_PORT']}/lab?token={two['JUPYTER_TOKEN']}" in printed
    assert one["COMPOSE_PROJECT_NAME"] != two["COMPOSE_PROJECT_NAME"] and one["IMAGE_NAME"] != two["IMAGE_NAME"]
    assert one["JUPYTER_HOST_PORT"] != two["JUPYTER_HOST_PORT"]  # the second found the first's taken
    assert one["JUPYTER_TOKEN"] != two["JUPYTER_TOKEN"]
    for clone, values, other in ((first, one, two), (second, two, one)):
        port = int(values["JUPYTER_HOST_PORT"])
        wait_until_answers(port, values["JUPYTER_TOKEN"])
        assert http_status(f"http://127.0.0.1:{port}/api/status", other["JUPYTER_TOKEN"]) == 403
        names = clone.compose(docker_env.cli, "ps", "--format", "json").stdout
        assert values["COMPOSE_PROJECT_NAME"] in names
        written = clone.compose(docker_env.cli, "exec", "-T", "lab", "sh", "-c", "echo hi > src/mine.txt")
        assert written.returncode == 0, written.stderr
        info = (clone.path / "src" / "mine.txt").stat()
        assert (info.st_uid, info.st_gid) == (clone.uid, clone.uid)
    images = run([docker_env.cli, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    assert one["IMAGE_NAME"] in images and two["IMAGE_NAME"] in images
    # One environment on disk for both: the images differ in the user's layers only (the
    # accounts, the home and /workspace, copied from the user stage), and the second
    # clone's user, another uid, installs a package into it by hand.
    first_layers, second_layers = layers(one["IMAGE_NAME"]), layers(two["IMAGE_NAME"])
    pairs = list(zip(first_layers, second_layers))
    shared = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    assert len(first_layers) - 4 <= shared < len(first_layers), (shared, len(first_layers))
    assert unique_bytes(two["IMAGE_NAME"]) < 1e6
    make_wheel(second.path / "cache", "handmade", "1.0")
    os.chown(second.path / "cache" / "handmade-1.0-py3-none-any.whl", second.uid, second.uid)
    wheel = "/workspace/cache/handmade-1.0-py3-none-any.whl"
    installed = second.compose(
        docker_env.cli, "exec", "-T", "lab", "uv", "pip", "install", "--offline", "--no-index", wheel
    )
    assert installed.returncode == 0, installed.stderr
    imported = second.compose(docker_env.cli, "exec", "-T", "lab", "python", "-c", "import handmade")
    assert imported.returncode == 0, imported.stderr

    # `make down` in one clone leaves the other running.
    down = first.make("down")
    assert down.returncode == 0, down.stderr
    assert first.compose(docker_env.cli, "ps", "-q").stdout.strip() == ""
    running = second.compose(docker_env.cli, "ps", "--status", "running", "--services").stdout.split()
    assert running == ["lab"]
    wait_until_answers(int(two["JUPYTER_HOST_PORT"]), two["JUPYTER_TOKEN"])

    # Rebuilding the second clone twice leaves no untagged image of it behind.
    kernel = second.path / "docker" / "kernel.json"
    for round_ in (1, 2):
        kernel.write_text(
            kernel.read_text().replace('"display_name": "Python (', f'"display_name": "Python {round_} (')
        )
        again = second.make("up")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    label = f"label=dev.gpu-template.clone={two['COMPOSE_PROJECT_NAME']}"
    dangling = run([docker_env.cli, "image", "ls", "-q", "--filter", "dangling=true", "--filter", label]).stdout
    assert dangling.strip() == ""
    tagged = run([docker_env.cli, "image", "ls", "--filter", label, "--format", "{{.Repository}}:{{.Tag}}"])
    assert tagged.stdout.split() == [two["IMAGE_NAME"]]
