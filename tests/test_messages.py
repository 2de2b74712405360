"""The messages a user acts on, checked as they are printed: `make up`'s warning about
where Jupyter is published (from the address Compose really uses), Jupyter's log
holding the host's address only, and a stale lock's "run `make lock`" before any line
of the resolver's (and no "--system-certs" hint from uv when `make lock` meets a
certificate it does not trust)."""

from __future__ import annotations

import http.server
import os
import runpy
import shlex
import shutil
import ssl
import sys
import threading
from pathlib import Path

import pytest
from conftest import TEMPLATE, fake_bin, run, template_rules
from cookiecutter.main import cookiecutter
from test_bake import INPUT_EDIT, lock_tools_env

HOST_PORT = 28871  # not one of the Docker tier's ports: `make up` checks it is free


def docker_compose() -> str:
    """The docker client, where `docker compose config` works (it needs no engine)."""
    docker = os.environ.get("DOCKER") or shutil.which("docker") or "/usr/bin/docker"
    if run([docker, "compose", "version"]).returncode != 0:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("docker compose is required (REQUIRE_DOCKER=1)")
        pytest.skip("docker compose is not installed")
    return docker


@pytest.fixture(scope="module")
def up_project(tmp_path_factory) -> tuple[Path, str, str]:
    """A generated project, its .env as written, and a COMPOSE for `make up` whose
    `config` is the real `docker compose config` and which starts nothing."""
    docker = docker_compose()
    out = tmp_path_factory.mktemp("up")
    project = Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, default_config=True, output_dir=str(out),
            extra_context={"jupyter_host_port": str(HOST_PORT)},
        )
    )  # fmt: skip
    compose = f'#!/bin/sh\nif [ "$1" = config ]; then exec {docker} compose "$@"; fi\necho "fake compose: $*"\n'
    folder = fake_bin(out, **{"fake-compose": compose})
    return project, (project / ".env").read_text(), f"{folder}/fake-compose"


def make_up(up_project, env_line: str | None, shell_value: str | None):
    project, env_text, compose = up_project
    (project / ".env").write_text(env_text + (f"{env_line}\n" if env_line is not None else ""))
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    for inherited in ("JUPYTER_BIND_ADDRESS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(inherited, None)
    if shell_value is not None:
        env["JUPYTER_BIND_ADDRESS"] = shell_value
    return run(["make", "up", f"COMPOSE={compose}"], cwd=project, env=env)


def published_warning(address: str, setting: str) -> str:
    return (
        f"WARNING: Jupyter is published on {address}:{HOST_PORT}, not only on 127.0.0.1: anyone who can reach\n"
        "that address and has the token can run code as you. To publish on 127.0.0.1 only, remove\n"
        f"JUPYTER_BIND_ADDRESS from {setting}.\n"
    )


@pytest.mark.parametrize(
    ("env_line", "shell_value", "published"),
    [
        pytest.param(None, None, None, id="unset"),
        pytest.param("JUPYTER_BIND_ADDRESS=0.0.0.0", None, "0.0.0.0", id="env-file"),
        pytest.param("export JUPYTER_BIND_ADDRESS=0.0.0.0", None, "0.0.0.0", id="env-file-export"),
        pytest.param("   JUPYTER_BIND_ADDRESS=0.0.0.0", None, "0.0.0.0", id="env-file-leading-spaces"),
        pytest.param('JUPYTER_BIND_ADDRESS="127.0.0.1"', None, None, id="env-file-quoted-loopback"),
        pytest.param("JUPYTER_BIND_ADDRESS=::1", None, None, id="env-file-ipv6-loopback"),
        pytest.param("JUPYTER_BIND_ADDRESS=::", None, "[::]", id="env-file-ipv6-any"),
        pytest.param(None, "0.0.0.0", "0.0.0.0", id="shell"),
        pytest.param("JUPYTER_BIND_ADDRESS=0.0.0.0", "127.0.0.1", None, id="shell-over-env-file"),
    ],
)
def test_make_up_warns_where_compose_publishes_beyond_loopback(up_project, env_line, shell_value, published):
    result = make_up(up_project, env_line, shell_value)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fake compose: up --build -d" in result.stdout  # and then it starts
    setting = ".env" if shell_value is None else "your shell's environment"
    if published:
        assert published_warning(published, setting) in result.stdout
        assert result.stdout.index("WARNING") < result.stdout.index("up --build -d")
    else:
        assert "WARNING" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env_line", "shell_value", "setting"),
    [
        pytest.param("JUPYTER_BIND_ADDRESS=localhost", None, ".env", id="env-file"),
        pytest.param(None, "localhost", "your shell's environment", id="shell"),
    ],
)
def test_make_up_stops_on_a_host_name_with_composes_error_and_the_setting(up_project, env_line, shell_value, setting):
    result = make_up(up_project, env_line, shell_value)
    assert result.returncode != 0
    assert "invalid IP address: localhost\n" in result.stderr  # Compose's own error
    assert (
        "JUPYTER_BIND_ADDRESS must be an IP address such as 127.0.0.1, not a host name: correct it in\n"
        f"{setting}, or remove it there to publish Jupyter on 127.0.0.1 only.\n"
    ) in result.stderr
    assert "fake compose: up" not in result.stdout


