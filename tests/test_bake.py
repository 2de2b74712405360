"""Baked projects: the exact files, nothing left unrendered, every structured file
parses, and the values users depend on (ports, ids, token, lock, base image) are right."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import json5
import pytest
import yaml
from conftest import BENCHMARKS, TEMPLATE, env_values, fake_bin, fake_nvidia_smi, run, template_rules, tool
from cookiecutter.main import cookiecutter

TABLE = template_rules.load_table()

COMMON_FILES = {
    ".cruft.json",
    ".devcontainer/devcontainer.json",
    ".devcontainer/select-gpu",
    ".dockerignore",
    ".env",
    ".env.example",
    ".gitattributes",
    ".gitignore",
    ".hadolint.yaml",
    "Dockerfile",
    "Makefile",
    "README.md",
    "cache/.gitignore",
    "compose.gpu.yaml",
    "compose.mounts.yaml",
    "compose.podman.yaml",
    "compose.yaml",
    "data/.gitignore",
    "deploy/k8s/render.py",
    "deploy/k8s/values.env",
    "deploy/slurm/launch",
    "deploy/slurm/train.sbatch",
    "docker/compose-up",
    "docker/jupyter_server_config.py",
    "docker/doctor.py",
    "docker/env_layers.py",
    "docker/install-layer",
    "docker/setup_env.py",
    "docker/kernel.json",
    "docker/lab-overrides.json",
    "docker/lock",
    "docker/no-extra-ca.pem",
    "docker/podman-compose",
    "docker/push",
    "docker/share-env",
    "docker/create-user",
    "docker/train",
    "docker/with-build-ca",
    "gpu_test.py",
    "notebooks/gpu_check.ipynb",
    "ruff.toml",
    "src/gpu_lab/__init__.py",
    "src/gpu_lab/train.py",
    "team.env",
}
MANAGERS = ["uv", "pip", "poetry"]
# Every combination the template offers: one shipped lock each.
SUPPORTED = sorted(path.name for path in template_rules.LOCKS_DIR.iterdir())
FRAMEWORK_CUDA = {"pytorch": "13.0", "tensorflow": "12.5"}


def answers_for(key: str) -> dict:
    """The answers of one shipped combination, as the maintenance script reads its key."""
    sys.path.insert(0, str(TEMPLATE / "scripts"))
    import relock

    return relock.parse_key(key)


DEFAULT_FILES = COMMON_FILES | set(template_rules.MANAGER_FILES["uv"])


def files_of(project: Path) -> set[str]:
    return {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}


@pytest.fixture
def default_project(bake) -> Path:
    baked = bake()
    assert baked.exit_code == 0, baked.output
    return baked.project_path


def compose_config(project: Path, compose_file: str | None = None, profiles: tuple[str, ...] = ()) -> dict:
    """`docker compose config` as JSON: interpolation and schema checks, no daemon needed;
    `profiles` adds the services of those profiles."""
    docker = os.environ.get("DOCKER") or "docker"
    if run([docker, "compose", "version"]).returncode != 0:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("docker compose is required (REQUIRE_DOCKER=1)")
        pytest.skip("docker compose is not installed")
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    if compose_file:
        env["COMPOSE_FILE"] = compose_file
    if profiles:
        env["COMPOSE_PROFILES"] = ",".join(profiles)
    result = run([docker, "compose", "config", "--format", "json"], cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("key", SUPPORTED)
def test_every_supported_combination_bakes_exactly_its_files(bake, key):
    answers = answers_for(key)
    baked = bake(**answers, readme_language="en+ko")  # both READMEs, rendered for each combination
    assert baked.exit_code == 0, baked.output
    project = baked.project_path
    expected = COMMON_FILES | {"README.ko.md"} | set(template_rules.MANAGER_FILES[answers["dependency_manager"]])
    assert files_of(project) == expected
    for name in files_of(project):
        text = (project / name).read_text(encoding="utf-8")
        for marker in ("{{", "{%", "{#", "cookiecutter."):
            assert marker not in text, f"{marker!r} left in {name}"
    lock_name = template_rules.MANAGER_FILES[answers["dependency_manager"]][1]
    shipped = template_rules.shipped_lock(key, answers["dependency_manager"]).read_text()
    assert (project / lock_name).read_text() == shipped.replace("{{ cookiecutter.__dist_name }}", "gpu-lab")
    cuda = TABLE["cuda"][answers["cuda_version"]]
    ubuntu = TABLE["python"][answers["python_version"]]["ubuntu"]
    assert (
        f"ARG BASE_IMAGE=nvidia/cuda:{cuda['image_version']}-base-ubuntu{ubuntu}\n"
        in (project / "Dockerfile").read_text()
    )


def test_default_project_has_exactly_the_expected_files(default_project):
    assert files_of(default_project) == DEFAULT_FILES
    # Bind-mounted folders exist before Docker could create them as root.
    for name in ("src", "notebooks", "data", "cache"):
        assert (default_project / name).is_dir()


def test_nothing_is_left_unrendered(default_project):
    for name in files_of(default_project):
        text = (default_project / name).read_text(encoding="utf-8")
        for marker in ("{{", "{%", "{#", "cookiecutter."):
            assert marker not in text, f"{marker!r} left in {name}"


def test_every_structured_file_parses(default_project):
    for name in ("compose.yaml", "compose.gpu.yaml", "compose.podman.yaml", ".hadolint.yaml"):
        assert isinstance(yaml.safe_load((default_project / name).read_text()), dict), name
    for name in ("pyproject.toml", "uv.lock"):
        tomllib.loads((default_project / name).read_text())
    json.loads((default_project / "docker/kernel.json").read_text())
    json.loads((default_project / "notebooks/gpu_check.ipynb").read_text())
    json5.loads((default_project / ".devcontainer/devcontainer.json").read_text())


def test_helper_scripts_are_executable(default_project):
    for name in (
        "docker/with-build-ca",
        "docker/lock",
        "docker/install-layer",
        "docker/share-env",
        "docker/create-user",
        "docker/push",
        "docker/podman-compose",
        "docker/train",
        "deploy/slurm/launch",
        ".devcontainer/select-gpu",
    ):
        assert (default_project / name).stat().st_mode & stat.S_IXUSR, name


def test_env_holds_a_private_random_token(bake):
    first, second = bake(), bake()
    env = first.project_path / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    values = env_values(env)
    token = values["JUPYTER_TOKEN"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 random bytes, url-safe base64
    assert token != env_values(second.project_path / ".env")["JUPYTER_TOKEN"]
    assert env_values(first.project_path / ".env.example")["JUPYTER_TOKEN"] == ""
    assert ".env" in (first.project_path / ".gitignore").read_text().splitlines()
    for name in files_of(first.project_path) - {".env"}:
        assert token not in (first.project_path / name).read_text(), f"token leaked into {name}"


def test_env_carries_the_answers(bake):
    baked = bake(uid=4321, gid=4322, jupyter_host_port=28888, jupyter_container_port=9999, project_name="Vision Lab")
    assert baked.exit_code == 0, baked.output
    values = env_values(baked.project_path / ".env")
    assert values["USER_UID"] == "4321" and values["USER_GID"] == "4322"
    assert values["JUPYTER_HOST_PORT"] == "28888" and values["JUPYTER_CONTAINER_PORT"] == "9999"
    # This clone's names: the project, the user (uid 4321 has no account here) and a hash
    # of the folder, so clones of one project on one server never share containers or images.
    assert re.fullmatch(r"vision_lab-u4321-[0-9a-f]{6}", values["COMPOSE_PROJECT_NAME"])
    assert values["IMAGE_NAME"] == f"{values['COMPOSE_PROJECT_NAME']}:dev"
    assert values["GPU_DEVICES"] == "all"


@pytest.mark.parametrize(("runtimes", "compose_file"), [("io.containerd.runc.v2 nvidia runc", "compose.yaml:compose.gpu.yaml"),
                                                        ("io.containerd.runc.v2 runc", "compose.yaml")])  # fmt: skip
def test_env_takes_the_gpu_file_only_where_docker_has_the_nvidia_runtime(
    bake, tmp_path, monkeypatch, runtimes, compose_file
):
    docker = f"#!/bin/sh\n[ \"$1\" = info ] && printf ' Runtimes: {runtimes}\\n'\n"
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, docker=docker)}{os.pathsep}{os.environ['PATH']}")
    baked = bake()
    assert baked.exit_code == 0, baked.output
    assert env_values(baked.project_path / ".env")["COMPOSE_FILE"] == compose_file
    no_runtime = "Docker has no NVIDIA runtime: the project runs on the CPU (COMPOSE_FILE=compose.yaml)"
    assert (no_runtime in baked.output) == (compose_file == "compose.yaml")


def test_compose_publishes_jupyter_on_loopback_and_gpu_file_reserves_the_gpu(bake):
    project = bake(jupyter_host_port=28888, jupyter_container_port=9999).project_path
    cpu = compose_config(project, "compose.yaml")["services"]["lab"]
    assert cpu["ports"] == [
        {"mode": "ingress", "host_ip": "127.0.0.1", "target": 9999, "published": "28888", "protocol": "tcp"}
    ]
    assert "deploy" not in cpu
    assert cpu["shm_size"] == str(8 * 2**30)
    assert cpu["volumes"][0]["type"] == "bind" and cpu["volumes"][0]["target"] == "/workspace"
    assert cpu["security_opt"] == ["no-new-privileges:true"]
    gpu = compose_config(project, "compose.yaml:compose.gpu.yaml")["services"]["lab"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"capabilities": ["gpu"], "driver": "nvidia", "count": -1}
    ]


@pytest.mark.parametrize("manager", MANAGERS)
def test_lock_is_the_shipped_lock(bake, manager):
    project = bake(dependency_manager=manager).project_path
    lock_name = template_rules.MANAGER_FILES[manager][1]
    shipped = template_rules.shipped_lock(f"pytorch-cu130-py3.12-{manager}", manager).read_text()
    assert (project / lock_name).read_text() == shipped.replace("{{ cookiecutter.__dist_name }}", "gpu-lab")


def test_uv_lock_root_is_the_project(default_project):
    root = [
        p
        for p in tomllib.loads((default_project / "uv.lock").read_text())["package"]
        if p.get("source") == {"virtual": "."}
    ]
    assert [p["name"] for p in root] == ["gpu-lab"]


def test_pip_lock_hashes_every_pin(bake):
    text = (bake(dependency_manager="pip").project_path / "requirements.txt").read_text()
    logical_lines = text.replace("\\\n", " ").splitlines()  # join backslash continuations
    pins = [line for line in logical_lines if re.match(r"[A-Za-z0-9]", line)]
    assert len(pins) > 100
    for pin in pins:
        assert re.match(r"[A-Za-z0-9_.-]+==\S+", pin), pin
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", pin), f"no hash: {pin}"
    assert {"torch", "torchvision", "numpy", "jupyterlab"} <= {pin.split("==")[0] for pin in pins}


def test_versions_come_from_the_table(default_project):
    pyproject = tomllib.loads((default_project / "pyproject.toml").read_text())
    pins = {dep.split("==")[0]: dep.split("==")[1] for dep in pyproject["project"]["dependencies"] if "==" in dep}
    assert pins == TABLE["frameworks"]["pytorch"]["packages"]  # the 13.0 build: the framework's own pins
    assert pyproject["project"]["requires-python"] == ">=3.12,<3.15,!=3.14.1"
    locked = {p["name"]: p["version"] for p in tomllib.loads((default_project / "uv.lock").read_text())["package"]}
    assert {name: locked[name] for name in pins} == pins
    cuda = TABLE["cuda"]["13.0"]
    dockerfile = (default_project / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE=nvidia/cuda:{cuda['image_version']}-base-ubuntu24.04\n" in dockerfile
    assert f">= {template_rules.min_driver(TABLE, '13.0')}" in (default_project / "README.md").read_text()
    assert 'ENV NVIDIA_REQUIRE_CUDA="cuda>=13.0 ${NVIDIA_REQUIRE_CUDA}"' in dockerfile


@pytest.mark.parametrize("key", [k for k in SUPPORTED if "-py3.12-" in k])
def test_generated_files_pass_the_linters(bake, key):
    """hadolint (warnings fail), shellcheck, ruff, the compose-spec schema, and
    `docker compose config` with and without the GPU file, for every framework and manager."""
    project = bake(**answers_for(key)).project_path
    checks = [
        [tool("hadolint"), "Dockerfile"],  # .hadolint.yaml: fail on warnings too
        [tool("shellcheck"), "docker/with-build-ca", "docker/lock", "docker/compose-up", "docker/podman-compose",
         "docker/install-layer", "docker/share-env", "docker/create-user", "docker/push", "docker/train",
         "deploy/slurm/launch", "deploy/slurm/train.sbatch", ".devcontainer/select-gpu"],
        [tool("ruff"), "check", "."],
        [tool("ruff"), "format", "--check", "."],
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml", "compose.gpu.yaml",
         "compose.podman.yaml"],
        [tool("check-jsonschema"), "--schemafile", str(TEMPLATE / "schemas" / "devcontainer.schema.json"),
         "--force-filetype", "json5", ".devcontainer/devcontainer.json"],
    ]  # fmt: skip
    for cmd in checks:
        result = run(cmd, cwd=project)
        assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}{result.stderr}"
    assert "deploy" not in compose_config(project, "compose.yaml")["services"]["lab"]
    assert "deploy" in compose_config(project, "compose.yaml:compose.gpu.yaml")["services"]["lab"]


def test_tensorflow_project_grows_gpu_memory_and_installs_the_cuda_extra(bake):
    baked = bake(framework="tensorflow", cuda_version="12.5")
    assert baked.exit_code == 0, baked.output
    project = baked.project_path
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"tensorflow[and-cuda]=={TABLE['frameworks']['tensorflow']['packages']['tensorflow']}" in dependencies
    lab = yaml.safe_load((project / "compose.yaml").read_text())["services"]["lab"]
    assert lab["environment"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in (bake().project_path / "compose.yaml").read_text()


def with_fake_driver(tmp_path, monkeypatch, driver: str | None) -> None:
    """nvidia-smi reports `driver` as the host's would, or (None) fails as it does when
    no driver is loaded."""
    fake_nvidia_smi(tmp_path, monkeypatch, f"echo {driver}" if driver else "echo 'NVIDIA-SMI has failed'; exit 9")


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_cuda_default_follows_the_framework_without_a_driver(bake, tmp_path, monkeypatch, framework):
    """`--no-input framework=tensorflow` must not land on a PyTorch-only CUDA."""
    with_fake_driver(tmp_path, monkeypatch, None)
    baked = bake(framework=framework)
    assert baked.exit_code == 0, baked.output
    cuda = FRAMEWORK_CUDA[framework]
    image = f"nvidia/cuda:{TABLE['cuda'][cuda]['image_version']}-"
    assert image in (baked.project_path / "Dockerfile").read_text()
    assert "NOTE:" not in baked.output


def test_a_host_driver_too_old_for_the_default_is_reported_not_refused(bake, tmp_path, monkeypatch):
    with_fake_driver(tmp_path, monkeypatch, "550.54.14")
    baked = bake()
    assert baked.exit_code == 0, baked.output
    assert baked.project_path.name == "gpu_lab"
    assert "cuda_version" not in baked.answers  # the default, read from the fake driver: 12.8
    assert '"cuda_version": "12.8"' in (baked.project_path / ".cruft.json").read_text()
    assert "NOTE:" not in baked.output
    # An explicit answer this driver cannot run is reported, and generated all the same.
    baked = bake(cuda_version="13.0")
    assert baked.exit_code == 0, baked.output
    assert (
        "NOTE: this host's NVIDIA driver 550.54.14 is older than the CUDA 13.0 build of PyTorch 2.14.1 needs (580.65.06)"
        in baked.output
    )
    with_fake_driver(tmp_path, monkeypatch, "580.95.05")
    baked = bake()
    assert baked.exit_code == 0 and "NOTE:" not in baked.output, baked.output


def lock_tools_env() -> dict:
    """PATH with uv and poetry (the dev venv), and a Python the default lock accepts."""
    python = next(
        (str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.1[2-4].*/bin/python3")) if p.exists()),
        None,
    ) or next((p for p in ("/usr/bin/python3.12", "/usr/bin/python3.13") if Path(p).exists()), None)
    if python is None:
        pytest.skip("no Python >= 3.12 interpreter for uv to check the lock with")
    path = f"{Path(tool('uv')).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "UV_PYTHON": python, "UV_NO_PYTHON_DOWNLOADS": "1"}


NATIVE_LOCK_CHECK = {
    "uv": ["uv", "lock", "--check", "--offline"],
    "pip": ["sh", "docker/lock", "--check"],  # requirements.txt records requirements.in's sha256
    "poetry": ["poetry", "check", "--lock"],
}


@pytest.mark.parametrize("manager", MANAGERS)
def test_fresh_lock_matches_its_input_offline(bake, manager):
    project = bake(dependency_manager=manager).project_path
    env = lock_tools_env()
    for cmd in (NATIVE_LOCK_CHECK[manager], ["sh", "docker/lock", "--check"]):
        result = run(cmd, cwd=project, env=env)
        assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"


# An edit of each manager's input that its lock does not cover.
INPUT_EDIT = {
    "uv": ("pyproject.toml", '    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "tqdm",\n'),
    "pip": ("requirements.in", "numpy>=1.26\n", "numpy>=1.26\ntqdm\n"),
    "poetry": ("pyproject.toml", '    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "tqdm",\n'),
}


@pytest.mark.parametrize("manager", MANAGERS)
def test_lock_that_no_longer_matches_its_input_is_refused(bake, manager):
    project = bake(dependency_manager=manager).project_path
    name, old, new = INPUT_EDIT[manager]
    text = (project / name).read_text()
    assert old in text
    (project / name).write_text(text.replace(old, new))
    result = run(["sh", "docker/lock", "--check"], cwd=project, env=lock_tools_env())
    assert result.returncode == 1
    lock_name = template_rules.MANAGER_FILES[manager][1]
    assert f"{lock_name} does not match {name}: run `make lock`" in result.stderr


def test_answers_are_data_not_code(bake):
    name = 'Tom\'s "GPU" \\ Lab'
    baked = bake(project_name=name, project_slug="toms_lab")
    assert baked.exit_code == 0, baked.output
    project = baked.project_path
    assert json5.loads((project / ".devcontainer/devcontainer.json").read_text())["name"] == name
    assert json.loads((project / "docker/kernel.json").read_text())["display_name"] == f"Python ({name})"
    description = tomllib.loads((project / "pyproject.toml").read_text())["project"]["description"]
    assert description == f"Development environment for {name}"


def test_python_310_uses_ubuntu_2204_and_its_own_lock(bake):
    baked = bake(python_version="3.10")
    assert baked.exit_code == 0, baked.output
    assert "ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu22.04\n" in (baked.project_path / "Dockerfile").read_text()
    lock = tomllib.loads((baked.project_path / "uv.lock").read_text())
    assert lock["requires-python"] == ">=3.10, <3.15"  # uv keeps the bounds only


def test_regenerating_keeps_the_users_files_and_token(bake, _cookiecutter_config_file):
    baked = bake()
    project = baked.project_path
    token = env_values(project / ".env")["JUPYTER_TOKEN"]
    (project / "src/gpu_lab/model.py").write_text("MINE = 1\n")
    (project / "notebooks/gpu_check.ipynb").write_text("{}\n")
    cookiecutter(
        str(TEMPLATE),
        no_input=True,
        output_dir=str(baked.output_dir),
        overwrite_if_exists=True,
        skip_if_file_exists=True,
        config_file=str(_cookiecutter_config_file),
    )
    assert env_values(project / ".env")["JUPYTER_TOKEN"] == token
    assert (project / "src/gpu_lab/model.py").read_text() == "MINE = 1\n"
    assert (project / "notebooks/gpu_check.ipynb").read_text() == "{}\n"


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0, reason="only root can hand files to another uid")
def test_root_hands_the_project_to_the_configured_user(bake):
    project = bake(uid=4321, gid=4322).project_path
    owners = {(path.lstat().st_uid, path.lstat().st_gid) for path in [project, *project.rglob("*")]}
    assert owners == {(4321, 4322)}


@pytest.mark.parametrize(
    ("manager", "cuda"), [*((manager, None) for manager in MANAGERS), ("uv", "12.6"), ("pip", "13.2")]
)
def test_generation_works_offline_from_a_relative_path(tmp_path, manager, cuda):
    """Generation needs no network: run it in a network namespace with no interfaces,
    from the template's folder as `cookiecutter .` (hooks must not rely on the cwd)."""
    if run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root)")
    cmd = ["unshare", "-n", sys.executable, "-m", "cookiecutter", "--no-input", ".", "-o", str(tmp_path)]
    cmd.append(f"dependency_manager={manager}")
    if cuda:  # a build from PyTorch's index: generated without its lock, offline all the same
        cmd.append(f"cuda_version={cuda}")
    env = {**os.environ, "HOME": str(tmp_path)}
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TEMPLATE, check=False)
    BENCHMARKS.append(f"offline generation ({manager}, CUDA {cuda or 'default'}): {time.monotonic() - start:.2f} s")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gpu_lab" / template_rules.MANAGER_FILES[manager][1]).is_file()


