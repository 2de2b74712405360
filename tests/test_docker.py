"""Docker tier: generated projects built and run on a real engine with real Compose.

Only BASE_IMAGE is swapped (no registry here: a debootstrap'd Debian stands in for
nvidia/cuda) and the GPU file is left out (COMPOSE_FILE=compose.yaml), as on any
machine without a GPU. Each project is built, started, checked, and removed with its
image, since a PyTorch image takes about 6 GB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import slurm as slurm_cluster
from conftest import BENCHMARKS, TEMPLATE, env_values, locked_pins, locked_version, make_wheel, run, template_rules
from cookiecutter.main import cookiecutter
from engine import build_steps, layers, unique_bytes
from test_bake import INPUT_EDIT
from test_gpu_test import gpu_test
from test_messages import RESOLVER_LINES
from test_mounts import PLANT, planted, save_notebook
from test_push import git_config
from test_readme import readme_block
from test_slurm import slurm  # noqa: F401 - the one-node Slurm fixture

pytestmark = pytest.mark.docker

IS_ROOT = getattr(os, "geteuid", lambda: -1)() == 0


@dataclass
class RunningProject:
    path: Path
    env: dict
    docker: str
    uid: int
    gid: int
    host_port: int
    container_port: int
    token: str
    slug: str
    name: str
    manager: str
    framework: str
    cuda: str
    # This clone's compose project and image (.env: COMPOSE_PROJECT_NAME, IMAGE_NAME).
    compose_project: str = ""
    image: str = ""

    def compose(self, *args: str, check: bool = True):
        result = run([self.docker, "compose", *args], cwd=self.path, env=self.env)
        if check:
            assert result.returncode == 0, f"docker compose {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    def exec(self, *cmd: str, check: bool = True, stdin: str | None = None):
        result = run([self.docker, "compose", "exec", "-T", "lab", *cmd], cwd=self.path, env=self.env, input=stdin)
        if check:
            assert result.returncode == 0, f"exec {' '.join(cmd)}:\n{result.stdout}{result.stderr}"
        return result


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_for_jupyter(project: RunningProject, timeout: float = 180) -> float:
    start = time.monotonic()
    url = f"http://127.0.0.1:{project.host_port}/api/status"
    while time.monotonic() - start < timeout:
        try:
            if http_status(url, project.token) == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    logs = project.compose("logs", "--no-color", check=False).stdout[-3000:]
    pytest.fail(f"Jupyter did not answer on 127.0.0.1:{project.host_port} within {timeout}s:\n{logs}")


# The default project (ids: the generating user's, 1000 where that is root), a
# non-default uid/gid, each other dependency manager, and the CUDA 12.8 build (torch
# 2.10, for drivers before R580 and for Volta) with two of them.
VARIANTS = [
    pytest.param({"project_name": "Docker Default", "jupyter_host_port": 28881}, id="default"),
    pytest.param(
        {"project_name": "Docker Ids", "jupyter_host_port": 28882, "uid": 4321, "gid": 4321, "cuda_version": "12.8"},
        id="uid-4321-cu128",
        marks=pytest.mark.skipif(not IS_ROOT, reason="handing a project to uid 4321 needs root (CI runs as root)"),
    ),
    pytest.param(
        {"project_name": "Docker Pip", "jupyter_host_port": 28883, "dependency_manager": "pip", "cuda_version": "12.8"},
        id="pip-cu128",
    ),
    pytest.param(
        {"project_name": "Docker Poetry", "jupyter_host_port": 28884, "dependency_manager": "poetry"}, id="poetry"
    ),
    *(
        pytest.param(
            {
                "project_name": f"Docker TF {manager}",
                "jupyter_host_port": port,
                "framework": "tensorflow",
                "cuda_version": "12.5",
                "dependency_manager": manager,
            },
            id=f"tensorflow-{manager}",
        )
        for manager, port in (("uv", 28885), ("pip", 28886), ("poetry", 28887))
    ),
]
INSTALLED_MATCHES = (Path(__file__).parent / "docker" / "installed_matches.py").read_text()


def teammate_clone(path: Path, docker_env, out: Path) -> Path:
    """A lab's project as a teammate gets it: the lab's base image and CA bundle (a file
    committed with the project) in team.env, committed; then a fresh `git clone` (no
    .env), owned by the project's user, whose first setup writes .env from team.env."""
    settings = [f"BASE_IMAGE={docker_env.base_image}"]
    if docker_env.ca_bundle:
        (path / "certs").mkdir()
        shutil.copyfile(docker_env.ca_bundle, path / "certs" / "lab-ca.pem")
        settings.append("CA_BUNDLE=certs/lab-ca.pem")
    with (path / "team.env").open("a") as team:
        team.write("\n".join(settings) + "\n")
    git_env = {**os.environ, "GIT_CONFIG_GLOBAL": git_config(out), "GIT_CEILING_DIRECTORIES": str(out)}
    clone = out / "teammate" / path.name
    for args, where in ((["init", "-q"], path), (["add", "-A"], path), (["commit", "-qm", "Lab settings"], path),
                        (["clone", "-q", str(path), str(clone)], out)):  # fmt: skip
        result = run(["git", *args], cwd=where, env=git_env)
        assert result.returncode == 0, result.stderr
    assert not (clone / ".env").exists()
    if IS_ROOT:  # the project's user owns their clone, as after their own `git clone`
        owner = path.stat()
        for folder, dirs, files in os.walk(clone):
            for name in [folder, *(os.path.join(folder, entry) for entry in dirs + files)]:
                os.chown(name, owner.st_uid, owner.st_gid, follow_symlinks=False)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_HOST"))}
    for typed in ("BASE_IMAGE", "CA_BUNDLE", "REGISTRY"):
        env.pop(typed, None)
    setup = run([sys.executable, "docker/setup_env.py"], cwd=clone, env=env)
    assert setup.returncode == 0 and "from team.env" in setup.stdout, setup.stdout + setup.stderr
    return clone


def project_on_engine(
    path: Path, answers: dict, docker_env, compose_file: str = "compose.yaml", team: bool = False
) -> RunningProject:
    """A generated project, set to build here: the stand-in base image, the CA bundle,
    and no GPU file (this machine has no GPU), with the ids, port and token of its .env.
    team: a teammate's clone, which takes the base image and the CA from team.env."""
    lines = (path / ".env").read_text().splitlines()
    env_file = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_HOST"))}
    env.update(COMPOSE_FILE=compose_file, BASE_IMAGE=docker_env.base_image, DOCKER_BUILDKIT="1")
    if docker_env.ca_bundle:
        env["CA_BUNDLE"] = docker_env.ca_bundle
    if team:  # nothing typed: Compose takes both from .env, written from team.env
        del env["BASE_IMAGE"]
        env.pop("CA_BUNDLE", None)
    return RunningProject(
        path=path,
        env=env,
        docker=docker_env.cli,
        uid=int(env_file["USER_UID"]),
        gid=int(env_file["USER_GID"]),
        host_port=int(env_file["JUPYTER_HOST_PORT"]),
        container_port=int(env_file["JUPYTER_CONTAINER_PORT"]),
        token=env_file["JUPYTER_TOKEN"],
        slug=path.name,
        name=answers["project_name"],
        manager=answers.get("dependency_manager", "uv"),
        framework=answers.get("framework", "pytorch"),
        cuda=answers.get("cuda_version", "13.0"),
        compose_project=env_file["COMPOSE_PROJECT_NAME"],
        image=env_file["IMAGE_NAME"],
    )