# What Compose prints when `up --wait` ends badly, and what `make up` adds: Jupyter's log
# for a container that exited or never turned healthy, nothing of it for a failed build.
UP_OUTCOMES = {
    "exited": ("container gpu_lab-x-lab-1 exited (1)", True),
    "unhealthy": ("dependency failed to start: container gpu_lab-x-lab-1 is unhealthy", True),
    "build-failed": (
        'ERROR: failed to solve: process "/bin/bash -c exit 1" did not complete successfully: exit code: 1\n#9 0.31 '
        + "sh: exited (1)",
        False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("outcome", list(UP_OUTCOMES))
def test_make_up_shows_jupyters_log_when_it_did_not_start(up_project, tmp_path, outcome):
    project, env_text, real = up_project
    printed, jupyter_failed = UP_OUTCOMES[outcome]
    compose = (
        f'#!/bin/sh\nif [ "$1" = config ]; then exec {real} "$@"; fi\n'
        'case "$1" in\n'
        f"  up) echo {shlex.quote(printed)}; exit 1 ;;\n"
        '  logs) echo "lab-1  | [C 12:00:01 ServerApp] Bad config encountered during initialization"; exit 0 ;;\n'
        "esac\n"
    )
    folder = fake_bin(tmp_path, **{"failing-compose": compose})
    (project / ".env").write_text(env_text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    for inherited in ("JUPYTER_BIND_ADDRESS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(inherited, None)
    result = run(["make", "up", f"COMPOSE={folder}/failing-compose"], cwd=project, env=env)
    assert result.returncode != 0
    if jupyter_failed:
        assert (
            "Jupyter did not start: the container's last log lines:\n"
            "lab-1  | [C 12:00:01 ServerApp] Bad config encountered during initialization\n"
        ) in result.stderr
        assert "Fix what the log names (often a setting in .env), then `make up`" in result.stderr
    else:
        assert "Jupyter did not start" not in result.stderr and "Bad config" not in result.stderr


# ---------------------------------------------------------------------------------------
# Jupyter's log: the address to open on the host, and no other
# ---------------------------------------------------------------------------------------


class FakeConfig:
    """Jupyter's `c`: c.ServerApp.ip = ... and the like, as plain attributes."""

    def __getattr__(self, section: str):
        value = type(section, (), {})()
        setattr(self, section, value)
        return value


@pytest.fixture(scope="module")
def jupyter_config_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jupyter")
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, default_config=True, output_dir=str(out)))
    return project / "docker" / "jupyter_server_config.py"


def load_jupyter_config(path: Path, monkeypatch, **env: str) -> FakeConfig:
    for key in ("JUPYTER_HOST_PORT", "JUPYTER_BIND_ADDRESS", "JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = FakeConfig()
    runpy.run_path(str(path), init_globals={"get_config": lambda: config})
    return config


@pytest.mark.parametrize(
    ("bind_address", "shown"),
    [
        (None, "http://127.0.0.1:28888/lab"),
        ("127.0.0.1", "http://127.0.0.1:28888/lab"),
        ("0.0.0.0", "http://127.0.0.1:28888/lab"),  # every interface: the host's loopback too
        ("::1", "http://[::1]:28888/lab"),
        ("[::1]", "http://[::1]:28888/lab"),
        ("::", "http://[::1]:28888/lab"),
        ("192.168.1.5", "http://192.168.1.5:28888/lab"),  # published there only
    ],
)
def test_jupyter_displays_the_address_to_open_on_the_host(jupyter_config_file, monkeypatch, bind_address, shown):
    env = {"JUPYTER_HOST_PORT": "28888", "JUPYTER_PORT": "8888", "JUPYTER_TOKEN": "t"}
    if bind_address is not None:
        env["JUPYTER_BIND_ADDRESS"] = bind_address
    config = load_jupyter_config(jupyter_config_file, monkeypatch, **env)
    assert config.ServerApp.custom_display_url == shown
    assert config.ServerApp.ip == "0.0.0.0"


def test_jupyter_takes_its_token_from_the_secret_file(jupyter_config_file, monkeypatch, tmp_path):
    secret = tmp_path / "jupyter_token"
    secret.write_text("s3cret-token\n")  # a trailing newline (an editor's) is not part of it
    config = load_jupyter_config(jupyter_config_file, monkeypatch, JUPYTER_TOKEN_FILE=str(secret))
    assert config.IdentityProvider.token == "s3cret-token"
    # A JUPYTER_TOKEN set by hand is left to Jupyter, which reads it first.
    config = load_jupyter_config(jupyter_config_file, monkeypatch, JUPYTER_TOKEN_FILE=str(secret), JUPYTER_TOKEN="t")
    assert not hasattr(config.IdentityProvider, "token")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "jupyter: cannot read the token file {path} (No such file or directory): is JUPYTER_TOKEN set in .env?"),
        (" \n", "jupyter: the token file {path} is empty: set JUPYTER_TOKEN in .env, then `make up`"),
    ],
)  # fmt: skip
def test_jupyter_refuses_to_start_without_a_token(jupyter_config_file, monkeypatch, tmp_path, content, message):
    """Jupyter would otherwise serve under a token it generated, which nobody has."""
    secret = tmp_path / "jupyter_token"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        load_jupyter_config(jupyter_config_file, monkeypatch, JUPYTER_TOKEN_FILE=str(secret))
    assert str(stopped.value) == message.format(path=secret)


