"""`make push` and the cluster image (issue #17): the Dockerfile's `cluster` stage, the
tag scheme (REGISTRY/NAME:COMMIT-uUID-gGID-BASE; the image holds the commit's code only:
other code is refused, -dirty in --ref) and docker/push's messages and signals with a
stand-in `docker` (fast); a real push to a local registry and a pull
back by digest, and the code stage built on the real engine (Docker tier)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import fake_bin, run, tool, unavailable

REGISTRY = "registry.example.com/team"
DIGEST = "sha256:" + "ab" * 32
# A `docker` that records its arguments and answers as the real one does: a push prints
# the digest line (or FAKE_PUSH_ERROR, then fails); `image inspect` exits FAKE_INSPECT_RC.
FAKE_DOCKER = f"""#!/bin/sh
echo "$*" >>"$FAKE_DOCKER_LOG"
case "$1" in
  push)
    if [ -n "${{FAKE_PUSH_ERROR-}}" ]; then echo "$FAKE_PUSH_ERROR" >&2; exit 1; fi
    echo "The push refers to repository [${{2%:*}}]"
    echo "5f70bf18a086: Pushed"
    echo "${{2##*:}}: digest: {DIGEST} size: 528" ;;
  image) [ "$2" = inspect ] && exit "${{FAKE_INSPECT_RC:-0}}" ;;
esac
exit 0
"""


def git_config(folder: Path) -> str:
    """A global git config of the test's own: an identity for commits, and every folder
    trusted (as root the tests read projects handed to the generating user, which git
    otherwise refuses as "dubious ownership")."""
    config = folder / "gitconfig"
    config.write_text("[user]\n\tname = Test\n\temail = test@example.com\n[safe]\n\tdirectory = *\n")
    return str(config)


def git(project: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": git_config(project.parent.parent)}
    result = run(["git", *args], cwd=project, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def committed(project: Path) -> str:
    """Make the project a git repository with one commit of everything; its commit."""
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "First commit")
    return git(project, "rev-parse", "HEAD")


def set_env(project: Path, **values: str) -> None:
    """Set keys in the project's .env (replacing their lines)."""
    lines = [line for line in (project / ".env").read_text().splitlines() if line.partition("=")[0] not in values]
    (project / ".env").write_text("\n".join([*lines, *(f"{key}={value}" for key, value in values.items())]) + "\n")