@pytest.fixture(scope="module", params=VARIANTS)
def project(request, docker_env, tmp_path_factory) -> RunningProject:
    answers = request.param
    out = tmp_path_factory.mktemp("docker")
    extra = {key: str(value) for key, value in answers.items()}
    path = Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=extra, output_dir=str(out)))
    # The default project is a teammate's clone of a lab's project: every test on it
    # runs on what team.env gave its .env.
    team = answers is VARIANTS[0].values[0]
    if team:
        path = teammate_clone(path, docker_env, out)
    running = project_on_engine(path, answers, docker_env, team=team)
    try:
        start = time.monotonic()
        running.compose("--progress", "plain", "build")
        build_seconds = time.monotonic() - start
        inspect = run([docker_env.cli, "image", "inspect", running.image, "--format", "{{.Size}}"])
        start = time.monotonic()
        running.compose("up", "-d")
        ready = (time.monotonic() - start) + wait_for_jupyter(running)
        BENCHMARKS.append(
            f"{answers['project_name']}: build {build_seconds:.0f} s, image {int(inspect.stdout) / 1e9:.2f} GB, "
            f"up -> Jupyter answering {ready:.1f} s"
        )
        yield running
    finally:
        running.compose("--profile", "tools", "down", "-v", "--rmi", "all", "--remove-orphans", check=False)
        remove_images_and_layers(docker_env, running.compose_project)
        remove_images_and_layers(docker_env, running.slug)  # the devcontainer CLI's, by folder


def remove_images_and_layers(docker_env, project_name: str) -> None:
    """A PyTorch image is about 6 GB: remove every image this compose project built
    (rebuilds leave untagged ones, the devcontainer CLI adds its own on top) and, where
    asked (CI), BuildKit's cached layers. Cache mounts (the uv/poetry download caches)
    stay, so the next project downloads nothing twice."""
    images = []
    for label in (f"com.docker.compose.project={project_name}", f"dev.gpu-template.clone={project_name}"):
        images += run([docker_env.cli, "image", "ls", "-q", "--filter", f"label={label}"]).stdout.split()
    images += run([docker_env.cli, "image", "ls", "-q", "--filter", f"reference=vsc-{project_name}-*"]).stdout.split()
    if images:
        run([docker_env.cli, "image", "rm", "-f", *sorted(set(images))])
    if os.environ.get("DOCKER_TEST_PRUNE") == "1":
        run([docker_env.cli, "builder", "prune", "-f", "--filter", "type=regular"])


def test_jupyter_answers_with_the_token_and_refuses_without(project):
    url = f"http://127.0.0.1:{project.host_port}/api/status"
    assert http_status(url, project.token) == 200
    assert http_status(url) == 403
    assert http_status(url, "wrong-token") == 403
    # Its log shows the address that answered, and none of the container's own.
    logs = project.compose("logs", "--no-color", "lab").stdout
    assert f"http://127.0.0.1:{project.host_port}/lab?token=..." in logs
    assert f":{project.container_port}/" not in logs and "file://" not in logs, logs[-3000:]