# What jupyter_server 2.21.1 logs once started (ServerApp.start_app), with the
# container's port 8888 and the display URL set: running_server_info line by line, then,
# had it generated the token, its "To access the server" block as one message.
RUNNING_AT = """Serving notebooks from local directory: /workspace
Jupyter Server 2.21.1 is running at:
http://127.0.0.1:28888/lab?token=...
    http://127.0.0.1:8888/lab?token=..."""
ACCESS_BLOCK = (
    "\n\nTo access the server, open this file in a browser:\n"
    "    file:///home/dev/.local/share/jupyter/runtime/jpserver-7-open.html\n"
    "Or copy and paste one of these URLs:\n"
    "    http://3f9c0a1b2c4d:8888/lab?token=abc\n"
    "    http://127.0.0.1:8888/lab?token=abc\n"
    "The server is listening on all interfaces, so any hostname or IP of this machine will work."
)


# The config loaded as Jupyter loads it, its logging_config applied as traitlets applies
# it (merged into its own, then dictConfig), and those lines logged as jupyter_server
# logs them; in a process of its own, whose logging this may change.
LOG_AS_JUPYTER = """
import logging.config, runpy, sys
class Section: pass
class Config:
    def __getattr__(self, name):
        setattr(self, name, Section())
        return getattr(self, name)
c = Config()
runpy.run_path(sys.argv[1], init_globals={"get_config": lambda: c})
extra = c.ServerApp.logging_config
logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
    "filters": extra["filters"],
    "loggers": {"ServerApp": {"level": "DEBUG", "handlers": ["console"], **extra["loggers"]["ServerApp"]}},
})
log = logging.getLogger("ServerApp")
for line in sys.argv[2].split("\\n"):
    log.info(line)
log.critical(sys.argv[3])
log.info("Use Control-C to stop this server and shut down all kernels (twice to skip confirmation).")
"""


def test_jupyters_log_holds_the_host_address_only(jupyter_config_file):
    env = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER_")}
    env.update(JUPYTER_HOST_PORT="28888", JUPYTER_PORT="8888", JUPYTER_TOKEN="t")
    cmd = [sys.executable, "-c", LOG_AS_JUPYTER, str(jupyter_config_file), RUNNING_AT, ACCESS_BLOCK]
    result = run(cmd, env=env)
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    assert "Jupyter Server 2.21.1 is running at:\nhttp://127.0.0.1:28888/lab?token=...\nUse Control-C" in shown
    assert ":8888/" not in shown and "file://" not in shown and "To access the server" not in shown