def env_file(project: Path) -> dict[str, str]:
    lines = (project / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def repository(project: Path) -> str:
    """The name the image is pushed under: the project's, the same from every clone."""
    return project.name


def tag_of(project: Path, commit: str, **env: str) -> str:
    """The tag a push of this commit gets: the commit, the container user's ids and a
    digest of the base image (from the environment given, else .env, else the Dockerfile)."""
    settings = {**env_file(project), **env}
    base = (
        settings.get("BASE_IMAGE")
        or re.search(r"^ARG BASE_IMAGE=(.+)$", (project / "Dockerfile").read_text(), re.MULTILINE)[1]
    )
    base_digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{commit[:12]}-u{settings['USER_UID']}-g{settings['USER_GID']}-{base_digest}"


def local_name(project: Path) -> str:
    """IMAGE_NAME without its tag: this clone's images (the cluster one is NAME:dev-cluster)."""
    return env_file(project)["IMAGE_NAME"].rsplit(":", 1)[0]


def user_env(tmp_path: Path, project: Path, **extra: str) -> dict:
    """A user's shell: the stand-in docker first on PATH, no git repository above the
    project, no make or Compose settings inherited from the test run."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_HOST"))}
    # DOCKER: the docker CLI docker/push falls back on (CI sets it for the Docker tier).
    for inherited in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "REGISTRY", "IMAGE_NAME", "PUSH_BUILD", "DOCKER"):
        env.pop(inherited, None)
    env.update(
        PATH=f"{fake_bin(tmp_path, docker=FAKE_DOCKER)}{os.pathsep}{os.environ['PATH']}",
        FAKE_DOCKER_LOG=str(tmp_path / "docker.log"),
        GIT_CEILING_DIRECTORIES=str(project.parent),
        GIT_CONFIG_GLOBAL=git_config(project.parent.parent),
        **extra,
    )
    return env


def make_push(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return run(["make", "push", *args], cwd=project, env=env, stdin=subprocess.DEVNULL)


def docker_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "docker.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def project(bake) -> Path:
    baked = bake()
    assert baked.exit_code == 0, baked.output
    return baked.project_path


# ---------------------------------------------------------------------------------------
# The cluster stage
# ---------------------------------------------------------------------------------------


def stages(dockerfile: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (the stage it starts from, its instructions), continuation lines joined."""
    found: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in dockerfile.replace("\\\n", " ").splitlines():
        line = line.strip()
        start = re.fullmatch(r"FROM (\S+) AS (\S+)", line)
        if start:
            current = start.group(2)
            found[current] = (start.group(1), [])
        elif current and line and not line.startswith("#"):
            found[current][1].append(line)
    return found


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern that
    matches it or a folder above it decides (`!` lets it in); `**` matches any folders."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def test_the_cluster_stage_adds_the_code_to_the_dev_image(project):
    dockerfile = (project / "Dockerfile").read_text()
    found = stages(dockerfile)
    assert list(found)[-1] == "cluster" and found["cluster"][0] == "dev"
    # The code, in one layer, from the code stage: src/ and the launcher, owned by root
    # (COPY's default: no --chown), readable by everyone and writable by no one else.
    base, code = found["code"]
    assert base == "${BASE_IMAGE}"
    assert "COPY src/ /code/src/" in code and "COPY docker/train /code/docker/train" in code
    assert "RUN chmod -R a+rX,go-w /code && chmod a+rx /code/docker/train" in code
    assert found["cluster"][1] == [
        "COPY --from=code /code/src /workspace/src",
        "COPY --from=code /code/docker /workspace/docker",
    ]
    assert not any("--chown" in line for line in found["cluster"][1] + code)
    # The stage's USER stays the dev stage's (the container user, not root).
    assert not any(line.startswith("USER") for line in found["cluster"][1])


def test_compose_builds_the_dev_stage_and_the_cluster_one_only_for_push(project):
    services = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    assert services["lab"]["build"]["target"] == "dev"
    assert "profiles" not in services["lab"]
    cluster = services["cluster"]
    assert cluster["profiles"] == ["cluster"] and cluster["build"]["target"] == "cluster"
    assert cluster["image"] == "${IMAGE_NAME}-cluster"
    assert cluster["build"]["args"] == services["lab"]["build"]["args"]
    assert cluster["build"]["secrets"] == services["lab"]["build"]["secrets"]


def test_the_build_context_holds_the_code_and_no_settings(project):
    patterns = [
        line.strip() for line in (project / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    for path in ("src/gpu_lab/__init__.py", "src/gpu_lab/models/net.py", "docker/train", "docker/lock", "uv.lock"):
        assert not dockerignored(patterns, path), path
    for path in (".env", "data/train.csv", "cache/torch/x", "notebooks/a.ipynb", ".git/HEAD",
                 "src/gpu_lab/__pycache__/net.cpython-312.pyc", "src/.ipynb_checkpoints/a.py", "Dockerfile"):  # fmt: skip
        assert dockerignored(patterns, path), path


def test_push_script_passes_shellcheck(project):
    result = run([tool("shellcheck"), "docker/push"], cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(project / "docker/push", os.X_OK)


# ---------------------------------------------------------------------------------------
# docker/push with a stand-in docker
# ---------------------------------------------------------------------------------------


def test_push_builds_tags_pushes_and_prints_the_digest(project, tmp_path):
    commit = committed(project)
    set_env(project, REGISTRY=f"{REGISTRY}/")  # a trailing slash is dropped
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode == 0, result.stdout + result.stderr
    name = repository(project)
    assert name == "gpu_lab" and local_name(project) != name
    ref = f"{REGISTRY}/{name}:{tag_of(project, commit)}"
    local = f"{local_name(project)}:dev-cluster"
    assert docker_calls(tmp_path) == [
        "compose --profile cluster build cluster",
        f"tag {local} {ref}",
        f"push {ref}",
        f"image rm {ref}",  # the machine keeps one cluster image per clone, not one per push
    ]
    lines = result.stdout.splitlines()
    assert lines[-2:] == [f"Pushed {ref}", f"Image: {REGISTRY}/{name}@{DIGEST}"]
    assert "WARNING" not in result.stderr
    # The same reference, without Docker, for the cluster files.
    assert run(["sh", "docker/push", "--ref"], cwd=project, env=user_env(tmp_path, project)).stdout == f"{ref}\n"


def test_uncommitted_code_is_refused_and_named_and_is_dirty_in_the_ref(project, tmp_path):
    commit = committed(project)
    set_env(project, REGISTRY=REGISTRY)
    (project / "src" / "gpu_lab" / "model.py").write_text("LAYERS = 3\n")
    (project / "uv.lock").write_text((project / "uv.lock").read_text() + "\n")
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0 and "Pushed" not in result.stdout
    assert "ERROR: `make push` builds the cluster image from the commit, and these files" in result.stderr
    assert "  ?? src/gpu_lab/model.py" in result.stderr and " M uv.lock" in result.stderr
    assert docker_calls(tmp_path) == []  # refused before anything is built
    ref = f"{REGISTRY}/{repository(project)}:{tag_of(project, commit)}-dirty"
    assert run(["sh", "docker/push", "--ref"], cwd=project, env=user_env(tmp_path, project)).stdout == f"{ref}\n"
    # Files the image does not hold are no change to it: a notebook, the cluster files.
    (project / "notebooks" / "scratch.ipynb").write_text("{}\n")
    (project / "deploy" / "k8s" / "values.env").write_text("NODES=4\n")
    # Ignored files outside the image (.env, the GPU file) and caches are none either.
    (project / "src" / "gpu_lab" / "__pycache__").mkdir()
    (project / "src" / "gpu_lab" / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"\0")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "Model")
    clean = make_push(project, user_env(tmp_path, project))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert (
        f"Pushed {REGISTRY}/{repository(project)}:{tag_of(project, git(project, 'rev-parse', 'HEAD'))}\n"
        in clean.stdout
    )


def test_git_ignored_files_the_image_would_hold_are_refused_and_named(project, tmp_path):
    """A secret the user keeps out of git but under src/, and a copied .env: Docker's
    context would take both into the cluster image."""
    (project / ".gitignore").write_text((project / ".gitignore").read_text() + "secret.json\n")
    committed(project)
    set_env(project, REGISTRY=REGISTRY)
    (project / "src" / "gpu_lab" / "secret.json").write_text('{"key": "hunter2"}\n')
    (project / "src" / ".env").write_text((project / ".env").read_text())
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0 and docker_calls(tmp_path) == []
    assert "  !! src/gpu_lab/secret.json" in result.stderr and "  !! src/.env" in result.stderr
    assert "out of src/ and docker/" in result.stderr
    assert run(["sh", "docker/push", "--ref"], cwd=project, env=user_env(tmp_path, project)).stdout.endswith("-dirty\n")


def test_teammates_pushing_one_commit_get_tags_of_their_own(project, tmp_path):
    """Another uid, gid or base image builds another image: it gets another tag, never the
    same one pushed over."""
    commit = committed(project)
    set_env(project, REGISTRY=REGISTRY)

    def ref(**env: str) -> str:
        return run(["sh", "docker/push", "--ref"], cwd=project, env=user_env(tmp_path, project, **env)).stdout.strip()

    mine = ref()
    others = {ref(USER_UID="4321"), ref(USER_GID="4321"), ref(BASE_IMAGE="mirror.example.com/nvidia/cuda:13.0.1-base")}
    assert len({mine, *others}) == 4
    assert all(tag.startswith(f"{REGISTRY}/{repository(project)}:{commit[:12]}-u") for tag in {mine, *others})
    assert ref(USER_UID="4321").endswith(tag_of(project, commit, USER_UID="4321"))


@pytest.mark.parametrize(("signal_number", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("step", ["build", "push"])
def test_a_signal_stops_the_build_or_the_push_at_once(project, tmp_path, step, signal_number, status):
    """SIGTERM (a job's cancel) or Ctrl-C during the build or the push: the script stops
    at once with 143 or 130, stops the step, and claims nothing."""
    committed(project)
    set_env(project, REGISTRY=REGISTRY)
    started = tmp_path / "started"
    slow = FAKE_DOCKER.replace(
        'echo "$*" >>"$FAKE_DOCKER_LOG"\n',
        f'echo "$*" >>"$FAKE_DOCKER_LOG"\ncase "$1" in {"compose" if step == "build" else "push"}) '
        f'echo $$ >"{started}"; exec sleep 60 ;; esac\n',
    )
    env = user_env(tmp_path, project)
    (tmp_path / "slow").mkdir()
    env["PATH"] = f"{fake_bin(tmp_path / 'slow', docker=slow)}{os.pathsep}{env['PATH']}"
    with subprocess.Popen(
        ["sh", "docker/push"], cwd=project, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as push:  # fmt: skip
        deadline = time.monotonic() + 30
        while not (started.exists() and started.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the stand-in never started"
        sent = time.monotonic()
        push.send_signal(signal_number)  # the script alone, as `kill PID` or a job's cancel sends it
        out, err = push.communicate(timeout=10)
        assert time.monotonic() - sent < 3
    assert push.returncode == status, out + err
    assert "stopped" in err and "Pushed" not in out and "digest" not in err
    stand_in = Path(f"/proc/{started.read_text().strip()}/stat")
    time.sleep(0.2)
    # The step was stopped too, not left running (gone, or a zombie waiting for init).
    assert not stand_in.exists() or stand_in.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_docker_compose_v1_pushes_with_the_docker_cli(project, tmp_path):
    """COMPOSE=docker-compose (v1, or the standalone v2 binary) has no docker CLI in it:
    the tag and the push go to docker."""
    committed(project)
    set_env(project, REGISTRY=REGISTRY)
    result = make_push(project, user_env(tmp_path, project), "COMPOSE=docker-compose", "PUSH_BUILD=0")
    assert result.returncode == 0, result.stdout + result.stderr
    ref = f"{REGISTRY}/{repository(project)}:"
    assert [call.split(ref)[0] for call in docker_calls(tmp_path)] == [
        f"image inspect {local_name(project)}:dev-cluster",
        f"tag {local_name(project)}:dev-cluster ",
        "push ",
        "image rm ",
    ]


def test_push_build_0_pushes_the_image_already_built(project, tmp_path):
    committed(project)
    set_env(project, REGISTRY=REGISTRY)
    result = make_push(project, user_env(tmp_path, project), "PUSH_BUILD=0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert docker_calls(tmp_path)[0] == f"image inspect {local_name(project)}:dev-cluster"
    assert not any(call.startswith("compose") for call in docker_calls(tmp_path))
    missing = make_push(project, user_env(tmp_path, project, PUSH_BUILD="0", FAKE_INSPECT_RC="1"))
    assert missing.returncode != 0
    assert f"ERROR: no image {local_name(project)}:dev-cluster to push (PUSH_BUILD=0" in missing.stderr


def test_no_registry_says_what_to_set(project, tmp_path):
    committed(project)
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0
    assert "set REGISTRY in .env, e.g. REGISTRY=registry.example.com/team" in result.stderr
    assert docker_calls(tmp_path) == []  # refused before anything is built


def test_an_env_without_the_new_key_gets_it_and_the_same_message(project, tmp_path):
    """A .env from before REGISTRY existed: `make push` adds the key, empty, and says to set it."""
    committed(project)
    (project / ".env").write_text(
        "".join(line + "\n" for line in (project / ".env").read_text().splitlines() if not line.startswith("REGISTRY"))
    )
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0
    assert "REGISTRY=" in result.stdout  # ".env: added the settings a newer template introduced"
    assert "set REGISTRY in .env, e.g. REGISTRY=registry.example.com/team" in result.stderr
    assert env_file(project)["REGISTRY"] == ""


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ("https://registry.example.com/team", "has a scheme; Docker takes the host and path alone"),
        ("registry.example.com/Team", "is not a registry address: a host, an optional :port and"),
        ("registry.example.com:port/team", "is not a registry address"),
    ],
)
def test_a_registry_that_is_no_address_is_refused(project, tmp_path, registry, message):
    committed(project)
    set_env(project, REGISTRY=registry)
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0
    assert f"ERROR: REGISTRY={registry} in .env {message}" in result.stderr
    assert "e.g. REGISTRY=registry.example.com/team" in result.stderr
    assert docker_calls(tmp_path) == []


def test_outside_a_git_repository_it_says_so(project, tmp_path):
    set_env(project, REGISTRY=REGISTRY)
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0
    assert f"ERROR: {project} is not in a git repository: `make push` tags the image" in result.stderr
    assert "git init && git add -A && git commit" in result.stderr
    assert docker_calls(tmp_path) == []


def test_a_repository_without_a_commit_says_so(project, tmp_path):
    git(project, "init", "-q")
    set_env(project, REGISTRY=REGISTRY)
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode != 0
    assert "ERROR: this git repository has no commit yet" in result.stderr
    assert docker_calls(tmp_path) == []


# What Docker 20.10 prints when a registry is unreachable, refuses the credentials, or
# presents a certificate this machine does not trust.
REFUSALS = {
    "unreachable": 'Get "https://registry.example.com/v2/": dial tcp: lookup registry.example.com: no such host',
    "unauthorized": "unauthorized: authentication required",
    "tls": 'Get "https://registry.example.com/v2/": x509: certificate signed by unknown authority',
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_a_refusing_registry_gets_dockers_error_and_the_login_hint(project, tmp_path, refusal):
    committed(project)
    set_env(project, REGISTRY=REGISTRY)
    result = make_push(project, user_env(tmp_path, project, FAKE_PUSH_ERROR=REFUSALS[refusal]))
    assert result.returncode != 0
    assert REFUSALS[refusal] in result.stdout  # Docker's own message, as it came
    hint = (
        f"ERROR: the push to REGISTRY={REGISTRY} (.env) failed (above): check that address, "
        "and log in: docker login registry.example.com"
    )
    assert hint in result.stderr.splitlines()
    assert "Pushed" not in result.stdout
    # No tag for the registry is left behind.
    assert docker_calls(tmp_path)[-1].startswith("image rm registry.example.com/")


# ---------------------------------------------------------------------------------------
# Docker tier: a real registry (Debian's docker-registry, installed by .ci/run)
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def registry(docker_env, tmp_path):
    """A registry on 127.0.0.1 (plain HTTP: Docker trusts 127.0.0.0/8 without TLS), its
    storage in tmp; its address as host:port."""
    binary = os.environ.get("DOCKER_REGISTRY", "/usr/bin/docker-registry")
    if not os.access(binary, os.X_OK):
        unavailable(f"{binary} is missing: apt-get install docker-registry (.ci/run does)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp_path / "registry.log").open("w")
    server = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the registry did not start:\n{(tmp_path / 'registry.log').read_text()}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def engine_env(docker_env, project: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_HOST"))}
    for inherited in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "REGISTRY", "IMAGE_NAME", "PUSH_BUILD"):
        env.pop(inherited, None)
    env.update(
        COMPOSE_FILE="compose.yaml",
        DOCKER_BUILDKIT="1",
        GIT_CEILING_DIRECTORIES=str(project.parent),
        GIT_CONFIG_GLOBAL=git_config(project.parent.parent),
    )
    return env


@pytest.mark.docker
def test_push_to_a_local_registry_and_pull_back_by_digest(docker_env, registry, project):
    """make push of a small image (the cluster stage itself needs the framework: the code
    stage is built below), then the image pulled back by the printed digest alone."""
    cli = docker_env.cli
    # The lab's registry from the committed team.env: a fresh clone's push, nothing typed.
    with (project / "team.env").open("a") as team:
        team.write(f"REGISTRY={registry}/team\n")
    (project / ".env").unlink()
    commit = committed(project)
    assert (
        run([sys.executable, "docker/setup_env.py"], cwd=project, env=engine_env(docker_env, project)).returncode == 0
    )
    name = repository(project)
    local = f"{local_name(project)}:dev-cluster"
    marker = uuid.uuid4().hex
    build = run(
        [cli, "build", "-q", "-t", local, "-"],  # a Dockerfile on stdin, no context
        input=f"FROM {docker_env.base_image}\nRUN echo {marker} > /pushed\n",
        env=engine_env(docker_env, project),
    )
    assert build.returncode == 0, build.stderr
    pulled = None
    try:
        result = run(
            ["make", "push", "PUSH_BUILD=0", f"COMPOSE={cli} compose"],
            cwd=project, env=engine_env(docker_env, project), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        ref = f"{registry}/team/{name}:{tag_of(project, commit)}"
        assert f"Pushed {ref}" in result.stdout
        [image] = re.findall(rf"^Image: ({re.escape(registry)}/team/{re.escape(name)}@sha256:[0-9a-f]{{64}})$",
                             result.stdout, re.MULTILINE)  # fmt: skip
        assert run([cli, "image", "inspect", ref]).returncode != 0  # the registry's tag was not kept here
        assert run([cli, "image", "rm", local]).returncode == 0  # nothing of it left locally
        pull = run([cli, "pull", image])
        assert pull.returncode == 0, pull.stdout + pull.stderr
        pulled = image
        check = run([cli, "run", "--rm", image, "cat", "/pushed"])
        assert check.stdout == f"{marker}\n", check.stderr
    finally:
        run([cli, "image", "rm", "-f", local, *([pulled] if pulled else [])])


@pytest.mark.docker
def test_a_registry_that_does_not_answer_gets_the_login_hint(docker_env, project):
    cli = docker_env.cli
    committed(project)
    registry = f"127.0.0.1:{free_port()}"  # nothing listens there
    set_env(project, REGISTRY=registry)
    local = f"{local_name(project)}:dev-cluster"
    assert run([cli, "tag", docker_env.base_image, local]).returncode == 0
    try:
        result = run(
            ["make", "push", "PUSH_BUILD=0", f"COMPOSE={cli} compose"],
            cwd=project, env=engine_env(docker_env, project), stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        assert result.returncode != 0
        assert "connection refused" in result.stdout
        assert f"ERROR: the push to REGISTRY={registry} (.env) failed" in result.stderr
        assert f"and log in: docker login {registry}" in result.stderr
        listed = run([cli, "image", "ls", "--format", "{{.Repository}}"]).stdout.split()
        assert not [name for name in listed if name.startswith(registry)]  # no tag left for it
    finally:
        run([cli, "image", "rm", local])


@pytest.mark.docker
def test_the_code_stage_holds_src_and_the_launcher_for_every_user(docker_env, project):
    """The code stage on the real engine with the base image (seconds): the build context
    lets src/ and docker/train in, and files a umask 077 checkout left private come out
    readable by all and writable by root alone."""
    cli = docker_env.cli
    train = project / "docker" / "train"
    if not train.exists():  # the launcher (docker/train) is another change's; a stand-in here
        train.write_text('#!/bin/sh\nexec python -m gpu_lab.train "$@"\n')
    train.chmod(0o600)  # as a checkout that lost the execute bit
    module = project / "src" / "gpu_lab" / "private.py"
    module.write_text("SECRET = 1\n")
    module.chmod(0o600)
    (project / "src" / "gpu_lab" / "__pycache__").mkdir(exist_ok=True)
    (project / "src" / "gpu_lab" / "__pycache__" / "x.pyc").write_bytes(b"")
    tag = f"push-test-code:{uuid.uuid4().hex[:12]}"
    build = run(
        [cli, "build", "-q", "--target", "code", "--build-arg", f"BASE_IMAGE={docker_env.base_image}", "-t", tag, "."],
        cwd=project, env=engine_env(docker_env, project),
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    try:
        listing = run([cli, "run", "--rm", tag, "sh", "-c", "cd /code && find . -exec stat -c '%U %a %n' {} +"])
        assert listing.returncode == 0, listing.stderr
        modes = {line.split()[2]: line.split()[:2] for line in listing.stdout.splitlines()}
        assert modes["./docker/train"] == ["root", "755"]
        assert modes["./src/gpu_lab/private.py"] == ["root", "644"]
        assert modes["./src/gpu_lab"] == ["root", "755"]
        assert "./src/gpu_lab/__pycache__" not in modes
        assert set(modes) >= {"./src/gpu_lab/__init__.py", "./docker/train"}
    finally:
        run([cli, "image", "rm", tag])