@pytest.mark.parametrize("manager", MANAGERS)
def test_the_environment_layers_come_before_any_uid(bake, manager):
    """Every step that installs the environment precedes the uid's ARG in the dev stage,
    so its cache keys hold no uid: a teammate's build reuses them all. The user is made in
    a stage of its own beside them, and the dev stage copies its files last. The layers
    are installed from the lock's parts in order: framework, common, then the project's own."""
    dockerfile = (bake(dependency_manager=manager).project_path / "Dockerfile").read_text()
    user_stage, dev = dockerfile.index("FROM compilers AS user"), dockerfile.index("FROM compilers AS dev")
    user = dockerfile.index("ARG USER_UID", dev)
    steps = [dockerfile.index(f"/tmp/layers/{part}.txt") for part in ("framework", "common")]
    last = dockerfile.index("uv sync" if manager == "uv" else "install-layer /tmp/layers/project.txt")
    assert user_stage < dev < steps[0] < steps[1] < last < user
    assert "USER_UID" not in dockerfile[:user_stage] + dockerfile[dev:user]
    assert 'RUN create-user "${USER_UID}" "${USER_GID}"' in dockerfile[user_stage:dev]
    # The uid reaches the dev stage's files only in the copies of the user's own folders.
    assert [line for line in dockerfile.splitlines() if "chown" in line] == [
        "COPY --from=user --chown=${USER_UID}:${USER_GID} /home/dev /home/dev",
        "COPY --from=user --chown=${USER_UID}:${USER_GID} /workspace /workspace",
    ]
    assert "\nUSER ${USER_UID}\n" in dockerfile
