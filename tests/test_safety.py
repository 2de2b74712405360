"""Safe defaults that need no Docker engine: TLS checks never off, the notebook bound to
127.0.0.1 unless explicitly opted out, no capabilities, destructive make targets ask,
the daily make targets, and devcontainer.json held to a schema the template keeps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import json5
import pytest
from conftest import TEMPLATE, env_values, run, tool
from test_bake import compose_config

DEVCONTAINER_SCHEMA = TEMPLATE / "schemas" / "devcontainer.schema.json"
# Ways to switch certificate verification off, in every tool the image uses (spelled
# with character classes so that repository-wide greps for them do not flag this file).
TLS_OFF = re.compile(
    r"--trusted[-]host|--insecur[e]|\bcurl\b[^\n|]*\s-k\b|verify\s*=\s*False|ssl_verify\s*[:=]\s*(false|0)"
    r"|PYTHONHTTPSVERIFY\s*=\s*0|GIT_SSL_NO_VERIF[Y]|UV_INSECURE_HOST|--allow-insecure-host|sslVerify\s*=\s*false",
    re.IGNORECASE,
)


@pytest.fixture
def project(bake) -> Path:
    baked = bake()
    assert baked.exit_code == 0, baked.output
    return baked.project_path


def test_nothing_turns_tls_verification_off(bake):
    places = [TEMPLATE / "{{cookiecutter.project_slug}}", TEMPLATE / "hooks", TEMPLATE / "scripts"]
    places += [bake(dependency_manager=manager).project_path for manager in ("uv", "pip", "poetry")]
    for place in places:
        for path in place.rglob("*"):
            if "__pycache__" in path.parts:  # bytecode of the files read here
                continue
            if path.is_file() and path.suffix not in (".lock", ".txt"):  # locks: hashes, not settings
                found = TLS_OFF.search(path.read_text(encoding="utf-8"))
                assert not found, f"{path}: {found.group(0)!r}"


def test_jupyter_is_not_started_with_root_or_without_a_token(project):
    for name in ("Dockerfile", "compose.yaml", "docker/jupyter_server_config.py"):
        text = (project / name).read_text()
        assert "--allow-root" not in text
        assert not re.search(r"token\s*=\s*['\"]{2}|NotebookApp\.token|password\s*=\s*['\"]{2}", text), name
    # Root only where root is the user: a rootless engine (ENGINE_MODE, from compose.yaml).
    [line] = [
        line for line in (project / "docker/jupyter_server_config.py").read_text().splitlines() if "allow_root" in line
    ]
    assert line == 'c.ServerApp.allow_root = os.environ.get("ENGINE_MODE") == "rootless-docker"'


def test_container_holds_no_capabilities_and_gains_no_privileges(project):
    lab = compose_config(project, "compose.yaml")["services"]["lab"]
    assert lab["cap_drop"] == ["ALL"] and "cap_add" not in lab
    assert lab["security_opt"] == ["no-new-privileges:true"]
    assert "privileged" not in lab
    # The host user, as the engine found at generation maps it (tests/test_engine_mode.py: each engine).
    values = env_values(project / ".env")
    assert lab["user"] == {"docker": "dev", "rootless-docker": "0:0", "podman": "dev"}[values["ENGINE_MODE"]]


def test_publishing_beyond_loopback_is_an_explicit_opt_in_with_a_warning(project):
    assert compose_config(project, "compose.yaml")["services"]["lab"]["ports"][0]["host_ip"] == "127.0.0.1"
    env = project / ".env"
    env.write_text(env.read_text() + "JUPYTER_BIND_ADDRESS=0.0.0.0\n")
    assert compose_config(project, "compose.yaml")["services"]["lab"]["ports"][0]["host_ip"] == "0.0.0.0"
    # `make up`'s warning, read from this address as Compose resolves it: tests/test_messages.py.


def test_make_help_lists_the_daily_targets(project):
    result = run(["make", "help"], cwd=project)
    assert result.returncode == 0
    listed = set(re.findall(r"make (\S+)", result.stdout))
    assert {"up", "stop", "start", "down", "shell", "logs", "jupyter", "gpu-test", "lock", "clean-cache"} <= listed


def test_make_jupyter_prints_the_host_url_with_the_token(bake):
    project = bake(jupyter_host_port=28888).project_path
    token = env_values(project / ".env")["JUPYTER_TOKEN"]
    result = run(["make", "-s", "jupyter"], cwd=project)
    assert result.stdout.strip() == f"http://127.0.0.1:28888/lab?token={token}"


@pytest.mark.parametrize("answer", ["", "no\n", "y\n", "YES\n"])
def test_deleting_the_cache_asks_first_and_refuses_anything_but_yes(project, answer):
    (project / "cache" / "weights.bin").write_text("precious")
    result = run(["make", "clean-cache"], cwd=project, input=answer)
    assert result.returncode != 0 and "Nothing deleted." in result.stdout
    assert (project / "cache" / "weights.bin").read_text() == "precious"


def test_deleting_the_cache_after_yes_keeps_its_gitignore(project):
    (project / "cache" / "torch").mkdir()
    (project / "cache" / "torch" / "weights.bin").write_text("x")
    result = run(["make", "clean-cache"], cwd=project, input="yes\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (project / "cache").iterdir()] == [".gitignore"]


def test_devcontainer_json_follows_the_templates_schema(project):
    result = run(
        [tool("check-jsonschema"), "--schemafile", str(DEVCONTAINER_SCHEMA), "--force-filetype", "json5",
         str(project / ".devcontainer" / "devcontainer.json")]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda c: c.update(remoteUsr="dev"), "remoteUsr"),  # a typo: unknown key
        (lambda c: c.update(forwardPorts="8888"), "forwardPorts"),  # wrong type
        (lambda c: c.update(hostRequirements={"gpu": "maybe"}), "maybe"),
        (lambda c: c.pop("service"), "service"),
        (lambda c: c["customizations"]["vscode"].update(extensions=["not an id"]), "not an id"),
    ],
)
def test_devcontainer_schema_rejects_broken_files(project, tmp_path, edit, complaint):
    config = json5.loads((project / ".devcontainer" / "devcontainer.json").read_text())
    edit(config)
    broken = tmp_path / "devcontainer.json"
    broken.write_text(json.dumps(config))
    result = run([tool("check-jsonschema"), "--schemafile", str(DEVCONTAINER_SCHEMA), str(broken)])
    assert result.returncode == 1 and complaint in result.stdout + result.stderr