def test_jupyter_warns_in_its_log_when_published_beyond_loopback(jupyter_config_file, monkeypatch, capsys):
    load_jupyter_config(jupyter_config_file, monkeypatch, JUPYTER_HOST_PORT="28888", JUPYTER_BIND_ADDRESS="0.0.0.0")
    assert capsys.readouterr().out == (
        "WARNING: Jupyter is published on 0.0.0.0, not only on 127.0.0.1: anyone who can reach that address and "
        "has the token can run code as you. JUPYTER_BIND_ADDRESS (in .env, or in the shell that ran `make up`) "
        "sets it: remove it to publish on 127.0.0.1 only.\n"
    )
    for loopback in ("127.0.0.1", "::1", "[::1]"):
        load_jupyter_config(jupyter_config_file, monkeypatch, JUPYTER_HOST_PORT="1", JUPYTER_BIND_ADDRESS=loopback)
        assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------
# docker/lock: our message first
# ---------------------------------------------------------------------------------------

# What resolvers print about a stale lock, which "run `make lock`" says better.
RESOLVER_LINES = (
    "unsatisfiable",
    "network was disabled",
    "No solution found",
    "needs to be updated",
    "changed significantly",
    "Using CPython",
    "poetry lock",
)


def stale_message(manager: str) -> str:
    name = INPUT_EDIT[manager][0]
    lock = template_rules.MANAGER_FILES[manager][1]
    return f"{lock} does not match {name}: run `make lock`, then build again."


@pytest.fixture
def manager_project(bake):
    def _project(manager: str) -> Path:
        baked = bake(dependency_manager=manager)
        assert baked.exit_code == 0, baked.output
        return baked.project_path

    return _project


@pytest.mark.parametrize("manager", ["uv", "pip", "poetry"])
def test_a_stale_lock_says_run_make_lock_alone(manager_project, manager):
    """As the image build checks it (--check-install): a stale lock gets our message, and
    not the resolver's account of it ("unsatisfiable", "network was disabled")."""
    project = manager_project(manager)
    name, old, new = INPUT_EDIT[manager]
    (project / name).write_text((project / name).read_text().replace(old, new))
    result = run(["sh", "docker/lock", "--check-install"], cwd=project, env=lock_tools_env())
    assert result.returncode == 1
    assert result.stderr == stale_message(manager) + "\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("manager", "checker"), [("uv", "uv lock --check --offline"), ("poetry", "poetry check --lock")]
)
def test_a_check_that_fails_otherwise_shows_its_own_lines_after_ours(manager_project, manager, checker):
    """A pyproject.toml the tool cannot read: our message, then a separator and the
    tool's own lines, indented, since they say what is wrong."""
    project = manager_project(manager)
    with (project / "pyproject.toml").open("a") as handle:
        handle.write("broken = [\n")
    result = run(["sh", "docker/lock", "--check"], cwd=project, env=lock_tools_env())
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[:2] == [stale_message(manager), f"---- {checker} said:"]
    assert lines[2:] and all(line.startswith("    ") for line in lines[2:] if line)
    assert "TOML" in result.stderr


@pytest.fixture
def untrusted_index(tmp_path):
    """An HTTPS index whose certificate no one trusts, as behind a TLS-intercepting proxy
    without CA_BUNDLE."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])  # fmt: skip
    assert made.returncode == 0, made.stderr
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_port}/simple"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("manager", ["uv", "pip"])
def test_make_lock_drops_uvs_system_certs_hint(manager_project, manager, untrusted_index, tmp_path):
    """uv's own error stays; its hint to use the system's certificates goes (they lack the
    proxy's CA too: CA_BUNDLE is the fix, and with-build-ca names it)."""
    project = manager_project(manager)
    lock = project / template_rules.MANAGER_FILES[manager][1]
    before = lock.read_text()
    unset = ("SSL_CERT_", "UV_INDEX", "UV_EXTRA_INDEX", "UV_DEFAULT_INDEX", "UV_FIND_LINKS")
    env = {key: value for key, value in lock_tools_env().items() if not key.startswith(unset)}
    env.update(UV_DEFAULT_INDEX=untrusted_index, UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_NO_CONFIG="1")
    result = run(["sh", "docker/lock"], cwd=project, env=env, timeout=120)
    assert result.returncode == 1
    assert "invalid peer certificate" in result.stderr  # uv's error, kept
    assert "--system-certs" not in result.stderr and "--native-tls" not in result.stderr
    assert "Locking failed" in result.stderr.strip().splitlines()[-1]
    assert lock.read_text() == before