def test_the_token_is_in_no_environment(project, docker_env):
    """JUPYTER_TOKEN reaches Jupyter as a secret file, so neither the container's
    environment (`docker inspect`, every process it starts) nor a kernel Jupyter starts
    holds it, and Jupyter still wants it."""
    container = project.compose("ps", "-q", "lab").stdout.strip()
    inspect = json.loads(run([docker_env.cli, "inspect", container]).stdout)[0]
    assert not [entry for entry in inspect["Config"]["Env"] if entry.startswith("JUPYTER_TOKEN=")]
    assert project.token not in json.dumps(inspect)
    assert "JUPYTER_TOKEN_FILE=/run/secrets/jupyter_token" in inspect["Config"]["Env"]
    # A kernel the server starts, asked for its os.environ over its own connection file.
    base = f"http://127.0.0.1:{project.host_port}/api/kernels"
    request = urllib.request.Request(
        base, data=json.dumps({"name": project.slug}).encode(), method="POST",
        headers={"Authorization": f"token {project.token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        kernel = json.load(response)["id"]
    try:
        environ = json.loads(project.exec("python", "-c", KERNEL_ENVIRON, kernel).stdout.strip().splitlines()[-1])
    finally:
        delete = urllib.request.Request(f"{base}/{kernel}", method="DELETE",
                                        headers={"Authorization": f"token {project.token}"})  # fmt: skip
        urllib.request.urlopen(delete, timeout=30).close()
    assert environ["JPY_PARENT_PID"] and "PYTHONPATH" in environ  # the kernel's own environment
    assert "JUPYTER_TOKEN" not in environ and project.token not in json.dumps(environ)
    status = f"http://127.0.0.1:{project.host_port}/api/status"
    assert (http_status(status, project.token), http_status(status)) == (200, 403)


# Run in the container: connects to the kernel the server started (argv[1]: its id) and
# prints the kernel's os.environ as JSON.
KERNEL_ENVIRON = """
import json, os, sys
from jupyter_client import BlockingKernelClient
from jupyter_core.paths import jupyter_runtime_dir

client = BlockingKernelClient()
client.load_connection_file(os.path.join(jupyter_runtime_dir(), f"kernel-{sys.argv[1]}.json"))
client.start_channels()
client.wait_for_ready(timeout=60)
out = []
client.execute_interactive(
    "import json, os; print(json.dumps(dict(os.environ)))",
    output_hook=lambda message: out.append(message["content"].get("text", "")),
    timeout=60,
)
print("".join(out).strip().splitlines()[-1])
"""


def test_jupyter_is_published_on_loopback_only(project):
    ports = project.compose("port", "lab", str(project.container_port)).stdout.split()
    assert ports == [f"127.0.0.1:{project.host_port}"]


def test_jupyter_offers_the_project_kernel(project):
    request = urllib.request.Request(
        f"http://127.0.0.1:{project.host_port}/api/kernelspecs", headers={"Authorization": f"token {project.token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        specs = json.load(response)
    assert specs["default"] == project.slug
    # The only one: not also ipykernel's "Python 3 (ipykernel)" for the same interpreter.
    assert list(specs["kernelspecs"]) == [project.slug]
    spec = specs["kernelspecs"][project.slug]["spec"]
    assert spec["display_name"] == f"Python ({project.name})"
    assert spec["argv"][0] == "/opt/venv/bin/python"


def test_jupyterlab_asks_no_user_about_news_or_updates(project):
    """The image's overrides.json turns JupyterLab's first-visit prompt ("get notified
    about official Jupyter news?") and its update check off for every user."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{project.host_port}/lab/api/settings/@jupyterlab/apputils-extension:notification",
        headers={"Authorization": f"token {project.token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        defaults = json.load(response)["schema"]["properties"]
    assert (defaults["fetchNews"]["default"], defaults["checkForUpdates"]["default"]) == ("false", False)


def test_container_runs_as_the_configured_user(project):
    ids = project.exec("sh", "-c", "id -u; id -g").stdout.split()
    assert ids == [str(project.uid), str(project.gid)]


def test_gpu_test_reports_the_cpu_and_no_gpu(project):
    result = project.exec("python", "gpu_test.py", "--quick", "--json")
    report = json.loads(result.stdout)
    table = template_rules.load_table()
    build = template_rules.build_spec(table, project.framework, project.cuda)
    assert report["framework"] == project.framework
    assert report["framework_version"].split("+")[0] == template_rules.framework_version(build)
    assert report["cuda_build"].startswith(project.cuda)  # the build's CUDA, not the image's
    assert report["gpu_available"] is False and report["gpus"] == [] and report["no_gpu_reason"]
    assert list(report) == list(gpu_test.REPORT_FIELDS)  # every field, null where not measured
    assert report["cpu_fp32_gflops"] > 0
    assert report["train_cpu_samples_per_s"] > 0  # a real training step, timed
    assert report["speedup_fp32"] is None and report["h2d_pinned_gbps"] is None
    if project.framework == "pytorch":  # the image's compiler and Python headers at work
        assert report["compile_cpu"]["ok"], report["compile_cpu"]
    else:
        assert report["compile_cpu"] is None
    table = project.exec("python", "gpu_test.py", "--quick").stdout
    assert "No GPU is usable" in table and "GFLOP/s" in table
    assert project.exec("python", "gpu_test.py", "--quick", "--require-gpu", check=False).returncode == 1


def test_the_tables_gpu_code_is_what_the_wheel_holds(project):
    """compat.yaml's architectures for the build, which the default, the notes, doctor and
    the README reason with, are the ones compiled into the installed wheel."""
    probe = {
        "pytorch": "import json, torch; print(json.dumps(torch._C._cuda_getArchFlags()))",
        "tensorflow": "import json, tensorflow as tf; "
        "print(json.dumps(tf.sysconfig.get_build_info().get('cuda_compute_capabilities')))",
    }[project.framework]
    flags = json.loads(project.exec("python", "-c", probe).stdout.strip().splitlines()[-1])
    built = flags.split() if isinstance(flags, str) else flags
    table = template_rules.load_table()
    expected = table["frameworks"][project.framework]["cuda"][project.cuda]["architectures"]
    BENCHMARKS.append(f"{project.name}: GPU code in the wheel: {' '.join(built)}")
    assert sorted(built) == sorted(expected)


def test_the_image_starts_on_every_driver_of_its_cuda_major(project, docker_env):
    """NVIDIA_REQUIRE_CUDA, which the NVIDIA Container Toolkit checks against the driver,
    leads with the CUDA major's floor (minor version compatibility), ORed (a space) with
    the base image's own requirement."""
    image = project.image
    inspect = run([docker_env.cli, "image", "inspect", image, "--format", "{{json .Config.Env}}"])
    env = dict(entry.split("=", 1) for entry in json.loads(inspect.stdout))
    table = template_rules.load_table()
    assert env["NVIDIA_REQUIRE_CUDA"].split(" ")[0] == template_rules.cuda_major(table, project.cuda)["require_cuda"]


def test_doctor_inside_the_container(project):
    result = project.exec("python", "docker/doctor.py", "--in-container")
    assert "ok    /dev/shm is 8.0 GiB" in result.stdout
    assert "ok    /workspace/src is writable" in result.stdout
    assert "sees no GPU: this container runs on the CPU" in result.stdout  # a warning: exit 0


def test_image_holds_exactly_the_locked_packages(project):
    """/opt/venv holds the lock's packages for this platform and Python, at the locked
    versions, and nothing else."""
    if project.manager == "poetry":
        # No export without a plugin: poetry itself says whether anything would change.
        result = project.exec("poetry", "sync", "--dry-run", "--no-root", "--no-interaction")
        assert "0 installs, 0 updates, 0 removals" in result.stdout or "No dependencies to install" in result.stdout, (
            result.stdout
        )
        return
    if project.manager == "uv":
        result = project.exec("uv", "sync", "--locked", "--check", "--no-install-project", "--offline", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        project.exec("uv", "export", "--frozen", "--no-hashes", "--no-header", "-o", "cache/expected.txt")
        expected = "cache/expected.txt"
    else:
        expected = "requirements.txt"
    report = json.loads(project.exec("/opt/uv/bin/python", "-", expected, stdin=INSTALLED_MATCHES).stdout)
    assert report["expected_count"] > 100
    assert (report["missing"], report["unexpected"], report["wrong_version"]) == ({}, {}, {})


# Run in a new container of the image as built: the modules of the environment that have
# no bytecode, though they are Python 3 (a file no interpreter compiles never has any).
UNCOMPILED = """
import importlib.util, json, os, pathlib, sysconfig
site = pathlib.Path(sysconfig.get_paths()["purelib"])
modules, uncompiled = 0, []
for path in site.rglob("*.py"):
    modules += 1
    if os.path.exists(importlib.util.cache_from_source(path)):
        continue
    try:
        compile(path.read_bytes(), str(path), "exec")
    except (SyntaxError, ValueError):
        continue
    uncompiled.append(str(path.relative_to(site)))
print(json.dumps({"modules": modules, "uncompiled": uncompiled}))
"""


def test_every_module_of_the_environment_is_compiled_in_the_image(project):
    """Each layer compiles its own packages to bytecode, as pip does, so a new container
    imports the framework from .pyc files instead of compiling each module again."""
    result = run([project.docker, "run", "--rm", "--entrypoint", "python", project.image, "-B", "-c", UNCOMPILED])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] > 5000
    assert report["uncompiled"] == []


# The top-level names in the environment's site-packages: packages, modules, extensions.
SITE_MODULES = """
import json, pathlib, sysconfig
names = set()
for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
    if entry.suffix in (".pth", ".txt") or entry.name.endswith((".dist-info", ".data")):
        continue
    names.add(entry.name.split(".")[0] if entry.is_file() else entry.name)
print(json.dumps(sorted(names)))
"""


def test_no_slug_the_template_accepts_shadows_a_module_of_the_environment(project):
    """compat.yaml's import_names and the lock's package names cover every importable
    top-level name of the real environment (a slug that shadows one is refused)."""
    installed = json.loads(project.exec("python", "-c", SITE_MODULES).stdout)
    refused = template_rules.importable_modules(project.framework)
    slugs = [name for name in installed if template_rules.SLUG_RE.match(name) and name not in sys.stdlib_module_names]
    assert len(slugs) > 50
    assert [name for name in slugs if name not in refused] == []


def test_a_stale_lock_stops_the_build_before_anything_is_installed(project):
    """The layers stage checks the lock first: an input the lock does not cover stops the
    build with the lock's own message, naming `make lock`."""
    name, old, new = INPUT_EDIT[project.manager]
    path = project.path / name
    text = path.read_text()
    path.write_text(text.replace(old, new))
    try:
        result = project.compose("--progress", "plain", "build", check=False)
    finally:
        path.write_text(text)
    assert result.returncode != 0
    lock = template_rules.MANAGER_FILES[project.manager][1]
    output = result.stdout + result.stderr
    ours = f"{lock} does not match {name}: run `make lock`, then build again."
    assert ours in output
    # First: no line of the resolver's ("unsatisfiable", "network was disabled") above it.
    before = output[: output.index(ours)]
    assert [line for line in RESOLVER_LINES if line in before] == [], before[-3000:]
    # Ours alone: not also poetry's own "pyproject.toml changed significantly ...".
    assert "changed significantly" not in result.stdout + result.stderr


# A small package of the framework's layer (installed as root, below the user's layer).
FRAMEWORK_LEAF = {"pytorch": "filelock", "tensorflow": "termcolor"}


def hand_install(project: RunningProject, wheel: str) -> list[str]:
    if project.manager == "uv":
        return ["uv", "pip", "install", "--offline", "--no-index", "--python", "/opt/venv/bin/python", wheel]
    return ["pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check", wheel]


def test_the_environment_belongs_to_no_uid_and_the_user_changes_it_by_hand(project):
    """The environment's layers hold no uid (its directories: group "venv", writable), so
    the container user, whatever its uid, installs a package by hand and removes one that
    the image installed as root (an upgrade does both). Before the rebuild of the next
    test: it leaves the container's environment changed."""
    # In the image as built (a running container adds the user's own bytecode caches).
    find = "find /opt/venv \\( -type d ! -group venv \\) -o \\( -type d ! -perm -g+w \\) -o -user $(id -u)"
    image = run([project.docker, "run", "--rm", "--entrypoint", "sh", project.image, "-c", f"{find} | head -n 5"])
    assert (image.returncode, image.stdout) == (0, ""), image.stderr
    assert "venv" in project.exec("id", "-Gn").stdout.split()
    make_wheel(project.path / "cache", "handmade", "1.0")
    project.exec(*hand_install(project, "/workspace/cache/handmade-1.0-py3-none-any.whl"))
    assert project.exec("python", "-c", "import handmade; print(handmade.VERSION)").stdout == "1.0\n"
    leaf = FRAMEWORK_LEAF[project.framework]
    owner = project.exec("python", "-c", f"import {leaf}, os; print(os.stat({leaf}.__file__).st_uid)").stdout
    assert owner.strip() == "0"  # the image installed it: the user removes root's files
    if project.manager == "uv":
        remove = ["uv", "pip", "uninstall", "--python", "/opt/venv/bin/python", leaf]
    else:
        remove = ["pip", "uninstall", "--yes", "--disable-pip-version-check", leaf]
    project.exec(*remove)
    assert project.exec("python", "-c", f"import {leaf}", check=False).returncode != 0


def test_make_lock_adds_a_dependency(project, docker_env):
    """Add a dependency, `make lock` (resolved in the tools stage, for the container's
    platforms), rebuild: the new package is importable. The lock moves only for it, and
    the rebuild installs it in a layer of its own: the framework and Jupyter layers are
    the old image's, which keeps only a few MB of its own."""
    name, old, new = INPUT_EDIT[project.manager]
    lock = project.path / template_rules.MANAGER_FILES[project.manager][1]
    before = lock.read_text()
    pins_before = locked_pins(lock)
    (project.path / name).write_text((project.path / name).read_text().replace(old, new))
    compose = f"{project.docker} compose"
    old_layers = layers(project.image)
    run([docker_env.cli, "tag", project.image, f"{project.image}-before-tqdm"])
    start = time.monotonic()
    result = run(["make", "lock", f"COMPOSE={compose}"], cwd=project.path, env=project.env)
    lock_seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tqdm" in lock.read_text() and lock.read_text() != before
    # Every pin kept: the relock adds tqdm and moves nothing else.
    assert pins_before <= locked_pins(lock), sorted(pins_before - locked_pins(lock))
    assert {name for name, _ in locked_pins(lock) - pins_before} == {"tqdm"}, sorted(locked_pins(lock) - pins_before)
    assert "updated. Rebuild and start with: make up" in result.stdout + result.stderr
    start = time.monotonic()
    project.compose("up", "--build", "-d")
    rebuild_seconds = time.monotonic() - start
    wait_for_jupyter(project)
    assert project.exec("python", "-c", "import tqdm; print(tqdm.__version__)").returncode == 0
    try:
        left_behind = unique_bytes(f"{project.image}-before-tqdm")
    finally:
        run([docker_env.cli, "image", "rm", f"{project.image}-before-tqdm"])
    new_layers = layers(project.image)
    changed = [i for i, (old, new) in enumerate(zip(old_layers, new_layers)) if old != new]
    # Kept: the base, the tools, the framework, NumPy and Jupyter, the kernel files and
    # the framework's other dependencies; new: the project's own layer, and the three
    # copies of the user's files above it (the same files, in folders of a new date).
    assert len(new_layers) == len(old_layers) and changed, (old_layers, new_layers)
    assert changed[0] >= len(old_layers) - 5 and len(changed) <= 4, (changed, len(old_layers))
    assert left_behind < 5e6, left_behind
    BENCHMARKS.append(
        f"{project.name}: make lock {lock_seconds:.1f} s, rebuild after adding tqdm {rebuild_seconds:.1f} s, "
        f"{left_behind / 1e6:.2f} MB only in the old image"
    )


@pytest.mark.variants("default", "pip-cu128", "poetry")
def test_a_small_dependency_of_the_framework_moves_without_reinstalling_the_framework(project, docker_env):
    """filelock, which torch needs, moves down (a constraint in the input, `make lock`) and
    back up (the constraint gone, the README's `make lock UPGRADE_PACKAGE=filelock`). Each
    relock moves filelock's pin alone, and each rebuild installs it in the layer of the
    framework's small dependencies: the framework's wheels (their layer) come from
    BuildKit's cache, never installed again, and the old image keeps only a few MB."""
    name, old, new = INPUT_EDIT[project.manager]
    path = project.path / name
    lock = project.path / template_rules.MANAGER_FILES[project.manager][1]
    compose = f"{project.docker} compose"
    original_input, original = path.read_text(), locked_pins(lock)
    [locked] = {version for name, version in original if name == "filelock"}
    readme = project.path / "README.md"
    [upgrade] = [line.split("#")[0].strip() for line in readme_block(readme, "upgrade") if "UPGRADE_PACKAGE" in line]
    steps = [
        ("down", original_input.replace(old, new.replace("tqdm", f"filelock<{locked}"))),
        ("up", original_input),
    ]
    for direction, text in steps:
        path.write_text(text)
        before = locked_pins(lock)
        command = (
            ["make", "lock", f"COMPOSE={compose}"] if direction == "down" else [*upgrade.split(), f"COMPOSE={compose}"]
        )
        result = run(command, cwd=project.path, env=project.env)
        assert result.returncode == 0, result.stdout + result.stderr
        after = locked_pins(lock)
        assert {name for name, _ in after ^ before} == {"filelock"}, sorted(after ^ before)
        moved = locked_version(after, "filelock")
        assert (
            moved < locked_version(before, "filelock")
            if direction == "down"
            else moved >= locked_version(original, "filelock")
        )
        run([docker_env.cli, "tag", project.image, f"{project.image}-before-bump"])
        start = time.monotonic()
        built = project.compose("--progress", "plain", "build", "lab")
        seconds = time.monotonic() - start
        output = built.stdout + built.stderr
        try:
            left_behind = unique_bytes(f"{project.image}-before-bump")
        finally:
            run([docker_env.cli, "image", "rm", f"{project.image}-before-bump"])
        assert build_steps(output, "framework.txt") == (False, True), output[-4000:]  # cached, not installed
        assert build_steps(output, "framework-large-deps.txt") == (False, True), output[-4000:]  # sympy's too
        small_layer = build_steps(output, "framework-deps.txt")
        if direction == "up" and moved == locked_version(original, "filelock"):
            # Back to the first build's pin: that layer may come from BuildKit's cache.
            assert small_layer in {(True, False), (False, True)}, output[-4000:]
        else:
            assert small_layer == (True, False), output[-4000:]  # filelock's layer ran
        assert left_behind < 50e6, left_behind
        BENCHMARKS.append(
            f"{project.name}: filelock {direction} to {'.'.join(map(str, moved))}: rebuild {seconds:.1f} s, "
            f"{left_behind / 1e6:.1f} MB only in the old image"
        )
    project.compose("up", "-d")
    wait_for_jupyter(project)
    installed = project.exec("python", "-c", "from importlib.metadata import version; print(version('filelock'))")
    assert {("filelock", installed.stdout.strip())} <= locked_pins(lock)


TRAIN_DONE = re.compile(r"^train: done epochs=(\d+) loss_first=(\S+) loss_last=(\S+) resumed_from=(\d+)$", re.MULTILINE)


def test_make_train_learns_checkpoints_and_resumes_in_the_container(project):
    """`make train` (docker/train in the running container, no GPU here): two CPU
    processes (gloo) under torchrun for PyTorch, MirroredStrategy on the CPU for
    TensorFlow. The loss falls, checkpoints/ belongs to the host user, and a second run
    with more epochs resumes after the first run's last epoch."""
    compose = f"{project.docker} compose"
    small = "--samples 8192 --batch-size 128 --checkpoint-dir checkpoints"
    outcomes = []
    for epochs in (3, 5):
        start = time.monotonic()
        result = run(
            ["make", "train", f"COMPOSE={compose}", f"ARGS=--epochs {epochs} {small}"],
            cwd=project.path, env=project.env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        seconds = time.monotonic() - start
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        [(done_epochs, first, last, resumed)] = TRAIN_DONE.findall(result.stdout)
        outcomes.append((int(done_epochs), float(first), float(last), int(resumed)))
        BENCHMARKS.append(f"{project.name}: make train --epochs {epochs} (8192 samples, CPU) {seconds:.1f} s")
    if project.framework == "pytorch":
        assert "no GPU: training on the CPU with 2 processes (gloo)" in result.stdout
        assert "train: 2 process(es), gloo, on cpu" in result.stdout
    (epochs, first, last, resumed), (epochs_2, first_2, last_2, resumed_2) = outcomes
    assert (epochs, resumed) == (3, 0) and last < 0.6 * first, outcomes
    assert (epochs_2, resumed_2) == (5, 3) and first_2 == first and last_2 < last, outcomes
    assert "epoch 4/5" in result.stdout and "epoch 3/5" not in result.stdout
    checkpoints = project.path / "checkpoints"
    assert (checkpoints.stat().st_uid, checkpoints.stat().st_gid) == (project.uid, project.gid)
    assert any(checkpoints.iterdir())


def test_a_node_that_cannot_reach_the_first_stops_within_the_timeout_naming_it(project):
    """A second node whose first node never answers: docker/train stops after
    RDZV_TIMEOUT seconds, naming the address it tried, instead of torchrun's long
    traceback or TensorFlow's wait without end for worker 0."""
    if project.framework == "pytorch":
        cluster = ["RDZV_ENDPOINT=127.0.0.1:1", "RDZV_ID=t", "NPROC_PER_NODE=1"]
    else:
        cluster = ["WORKERS=127.0.0.1:1,127.0.0.1:2"]
    start = time.monotonic()
    result = project.exec("env", "NNODES=2", "NODE_RANK=1", "RDZV_TIMEOUT=5", *cluster, "docker/train", check=False)
    seconds = time.monotonic() - start
    assert result.returncode != 0
    assert "docker/train: no rendezvous at 127.0.0.1:1 after 5s: start the first node (NODE_RANK=0)" in result.stderr
    assert 4 < seconds < 30, seconds


def test_two_nodes_meet_and_train_in_the_container(project):
    """Two nodes of one job as the cluster files start them (docker/train with NNODES=2
    and each its NODE_RANK), here two launches in the running container, the second
    node first: torchrun's c10d rendezvous for PyTorch, MultiWorkerMirroredStrategy over
    the TF_CONFIG docker/train writes from WORKERS for TensorFlow. Both finish, and the
    first node reports the training."""
    if project.framework == "pytorch":
        cluster = ["RDZV_ENDPOINT=127.0.0.1:29611", "RDZV_ID=two-nodes", "NPROC_PER_NODE=1"]
    else:
        cluster = ["WORKERS=127.0.0.1:29611,127.0.0.1:29612"]
    folder = "checkpoints/two-nodes"  # the project's top is read-only in the container
    args = ["--epochs", "2", "--samples", "4096", "--batch-size", "128", "--checkpoint-dir", folder]
    start = time.monotonic()
    nodes = []
    for rank in (1, 0):
        command = ["env", "NNODES=2", f"NODE_RANK={rank}", "RDZV_TIMEOUT=120", *cluster, "docker/train", *args]
        nodes.append(
            subprocess.Popen(
                [project.docker, "compose", "exec", "-T", "lab", *command],
                cwd=project.path,
                env=project.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    seconds = time.monotonic() - start
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-3000:] + err[-3000:]
    # One report, from the process of global rank 0: for TensorFlow worker 0's; torchrun's
    # rendezvous numbers the nodes in the order they joined, whatever their NODE_RANK.
    both = "".join(out for out, _ in outputs)
    [(epochs, loss_first, loss_last, resumed)] = TRAIN_DONE.findall(both)
    assert (int(epochs), int(resumed)) == (2, 0) and float(loss_last) < float(loss_first), both[-2000:]
    if project.framework == "pytorch":
        assert "train: 2 process(es), gloo, on cpu" in both
    else:
        assert "train: MultiWorkerMirroredStrategy, 2 replica(s)" in outputs[1][0]
    shutil.rmtree(project.path / folder)
    BENCHMARKS.append(f"{project.name}: two nodes in one container, 2 epochs (4096 samples, CPU) {seconds:.1f} s")


@pytest.mark.slurm
@pytest.mark.variants("default")
def test_a_slurm_job_trains_with_the_projects_image(project, docker_env, slurm):  # noqa: F811 - the fixture
    """The generated deploy/slurm/train.sbatch with the Docker runtime on a real one-node
    Slurm, as a 2-task job: two torchrun agents meet through the c10d rendezvous, as two
    nodes would, and training finishes with the project's own image (one variant: the
    script is the same for all)."""
    env = {
        **slurm.env,
        "RUNTIME": "docker",
        "IMAGE": project.image,
        "DOCKER": docker_env.cli,
        "DOCKER_GPUS": "none",
        "NPROC_PER_NODE": "1",  # Slurm's fake GPUs are no CUDA devices: one CPU process per agent
        "RDZV_TIMEOUT": "120",
        "STOP_TIMEOUT": "3",
    }
    # A fresh start: make train's checkpoints would make this job a resumption. The folder
    # stays, the user's: the project's containers mount it.
    for old in (project.path / "checkpoints").iterdir():
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    start = time.monotonic()
    submitted = slurm.run(
        "sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1",
        f"--gpus-per-node={slurm_cluster.GPUS}", f"--partition={slurm_cluster.PARTITION}", "--time=10",
        f"--chdir={project.path}", "deploy/slurm/train.sbatch",
        cwd=project.path, env=env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    state = slurm.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 600)
    log = project.path / f"slurm-{project.slug}-train-{job_id}.out"
    output = log.read_text(errors="replace") if log.exists() else "(no output file)"
    assert state == "COMPLETED", output[-4000:] + slurm.log()[-2000:]
    [(epochs, first, last, resumed)] = TRAIN_DONE.findall(output)
    assert int(epochs) > 0 and int(resumed) == 0 and float(last) < 0.8 * float(first), output[-2000:]
    assert "train: 2 process(es), gloo, on cpu" in output
    listed = run([docker_env.cli, "ps", "--all", "--filter", f"name={project.slug}-job{job_id}-", "-q"])
    assert listed.stdout.split() == []
    BENCHMARKS.append(f"{project.name}: Slurm job, 2 agents through c10d, trained in {time.monotonic() - start:.0f} s")


@pytest.mark.variants("default")
def test_make_up_returns_once_jupyter_answers_and_fails_with_its_log_when_it_cannot(project, tmp_path):
    """`make up` is `up --wait`: it returns when the healthcheck passes, so Jupyter
    answers at once; a Jupyter that exits (here a broken server setting) makes it fail,
    with the container's last log lines and what to do."""
    env = {key: value for key, value in project.env.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    compose = f"COMPOSE={project.docker} compose"
    project.compose("down")
    up = run(["make", "up", compose], cwd=project.path, env=env, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert http_status(f"http://127.0.0.1:{project.host_port}/api/status", project.token) == 200  # no waiting
    broken = project.path / "compose.broken.yaml"
    broken.write_text('services:\n  lab:\n    command: ["jupyter", "lab", "--ServerApp.port=not-a-port"]\n')
    try:
        failed = run(["make", "up", compose], cwd=project.path, env={**env, "COMPOSE_FILE": "compose.yaml:compose.broken.yaml"},
                     stdin=subprocess.DEVNULL)  # fmt: skip
        assert failed.returncode != 0
        assert "Jupyter did not start: the container's last log lines:" in failed.stderr, failed.stderr[-3000:]
        assert "not-a-port" in failed.stderr  # Jupyter's own complaint, from the log
        assert "Fix what the log names" in failed.stderr
    finally:
        broken.unlink()
        project.compose("up", "-d")
        wait_for_jupyter(project)


@pytest.mark.variants("default")
def test_torch_compile_works_and_its_cache_survives_down_and_up(project):
    """torch.compile on the CPU in the container (Inductor builds C++ with the image's
    compiler and Python headers), its result checked; its compiled code lands in the
    project's cache/, so after `down` and `up` the same compile is served from there:
    Inductor counts a cache hit and no miss, and loads the compiled files it wrote the
    first time, unchanged. Timings are printed, not asserted."""
    cache = project.path / "cache" / "torchinductor"
    shutil.rmtree(cache, ignore_errors=True)
    results, compiled = [], []
    for restart in (False, True):
        if restart:
            project.compose("down")
            project.compose("up", "-d")
            wait_for_jupyter(project)
        result = json.loads(project.exec("python", "-c", COMPILE_ONCE).stdout.strip().splitlines()[-1])
        assert result["matches"], result
        results.append(result)
        compiled.append({path: path.stat().st_mtime_ns for path in cache.rglob("*.so")})
    first, second = results
    assert compiled[0], "no compiled code in cache/torchinductor"
    assert (first["hits"], first["misses"]) == (0, 1), first  # compiled, and written to cache/
    assert (second["hits"], second["misses"]) == (1, 0), second  # loaded from cache/
    assert compiled[1] == compiled[0]  # the same files: nothing compiled again
    assert (cache.stat().st_uid, cache.stat().st_gid) == (project.uid, project.gid)
    BENCHMARKS.append(
        f"{project.name}: torch.compile on the CPU {first['seconds']:.1f} s, "
        f"after down/up from cache/ {second['seconds']:.1f} s"
    )


COMPILE_ONCE = """
import json, time, torch
from torch._dynamo.utils import counters

def function(x, y):
    return torch.nn.functional.gelu(x @ y) + torch.sin(x).sum(dim=1, keepdim=True)

x, y = torch.randn(64, 64), torch.randn(64, 64)
start = time.perf_counter()
result = torch.compile(function)(x, y)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "matches": bool(torch.allclose(result, function(x, y), atol=1e-5)),
                  "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def test_files_written_in_the_container_belong_to_the_host_user(project):
    project.exec(
        "sh", "-c", "echo hi > src/from_container.txt && mkdir -p src/newdir cache/torch && echo x > cache/torch/f"
    )
    for name in ("src/from_container.txt", "src/newdir", "cache/torch/f"):
        info = (project.path / name).stat()
        assert (info.st_uid, info.st_gid) == (project.uid, project.gid), name


@pytest.mark.variants("default")
def test_the_container_saves_notebooks_and_commits_but_cannot_change_what_the_host_executes(project):
    """The default project is a git clone: in its container, a notebook saves (Jupyter's
    API, as JupyterLab saves) and git commits, both as the host user; every way to plant
    a command for the host's next `make` or commit fails, and the host's files are as
    they were (issue #26)."""
    watched = [".git/config", "Makefile", "docker/compose-up", ".devcontainer/devcontainer.json", ".env"]
    before = {name: (project.path / name).read_bytes() for name in watched}
    hooks = sorted(path.name for path in (project.path / ".git" / "hooks").iterdir())
    assert planted(project.exec("sh", "-c", PLANT).stdout) == []
    assert {name: (project.path / name).read_bytes() for name in watched} == before
    assert sorted(path.name for path in (project.path / ".git" / "hooks").iterdir()) == hooks
    assert not (project.path / "GNUmakefile").exists() and (project.path / ".git").is_dir()

    assert save_notebook(project.host_port, project.token, "notebooks/saved.ipynb") == 201
    saved = project.path / "notebooks" / "saved.ipynb"
    assert (saved.stat().st_uid, saved.stat().st_gid) == (project.uid, project.gid)
    assert save_notebook(project.host_port, project.token, "at-the-top.ipynb") >= 400  # read-only there
    assert not (project.path / "at-the-top.ipynb").exists()

    commit = project.exec(
        "sh", "-c",
        "git add notebooks/saved.ipynb && git -c user.name=Lab -c user.email=lab@example.org "
        "commit -qm 'From the container' && git log -1 --format=%s",
    )  # fmt: skip
    assert commit.stdout.strip().splitlines()[-1] == "From the container"
    trusting = {**os.environ, "GIT_CONFIG_GLOBAL": git_config(project.path.parent.parent)}
    host_log = run(["git", "log", "-1", "--format=%s"], cwd=project.path, env=trusting)
    assert host_log.stdout.strip() == "From the container", host_log.stderr
    strangers = [str(path) for path in (project.path / ".git").rglob("*")
                 if (path.lstat().st_uid, path.lstat().st_gid) != (project.uid, project.gid)]  # fmt: skip
    assert strangers == []
    # The container sees what it may write, and says so.
    doctor = project.exec("python", "docker/doctor.py", "--in-container").stdout
    assert "ok    /workspace/notebooks is writable" in doctor and "FAIL" not in doctor, doctor


def test_down_v_keeps_the_users_files(project):
    """Last in the module: it takes the project down and brings it back."""
    project.exec("sh", "-c", "echo work > notebooks/mine.txt && echo data > data/set.csv && echo c > cache/keep")
    before = {p: p.read_bytes() for p in project.path.rglob("*") if p.is_file() and p.name != ".env"}
    project.compose("down", "-v")
    after = {p: p.read_bytes() for p in project.path.rglob("*") if p.is_file() and p.name != ".env"}
    assert after == before
    for name in ("src/from_container.txt", "notebooks/mine.txt", "data/set.csv", "cache/keep"):
        assert (project.path / name).is_file(), name
    project.compose("up", "-d")
    wait_for_jupyter(project)
    assert project.exec("cat", "notebooks/mine.txt").stdout == "work\n"


def pem_blocks(text: str) -> set[str]:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL))


def extra_ca_lines(project: RunningProject, docker_env) -> list[str]:
    """Base64 lines of the certificates the host trusts beyond every CA bundle the image
    carries (the system's, certifi's copies in Python packages): this network's
    TLS-intercepting proxy CA, the one passed as a build secret. Lines from the end of
    each certificate (its signature) are unique to it, unlike its subject."""
    if not docker_env.ca_bundle:
        return []
    bundles = "find / -xdev \\( -name ca-certificates.crt -o -name cacert.pem \\) -exec cat {} + 2>/dev/null"
    image_certs = project.exec("sh", "-c", bundles, check=False).stdout
    # find exits 1 on an unreadable folder; no certificate at all means the exec failed
    # (a stopped container), which would make every host certificate look extra.
    assert "BEGIN CERTIFICATE" in image_certs, "could not read the image's CA bundles"
    extra = pem_blocks(Path(docker_env.ca_bundle).read_text()) - pem_blocks(image_certs)
    return [line for block in extra for line in block.splitlines()[-4:-1] if len(line) == 64]


def scan_stream(stream, needles: list[bytes], found: set[bytes]) -> None:
    """Search a file object in chunks, overlapping by the longest needle."""
    overlap = max(map(len, needles)) - 1
    tail = b""
    while chunk := stream.read(16 << 20):
        window = tail + chunk
        found.update(needle for needle in needles if needle in window)
        tail = window[-overlap:] if overlap else b""


def scan_saved_image(docker: str, image: str, needles: list[bytes]) -> list[bytes]:
    """`docker save`, streamed: every file of every layer searched for the needles."""
    found: set[bytes] = set()
    with (
        subprocess.Popen([docker, "save", image], stdout=subprocess.PIPE) as save,
        tarfile.open(fileobj=save.stdout, mode="r|") as outer,
    ):
        for member in outer:
            if not member.isfile():
                continue
            handle = outer.extractfile(member)
            if member.name.endswith(".tar"):  # a layer: search the files inside it
                with tarfile.open(fileobj=handle, mode="r|") as layer:
                    for entry in layer:
                        if entry.isfile():
                            scan_stream(layer.extractfile(entry), needles, found)
            else:  # image config and manifest
                scan_stream(handle, needles, found)
    return sorted(found)


def test_no_secret_reaches_the_image(project, docker_env):
    """The token and the CA bundle appear nowhere in the image: not in its history, its
    metadata, nor (default project) in any file of any layer of `docker save`."""
    image = project.image
    ca_lines = extra_ca_lines(project, docker_env)
    if os.environ.get("EXPECT_TLS_INTERCEPTION") == "1":
        assert ca_lines, "the intercepting proxy's CA was not found in TEST_CA_BUNDLE"
    history = run([docker_env.cli, "history", "--no-trunc", image]).stdout
    inspect = run([docker_env.cli, "image", "inspect", image]).stdout
    for text in (history, inspect):
        assert project.token not in text
        assert "BEGIN CERTIFICATE" not in text
        assert not [line for line in ca_lines if line in text]
    if project.name == "Docker Default":
        needles = [project.token.encode(), *(line.encode() for line in ca_lines[:3])]
        assert scan_saved_image(docker_env.cli, image, needles) == []


def test_jupyter_prints_the_host_address_and_listens_on_loopback_only(project):
    logs = project.compose("logs", "--no-color", "lab").stdout
    assert f"http://127.0.0.1:{project.host_port}/lab" in logs
    assert f":{project.container_port}/" not in logs.split("is running at:")[-1].split("\n")[1]
    listeners = run(["ss", "-ltnH", f"sport = :{project.host_port}"]).stdout.split("\n")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listeners if line.strip()}
    assert addresses == {"127.0.0.1"}, listeners


def test_build_without_the_ca_bundle_fails_and_says_how_to_pass_it(project, docker_env):
    """Behind this network's TLS-intercepting proxy, the CA secret is what makes builds
    work: without it the first download fails, with a message naming CA_BUNDLE."""
    if project.name != "Docker Default":
        return  # once is enough
    # Plain `docker build` of the tools stage with the project's default (empty) bundle;
    # --no-cache, so the steps run again instead of reusing layers built with the CA.
    cmd = [docker_env.cli, "build", "--no-cache", "--progress", "plain", "--target", "tools"]
    cmd += ["--build-arg", f"BASE_IMAGE={docker_env.base_image}", "--secret", "id=ca_bundle,src=docker/no-extra-ca.pem"]
    result = run([*cmd, "."], cwd=project.path, env={**project.env, "DOCKER_BUILDKIT": "1"})
    if result.returncode == 0:
        # This network does not intercept TLS: nothing to show, unless told it does (CI).
        assert os.environ.get("EXPECT_TLS_INTERCEPTION") != "1", "built without the CA behind the proxy"
        return
    output = result.stdout + result.stderr
    assert "set CA_BUNDLE=/path/to/your-company-ca.pem in .env" in output
    assert re.search(r"certificate|SSL|TLS", output)


# The default project, and one other framework and manager.
DEVCONTAINER_VARIANTS = {"Docker Default", "Docker TF pip"}


def test_devcontainer_cli_opens_the_project_as_the_user_with_its_environment(project, docker_env, devcontainer_cli):
    """The real devcontainer CLI: `up` on a machine without a GPU (COMPOSE_FILE says so),
    then `exec` shows the user, the workspace, /opt/venv's Python and the framework, and
    the first notebook runs through the project's kernel. It may recreate the container
    with the CLI's settings; the tests after it use that one."""
    if project.name not in DEVCONTAINER_VARIANTS:
        return
    cli = [devcontainer_cli, "--workspace-folder", str(project.path), "--docker-path", docker_env.cli]
    up = run([devcontainer_cli, "up", *cli[1:]], cwd=project.path, env=project.env)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    outcome = json.loads(up.stdout.strip().splitlines()[-1])
    # The container's own user (compose.yaml's `user`: your ids on rootful Docker).
    assert outcome["outcome"] == "success" and outcome["remoteUser"] == "dev"
    assert outcome["remoteWorkspaceFolder"] == "/workspace"
    # The container `up` attached to (the compose service, already running or new).
    cli += ["--container-id", outcome["containerId"]]
    module = {"pytorch": "torch", "tensorflow": "tensorflow"}[project.framework]
    probe = f"id -u; id -g; pwd; command -v python; python -c 'import {module}; print(\"imported\")'"
    shown = run([devcontainer_cli, "exec", *cli[1:], "sh", "-c", probe], cwd=project.path, env=project.env)
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.strip().splitlines()[-5:]
    assert lines == [str(project.uid), str(project.gid), "/workspace", "/opt/venv/bin/python", "imported"]
    notebook = run(
        [devcontainer_cli, "exec", *cli[1:], "jupyter", "nbconvert", "--to", "notebook", "--execute", "--stdout",
         "notebooks/gpu_check.ipynb"],
        cwd=project.path,
        env=project.env,
    )  # fmt: skip
    assert notebook.returncode == 0, notebook.stderr[-3000:]
    executed = json.loads(notebook.stdout)
    assert executed["metadata"]["kernelspec"]["name"] == project.slug
    text = json.dumps(executed["cells"][1]["outputs"])
    assert "No GPU is usable" in text and "GFLOP/s" in text


def test_allreduce_check_runs_on_two_processes_with_gloo(project):
    """The multi-GPU code path, on CPU processes: torchrun, torch.distributed, gloo."""
    if project.framework != "pytorch":
        return  # TensorFlow has no torchrun path
    result = project.exec(
        "torchrun", "--standalone", "--nproc-per-node", "2", "gpu_test.py", "--allreduce", "--json", "--quick"
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] is True and report["backend"] == "gloo" and report["world_size"] == 2
    assert report["busbw_gbps"] > 0


@pytest.mark.variants("default")
def test_cpus_and_memory_reach_the_container(project):
    """CPUS and MEMORY (.env, or the lab's team.env) bound the container; unset, nothing
    is bounded."""

    def limits() -> tuple[int, int]:
        [container] = project.compose("ps", "-q", "lab").stdout.split()
        inspect = run(
            [project.docker, "inspect", container, "--format", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}"]
        )
        cpus, memory = inspect.stdout.split()
        return int(cpus), int(memory)

    assert limits() == (0, 0)
    bounded = {**project.env, "CPUS": "1.5", "MEMORY": "3g"}
    try:
        result = run([project.docker, "compose", "up", "-d", "--wait"], cwd=project.path, env=bounded)
        assert result.returncode == 0, result.stderr
        assert limits() == (1_500_000_000, 3 * 1024**3)
    finally:
        project.compose("up", "-d", "--wait")
    assert limits() == (0, 0)


@pytest.mark.variants("default")
def test_a_teammates_clone_builds_with_the_labs_settings_from_team_env(project, docker_env):
    """The default project is a fresh clone with the lab's settings only in the committed
    team.env: it built (the fixture) from the lab's base image, through the lab's CA, with
    nothing typed, and doctor says where each value came from."""
    assert "BASE_IMAGE" not in project.env and "CA_BUNDLE" not in project.env
    env = env_values(project.path / ".env")
    assert env["BASE_IMAGE"] == docker_env.base_image
    config = json.loads(project.compose("config", "--format", "json").stdout)
    assert config["services"]["lab"]["build"]["args"]["BASE_IMAGE"] == docker_env.base_image
    if docker_env.ca_bundle:  # without it, this network's proxy fails every download
        assert env["CA_BUNDLE"] == "certs/lab-ca.pem"
        assert config["secrets"]["ca_bundle"]["file"] == str(project.path / "certs" / "lab-ca.pem")
    # The template's default base is Ubuntu (nvidia/cuda); the lab's stand-in is Debian.
    assert "ID=debian" in project.exec("cat", "/etc/os-release").stdout
    doctor = run([sys.executable, "docker/doctor.py"], cwd=project.path, env=project.env)
    assert f"BASE_IMAGE={docker_env.base_image}  from team.env" in doctor.stdout, doctor.stdout


@pytest.mark.variants("default")
def test_the_readme_first_run_and_daily_commands_work(project, tmp_path):
    """The project README, as a newcomer follows it: every command block it gives for
    the first run and daily use, verbatim, in its order, on the real engine. (The CPU
    form: this machine has no GPU, so COMPOSE_FILE=compose.yaml, as the README says.)"""
    readme = project.path / "README.md"
    # `docker` on PATH is the client that builds here (see conftest.docker_env).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(project.docker)
    env = {**project.env, "PATH": f"{bin_dir}{os.pathsep}{project.env['PATH']}"}
    for inherited in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS"):  # a user's shell, not `make test`'s child
        env.pop(inherited, None)

    def run_block(key: str) -> str:
        output = ""
        for line in readme_block(readme, key):
            result = run(["bash", "-c", line], cwd=project.path, env=env, stdin=subprocess.DEVNULL)
            assert result.returncode == 0, f"README `{line}`:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            output += result.stdout
        return output

    project.compose("down")  # the README starts with nothing running (doctor checks the port is free)
    doctor = run_block("check-host")
    assert "GPU not requested" in doctor and "  FAIL  " not in doctor
    run_block("start")
    # `make up` returned once Jupyter answers: no waiting here.
    assert http_status(f"http://127.0.0.1:{project.host_port}/api/status", project.token) == 200
    assert "No GPU is usable" in run_block("gpu-test")
    [url] = [line for line in run_block("open-jupyter").splitlines() if line.startswith("http")]
    assert url == f"http://127.0.0.1:{project.host_port}/lab?token={project.token}"
    assert http_status(url) == 200  # the printed address opens JupyterLab as it is

    run_block("pause")  # make stop, make start: the same container
    # `make start` returned once Jupyter answers, as `make up` does: no waiting here either.
    assert http_status(f"http://127.0.0.1:{project.host_port}/api/status", project.token) == 200
    # The table's interactive commands, fed from a pipe as a person would type them.
    shell = run(["make", "shell"], cwd=project.path, env=env, input="id -u\npwd\nexit\n")
    assert shell.returncode == 0 and shell.stdout.split()[-2:] == [str(project.uid), "/workspace"], shell
    lock = project.path / template_rules.MANAGER_FILES[project.manager][1]
    before = lock.read_bytes()
    run_block("add-dependency")  # make lock, make up (no dependency added: the lock stays)
    assert lock.read_bytes() == before
    wait_for_jupyter(project)

    project.exec("sh", "-c", "echo work > notebooks/readme-check.txt")
    listing = run_block("remove")  # docker compose down -v, then ls src notebooks
    assert "readme-check.txt" in listing and not project.compose("ps", "-aq").stdout.strip()
    run_block("cpu-only")
    wait_for_jupyter(project)
    assert project.exec("cat", "notebooks/readme-check.txt").stdout == "work\n"

    # The last step (the project's images go): this clone's images, and no one else's.
    label = f"dev.gpu-template.clone={project.compose_project}"
    other = f"gpu-template-test-other-clone-{project.compose_project}:dev"
    build = run(
        [project.docker, "build", "-q", "-t", other, "--label", "dev.gpu-template.clone=another_clone", "-"],
        input=f"FROM {env_values(project.path / '.env')['BASE_IMAGE']}\n",
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    try:
        assert run([project.docker, "image", "ls", "-q", "--filter", f"label={label}"]).stdout.strip()
        run_block("clean-images")
        assert run([project.docker, "image", "ls", "-q", "--filter", f"label={label}"]).stdout.strip() == ""
        assert not project.compose("ps", "-aq").stdout.strip()
        assert run([project.docker, "image", "inspect", other]).returncode == 0  # another clone's stays
        assert (project.path / "notebooks" / "readme-check.txt").read_text() == "work\n"
    finally:
        run([project.docker, "image", "rm", "-f", other])
