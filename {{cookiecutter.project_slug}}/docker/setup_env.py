"""This clone's settings: writes .env when it is missing, completes it when the template
added keys, and writes compose.gpu.yaml from GPU_DEVICES and compose.mounts.yaml from
WRITABLE (what the container may change). Every `make` target that starts Docker runs
it first, and so does the dev container's initializeCommand, so a fresh clone needs no
hand-written .env.

    python3 docker/setup_env.py              # .env, compose.gpu.yaml, compose.mounts.yaml
    python3 docker/setup_env.py --preflight  # the same, then refuse what would fail in Docker:
                                             # an invalid GPU_DEVICES or WRITABLE, a port
                                             # someone else holds
    python3 docker/setup_env.py --compose    # only print the compose command for this clone's
                                             # engine (the Makefile's COMPOSE); writes nothing
    python3 docker/setup_env.py --get KEY    # only print one setting as Compose takes it (the
                                             # shell's, else .env's): the scripts' one reader
    python3 docker/setup_env.py --jupyter-url  # only print Jupyter's address, token encoded

A lab's shared settings (the base image, the CA bundle, the registry, GPU defaults) live
in the committed team.env: a fresh clone's .env is written with them, and a key that is
missing or empty in an older .env is taken from it; a value set in .env overrides it.

An existing value in .env is never changed, except CONTAINER_USER and USERNS_MODE, which
follow ENGINE_MODE (README "Docker without root"), and its mode, set back to 600 when others
may read it (it holds the Jupyter token). Each clone gets its own compose project and
image (COMPOSE_PROJECT_NAME, IMAGE_NAME: the project, the user and a hash of the
clone's folder), so teammates on one server never stop, replace or delete each other's
containers and images. Standard library only (Python 3.8+), like docker/doctor.py.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no locks between runs (and no bind-mount users to race)
    fcntl = None

PROJECT = Path(__file__).resolve().parent.parent
# The project's name, from the template; the clone's folder may be named otherwise.
SLUG = "{{ cookiecutter.project_slug }}"
ENV = PROJECT / ".env"
EXAMPLE = PROJECT / ".env.example"
GPU_FILE = PROJECT / "compose.gpu.yaml"
TEAM_ENV = PROJECT / "team.env"
# What team.env may set: what is the same for everyone in a lab. The other settings are
# each person's or each clone's (ids, token, names, port, engine), and refused there.
TEAM_KEYS = (
    "BASE_IMAGE",
    "CA_BUNDLE",
    "REGISTRY",
    "GPU_DEVICES",
    "GPU_COUNT",
    "CPUS",
    "MEMORY",
    "SHM_SIZE",
    "WRITABLE",
)
# Keys whose value a clone must have and a copied .env.example leaves empty.
FILLED = ("JUPYTER_TOKEN", "COMPOSE_PROJECT_NAME", "IMAGE_NAME")
GPU_COMPOSE_FILE = "compose.yaml:compose.gpu.yaml"
CPU_COMPOSE_FILE = "compose.yaml"
# How far past the configured Jupyter port a fresh clone looks for a free one.
PORT_SEARCH = 100
# A GPU as nvidia-smi and Docker name it: an index, a GPU or MIG UUID, or a MIG device
# as GPU:instance.
GPU_ID = re.compile(r"\d+|\d+:\d+|GPU-[0-9a-fA-F-]{8,}|MIG-[0-9a-fA-F-]{8,}|MIG-GPU-[0-9a-fA-F-]{8,}/\d+/\d+")


FAILED = subprocess.CompletedProcess([], 1, "", "")
# Ids every base image has: the Dockerfile would rename root or nobody to the project's user.
RESERVED_IDS = {0: "root", 65534: "nobody"}
MAX_ID = 4294967294  # 2**32 - 2: (uid_t)-1 means "no change" to chown
# Bytes of a file that are not UTF-8, as errors="surrogateescape" keeps them (valid
# UTF-8 never decodes to these code points).
NOT_UTF8 = re.compile("[\udc80-\udcff]+")


class EnvError(Exception):
    """A settings file that cannot be read, or not as Compose reads it: the problem (naming
    the file and line) and its fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


def run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """cmd's outcome, its output as text. Read as bytes: a GPU name in Latin-1 or a garbled
    answer becomes U+FFFD in the text, not a UnicodeDecodeError."""
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return subprocess.CompletedProcess(
        cmd, result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    )


# nvidia-smi answers in well under a second; a hung driver or GPU makes it wait for minutes.
NVIDIA_SMI_TIMEOUT = 5
NVIDIA_SMI_HUNG = (
    f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT} s: the NVIDIA driver or a GPU hangs "
    "(`nvidia-smi` alone shows it; `sudo dmesg | grep -i xid` names the GPU)"
)
NVIDIA_SMI_HUNG_FIX = "a GPU reset (`sudo nvidia-smi -r -i N`, no process on it) or a reboot"
smi_hung = False
smi_warns = True  # doctor reports a hang itself


def nvidia_smi(*args: str) -> subprocess.CompletedProcess | None:
    """nvidia-smi's answer, or None (no driver, or no answer). A hang is reported once and
    not waited on again by this process, so no command waits on a stuck GPU for long."""
    global smi_hung
    if smi_hung or not shutil.which("nvidia-smi"):
        return None
    try:
        process = subprocess.Popen(["nvidia-smi", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError:
        return None
    try:
        out, err = process.communicate(timeout=NVIDIA_SMI_TIMEOUT)
    except subprocess.TimeoutExpired:
        # Killed but not waited for: a process stuck inside the driver may not even die.
        process.kill()
        process.stdout.close()
        process.stderr.close()
        smi_hung = True
        if smi_warns:
            print(f"WARNING: {NVIDIA_SMI_HUNG}; going on without it. Fix: {NVIDIA_SMI_HUNG_FIX}", file=sys.stderr)
        return None
    return subprocess.CompletedProcess(process.args, process.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))  # fmt: skip


# Compose's reading of .env (compose-go's dotenv package), which every reader here
# follows: `export ` before a key is dropped; a value in single quotes is taken as written;
# in double quotes, \n, \t, \", \\ and \$ are escapes and ${VAR} is replaced; an unquoted
# value ends at " #" (a comment) and is trimmed, and ${VAR} is replaced too. After a
# closing quote, a "# comment" may follow. A key alone on its line takes the shell's value.
ENV_SPACE = "\t\v\f\r \x85\xa0"  # spaces that are not line breaks
ENV_KEY_CHARS = re.compile(r"[\w.\-\[\]]")
ENV_ESCAPE = re.compile(r'\\(?:[abcfnrtv$"\\]|0\d{0,3})')
ENV_ESCAPES = {"a": "\a", "b": "\b", "c": "\\c", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
VARIABLE_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
BRACED_VARIABLE = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[-+?])(.*))?", re.DOTALL)


def env_escape(match: re.Match) -> str:
    sequence = match.group()[1:]
    if sequence == "$":
        return "$$"  # a literal $, through interpolation below
    if sequence[0] == "0":  # \0 and three octal digits: that byte's character
        octal = sequence[1:]
        return chr(int(octal, 8)) if re.fullmatch("[0-7]{3}", octal) and int(octal, 8) < 256 else match.group()
    return ENV_ESCAPES.get(sequence, sequence)


def interpolate(text: str, lookup, where: str) -> str:
    """${VAR}, $VAR, ${VAR:-default}, ${VAR-default}, ${VAR:+other}, ${VAR+other},
    ${VAR:?error}, ${VAR?error} and $$ (a literal $), as Compose replaces them."""
    out, at = [], 0
    while True:
        dollar = text.find("$", at)
        if dollar < 0:
            return "".join(out) + text[at:]
        out.append(text[at:dollar])
        after = dollar + 1
        named = VARIABLE_NAME.match(text, after)
        if text.startswith("$", after):
            out.append("$")
            at = after + 1
        elif named:
            out.append(lookup(named.group()) or "")
            at = named.end()
        elif text.startswith("{", after):
            depth, close = 0, None
            for index in range(after, len(text)):
                depth += {"{": 1, "}": -1}.get(text[index], 0)
                if depth == 0:
                    close = index
                    break
            braced = BRACED_VARIABLE.fullmatch(text, after + 1, close) if close else None
            if not braced:
                raise EnvError(
                    f"{where}: {text[dollar : close + 1 if close else None]!r} is not a variable Compose can replace",
                    "write $$ for a literal $",
                )
            name, operator, argument = braced.groups()
            value = lookup(name)
            is_set = value is not None and (value != "" or ":" not in (operator or ""))
            if operator in (":-", "-"):
                out.append(value if is_set else interpolate(argument, lookup, where))
            elif operator in (":+", "+"):
                out.append(interpolate(argument, lookup, where) if is_set else "")
            elif operator in (":?", "?") and not is_set:
                raise EnvError(f"{where}: {name} is required ({argument or 'not set'})", f"set {name}")
            else:
                out.append(value or "")
            at = close + 1
        else:
            out.append("$")
            at = after


def env_entries(text: str, environ: dict[str, str] | None = None, name: str = ".env") -> list[tuple[int, str, str]]:
    """(line number, key, value) of each setting in the text of .env (or of the file
    `name`), in order, read as Compose reads it (above); environ (the shell's, by
    default) fills ${VAR} before earlier settings do. EnvError names the line Compose
    would refuse."""
    environ = os.environ if environ is None else environ
    entries: list[tuple[int, str, str]] = []
    values: dict[str, str] = {}

    def lookup(name: str) -> str | None:
        return environ[name] if name in environ else values.get(name)

    at = 1 if text.startswith("\ufeff") else 0  # a byte order mark, as Windows editors write
    while True:
        # The next statement: past blank space, line breaks and comment lines.
        while at < len(text) and (text[at].isspace() or text[at] == "#"):
            at = text.find("\n", at) if text[at] == "#" else at + 1
            if at < 0:
                return entries
        if at >= len(text):
            return entries
        number = text.count("\n", 0, at) + 1
        where = f"`{name}` line {number}"
        if re.match(r"export\s", text[at:]):
            at += len("export")
            while at < len(text) and text[at] in ENV_SPACE:
                at += 1
        start = at
        while at < len(text) and text[at] not in "=:\n":
            if text[at] not in ENV_SPACE and not ENV_KEY_CHARS.fullmatch(text[at]):
                line = text[start:].split("\n", 1)[0]
                raise EnvError(
                    f"{where}: {line!r} is not KEY=value (a key holds letters, digits and _ . -)",
                    "correct that line, or put # before it",
                )
            at += 1
        key = text[start:at].rstrip()
        if " " in key:
            raise EnvError(f"{where}: the key {key!r} holds a space", "remove the space")
        separator = text[at] if at < len(text) else "\n"
        at += 1
        if separator == "\n":  # a key alone: the shell's value, if it has one
            if key in environ:
                values[key] = environ[key]
                entries.append((number, key, environ[key]))
            continue
        while at < len(text) and text[at] in ENV_SPACE:
            at += 1
        quote = text[at] if at < len(text) and text[at] in "'\"" else ""
        if not quote:
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            value = interpolate(text[at:end].split(" #", 1)[0].rstrip(), lookup, where)
            at = end
        else:
            chars, escaped, index = [], False, at + 1
            while index < len(text):
                char = text[index]
                if char == quote and not escaped:
                    break
                if char == "\\" and not escaped:
                    escaped = True
                else:
                    chars.append("\\" + char if escaped and char != quote else char)
                    escaped = False
                index += 1
            else:
                raise EnvError(f"{where}: the value of {key} has no closing {quote}", f"add the closing {quote}")
            value = "".join(chars)
            if quote == '"':
                value = interpolate(ENV_ESCAPE.sub(env_escape, value), lookup, where)
            at = index + 1
        values[key] = value
        entries.append((number, key, value))


def parse_env(text: str, environ: dict[str, str] | None = None, name: str = ".env") -> dict[str, str]:
    """The settings in .env text as Compose reads them (the last one of a key wins)."""
    return {key: value for _, key, value in env_entries(text, environ, name)}


def env_line_numbers(text: str) -> dict[str, int]:
    """The line that sets each key (the last one, as parse_env and Compose take it)."""
    return {key: number for number, key, _ in env_entries(text)}


def decode_env(data: bytes) -> tuple[str, list[int]]:
    """A settings file's text, read as Path.read_text reads it (UTF-8, newlines made
    "\\n"), and the numbers of its lines that are not UTF-8, which hold U+FFFD in the text."""
    text = data.decode("utf-8", errors="surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
    not_utf8 = [number for number, line in enumerate(text.split("\n"), 1) if NOT_UTF8.search(line)]
    return NOT_UTF8.sub("\ufffd", text), not_utf8


def not_utf8_problem(name: str, numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"`{name}` line {numbers[0]} is not UTF-8"
    return f"`{name}` lines {', '.join(map(str, numbers))} are not UTF-8"


def not_utf8_fix(name: str) -> str:
    return f"save {name} as UTF-8 (retype those characters in your editor)"


def read_bytes(path: Path) -> bytes:
    """A settings file's bytes; EnvError with the fix when it cannot be read: a folder
    (Docker makes one where a bind mount names a missing file), another user's file."""
    name = path.name
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise EnvError(
            f"`{name}` is a folder, not a settings file", f"remove it (rm -r {name}), then run make up again"
        ) from None
    except PermissionError:
        owner = path.stat().st_uid if path.exists() else "?"
        raise EnvError(
            f"`{name}` cannot be read by you (it belongs to uid {owner})",
            f"sudo chown $(id -u):$(id -g) {name} && chmod 600 {name}",
        ) from None
    except OSError as error:
        raise EnvError(
            f"`{name}` cannot be read ({error.strerror})", f"remove it or restore it: ls -l {name}"
        ) from None


def read_text(path: Path) -> str:
    """A settings file's text; EnvError naming the lines that are not UTF-8 (rewriting
    the file would lose their bytes, and Compose may read them otherwise than this script)."""
    text, not_utf8 = decode_env(read_bytes(path))
    if not_utf8:
        raise EnvError(not_utf8_problem(path.name, not_utf8), not_utf8_fix(path.name))
    return text


def read_env() -> dict[str, str]:
    """.env's settings ({} when there is none); EnvError when it cannot be read."""
    return parse_env(read_text(ENV)) if os.path.lexists(ENV) else {}


def port_number(value: str) -> int | None:
    """A port as Compose takes it (ASCII digits, 1 to 65535), or None."""
    if not re.fullmatch(r"[0-9]+", value) or not 0 < int(value) < 65536:
        return None
    return int(value)


def id_problem(value: str) -> str | None:
    """Why a USER_UID/USER_GID value cannot be the container user's id, or None. Leading
    zeros are refused: some tools read 0501 as octal (321)."""
    if not re.fullmatch(r"[1-9][0-9]*|0", value) or int(value) > MAX_ID:
        return f"is not an id (a number from 1 to {MAX_ID}, no leading zeros)"
    if int(value) in RESERVED_IDS:
        return f"is {RESERVED_IDS[int(value)]}'s id in every base image; the container user must be an ordinary one"
    return None


# ---------------------------------------------------------------------------------------
# What a fresh clone gets
# ---------------------------------------------------------------------------------------


def clone_name(slug: str, user: str, folder: Path) -> str:
    """The compose project (and image) name of one clone: unique per user and folder,
    and valid for both (lowercase letters, digits, '_' and '-')."""
    user = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-") or "user"
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:6]
    return f"{slug}-{user}-{digest}"


def user_name(uid: str) -> str:
    """The host account of the container user's uid (the one running make, or the one
    root sets the project up for), or "" where it has no name."""
    try:
        import pwd
    except ImportError:  # Windows: no uid accounts
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return ""
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return ""


def host_ids(default_uid: str, default_gid: str) -> tuple[str, str]:
    """The user's ids; as root, the project folder's owner's (root sets projects up for
    others), and the template's defaults where even that is root."""
    if not hasattr(os, "getuid"):
        return default_uid, default_gid
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        owner = PROJECT.stat()
        uid, gid = owner.st_uid, owner.st_gid
    return (str(uid) if uid else default_uid), (str(gid) if gid else default_gid)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(wanted: int) -> int:
    """The wanted port, or the next free one after it (a teammate's Jupyter may hold it)."""
    for port in range(wanted, min(wanted + PORT_SEARCH, 65536)):
        if port_free(port):
            return port
    return wanted


def docker_info_text() -> str | None:
    """`docker info` as text (the same on every engine version), None where no engine
    answered. Local, but a wedged engine (or a remote DOCKER_HOST) must not stall a make
    target: ten seconds at most."""
    if not shutil.which("docker"):
        return None
    info = run(["docker", "info"], timeout=10)
    return info.stdout if info is not None and info.returncode == 0 else None


def nvidia_runtime(info: str | None) -> bool | None:
    """Whether Docker has the NVIDIA runtime (None: no engine answered)."""
    if info is None:
        return None
    runtimes = [line for line in info.splitlines() if line.strip().startswith("Runtimes:")]
    return any("nvidia" in line for line in runtimes)


# ---------------------------------------------------------------------------------------
# The engine, and how it maps the container's user to you
# ---------------------------------------------------------------------------------------

# ENGINE_MODE in .env: what each engine makes of the container's users, and so which
# user the container runs as to write your files (README "Docker without root").
ENGINE_MODES = {
    "docker": "rootful Docker: the container user has your uid/gid, so its files are yours",
    "rootless-docker": (
        "rootless Docker: the container runs as its root, which this engine maps to you (and gives no "
        "more rights than you have), so its files are yours"
    ),
    "podman": "rootless Podman: keep-id maps the container user's uid/gid to yours, so its files are yours",
}


def detect_engine(info: str | None) -> str | None:
    """The ENGINE_MODE of the engine `docker` reaches (`docker info` text), else of the
    user's Podman; None where none answered. A rootless engine lists "rootless" among
    its security options; Podman's Docker-compatible API names itself in `docker version`."""
    if info is not None:
        version = run(["docker", "version"], timeout=10)
        if version is not None and "Podman Engine" in version.stdout:
            return "podman"
        return "rootless-docker" if re.search(r"^\s*(name=)?rootless\s*$", info, re.MULTILINE) else "docker"
    if shutil.which("podman"):
        info = run(["podman", "info", "--format", "json"], timeout=10)
        try:
            rootless = (
                json.loads(info.stdout)["host"]["security"]["rootless"] if info and info.returncode == 0 else None
            )
        except (ValueError, KeyError, TypeError):
            rootless = None
        if rootless is not None:
            # Rootful Podman maps ids as rootful Docker does.
            return "podman" if rootless else "docker"
    return None


# Where CDI specs live (`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`).
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
CDI_GPU_KIND = "nvidia.com/gpu"


def cdi_gpu_devices() -> dict[str, list[str]]:
    """The NVIDIA GPU devices the CDI specs here name, by spec file: {path: [names]}.
    Specs are YAML (nvidia-ctk's) or JSON; read without a YAML library: a device's
    `name:` is the only key at the device list's own indentation."""
    found = {}
    for folder in CDI_SPEC_DIRS:
        for spec in sorted(Path(folder).glob("*")):
            if spec.suffix not in (".yaml", ".yml", ".json") or not spec.is_file():
                continue
            try:
                text = spec.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if spec.suffix == ".json":
                try:
                    data = json.loads(text)
                except ValueError:
                    continue
                kind = data.get("kind") if isinstance(data, dict) else None
                names = (
                    [str(device.get("name")) for device in data.get("devices") or []] if kind == CDI_GPU_KIND else []
                )
            else:
                kind = re.search(r"^kind:\s*[\"']?([^\"'\s]+)", text, re.MULTILINE)
                names = re.findall(r"^(?:- |  )name:\s*[\"']?([^\"'\n]+?)[\"']?\s*$", text, re.MULTILINE)
                names = names if kind and kind.group(1) == CDI_GPU_KIND else []
            if names:
                found[str(spec)] = names
    return found


def container_user(env: dict[str, str]) -> dict[str, str]:
    """CONTAINER_USER and USERNS_MODE (compose.yaml's `user` and `userns_mode`) as
    ENGINE_MODE implies them: on rootless Docker the container's root, the only container
    id that is you on the host; elsewhere none (the image's user, with your ids), and on
    Podman keep-id, which maps those ids to yours."""
    uid, gid = env.get("USER_UID", "1000"), env.get("USER_GID", "1000")
    mode = env.get("ENGINE_MODE", "docker")
    return {
        "CONTAINER_USER": "0:0" if mode == "rootless-docker" else "",
        "USERNS_MODE": f"keep-id:uid={uid},gid={gid}" if mode == "podman" else "",
    }


def engine_mode_problem(env: dict[str, str], detected: str | None) -> tuple[str, str] | None:
    """Why ENGINE_MODE in .env is wrong here, and the fix; None when it is right (or no
    engine answered to tell)."""
    mode = env.get("ENGINE_MODE", "docker")
    if mode not in ENGINE_MODES:
        return f"ENGINE_MODE={mode!r} in .env is not one of {', '.join(ENGINE_MODES)}", (
            f"set ENGINE_MODE={detected or 'docker'} in .env, then `make up`"
        )
    if detected is not None and detected != mode:
        engine = ENGINE_MODES[detected].split(":")[0]
        return (
            f"ENGINE_MODE={mode} in .env, but the engine here is {engine}: files the container writes would not be yours",
            f"set ENGINE_MODE={detected} in .env, then `make up`",
        )
    return None


# What `make` runs Compose with on each engine: Docker Compose through Podman's socket
# needs a registry to build (it starts a BuildKit container) and drops CDI devices
# (podman issue 28436); podman-compose builds with `podman build` and hands devices to
# `podman run --device`, which knows CDI names.
PODMAN_COMPOSE = "docker/podman-compose"
DOCKER_COMPOSE = "docker compose"


def compose_command() -> str:
    """The compose command for this clone: ENGINE_MODE from .env, or, before .env exists,
    the engine `docker` (or `podman`) answers for. Never fails: Docker Compose by default."""
    try:
        mode = read_env().get("ENGINE_MODE") if ENV.exists() else detect_engine(docker_info_text())
    except EnvError:
        mode = None
    return PODMAN_COMPOSE if mode == "podman" else DOCKER_COMPOSE


def podman_problem(env: dict[str, str]) -> tuple[str, str] | None:
    """On Podman, what `make up` needs beyond the engine: podman-compose."""
    if env.get("ENGINE_MODE") != "podman" or shutil.which("podman-compose"):
        return None
    fix = (
        "`sudo dnf install podman-compose` (RHEL family, from EPEL), elsewhere `pipx install podman-compose` "
        "(1.1 or later; pipx: `sudo apt-get install pipx`), then `make up`"
    )
    return "ENGINE_MODE=podman, and podman-compose is not installed: the project runs its services with it", fix


def sync_container_user(quiet: bool = False) -> None:
    """Rewrite CONTAINER_USER and USERNS_MODE in .env where they differ from what
    ENGINE_MODE and the ids imply (each make target; `docker compose` reads them)."""
    env = read_env()
    if env.get("ENGINE_MODE", "docker") not in ENGINE_MODES:
        return
    wanted = container_user(env)
    changed = {key: value for key, value in wanted.items() if env.get(key) != value}
    if not changed:
        return
    lines = []
    for line in read_text(ENV).splitlines():
        key = line.partition("=")[0].strip()
        is_setting = "=" in line and not line.lstrip().startswith("#")
        lines.append(f"{key}={wanted[key]}" if is_setting and key in changed else line)
    lines += [f"{key}={value}" for key, value in changed.items() if key not in env]
    write_private(ENV, "\n".join(lines) + "\n")
    if not quiet:
        shown = ", ".join(f"{key}={value or '(empty)'}" for key, value in changed.items())
        print(f".env: {shown}, as ENGINE_MODE={env.get('ENGINE_MODE', 'docker')} needs")


def has_driver() -> bool:
    return (nvidia_smi("-L") or FAILED).returncode == 0


def fresh_values(example: dict[str, str], overrides: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Values a new .env gets for the keys that depend on the machine, the user or the
    clone; and notes on the choices a reader would not guess."""
    notes = []
    uid, gid = host_ids(example.get("USER_UID", "1000"), example.get("USER_GID", "1000"))
    wanted = port_number(example.get("JUPYTER_HOST_PORT", "")) or 8888
    port = int(overrides["JUPYTER_HOST_PORT"]) if "JUPYTER_HOST_PORT" in overrides else free_port(wanted)
    if port != wanted:
        notes.append(f"port {wanted} is taken here, so Jupyter gets {port}")
    info = docker_info_text()
    mode = overrides.get("ENGINE_MODE") or detect_engine(info) or "docker"
    if mode != "docker":
        notes.append(ENGINE_MODES[mode])
    # Podman takes GPUs through CDI (compose.gpu.yaml then names CDI devices), not a runtime.
    runtime = (bool(cdi_gpu_devices()) or None) if mode == "podman" else nvidia_runtime(info)
    if runtime is None and mode == "podman":
        runtime = has_driver()
        notes.append(
            "Podman: no CDI spec names the GPUs yet, "
            + (
                "so the GPU file is used (an NVIDIA driver is here; `make doctor` names the step)"
                if runtime
                else "CPU settings"
            )
        )
    elif runtime is None:
        # No engine to ask (not started yet, or docker needs sudo here): the driver decides.
        runtime = has_driver()
        notes.append(
            "no Docker engine answered: "
            + ("an NVIDIA driver is here, so the GPU file is used" if runtime else "CPU settings")
            + f"; change COMPOSE_FILE in .env if that is wrong ({GPU_COMPOSE_FILE} or {CPU_COMPOSE_FILE})"
        )
    elif not runtime:
        notes.append("Docker has no NVIDIA runtime: the project runs on the CPU (COMPOSE_FILE=compose.yaml)")
    gpus = host_gpus() if runtime else None
    if gpus and len(gpus) > 1 and "GPU_DEVICES" not in overrides:
        # More than one GPU: a shared server, more often than not. Take free ones.
        overrides = {**overrides, "GPU_DEVICES": "auto"}
        notes.append(f"{len(gpus)} GPUs here: GPU_DEVICES=auto leases free ones at each `make up` (`make gpus`)")
    uid, gid = overrides.get("USER_UID", uid), overrides.get("USER_GID", gid)
    name = clone_name(SLUG, user_name(uid) or f"u{uid}", PROJECT)
    values = {
        "JUPYTER_TOKEN": secrets.token_urlsafe(32),
        "USER_UID": uid,
        "USER_GID": gid,
        "JUPYTER_HOST_PORT": str(port),
        "COMPOSE_FILE": GPU_COMPOSE_FILE if runtime else CPU_COMPOSE_FILE,
        "COMPOSE_PROJECT_NAME": name,
        "IMAGE_NAME": f"{name}:dev",
        "ENGINE_MODE": mode,
    }
    values.update(overrides)
    values.update(container_user(values))
    return values, notes


def give_to_project_owner(path: Path) -> None:
    """As root (`sudo make up`), a file written here goes to the project folder's owner,
    who must still be able to read and rewrite it."""
    if getattr(os, "geteuid", lambda: -1)() == 0:
        owner = PROJECT.stat()
        os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds the Jupyter token)."""
    write_replacing(path, text, 0o600)


def write_replacing(path: Path, text: str, mode: int) -> None:
    """Write a file through a new temporary one renamed over it: a link in its place is
    replaced, never written through, even by root. The temporary's name is new each
    time (O_EXCL), so runs at once never share one, and it is gone if writing fails."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        give_to_project_owner(Path(name))
        os.replace(name, path)
    except BaseException:
        os.unlink(name)
        raise


@contextlib.contextmanager
def settings_lock():
    """Runs at once (the dev container's initializeCommand beside `make up`) take turns
    writing .env and the GPU file, so a fresh clone gets one .env and one token: a lock
    on the project folder itself, so nothing is left behind."""
    if fcntl is None:
        yield
        return
    fd = os.open(PROJECT, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def protect_env() -> None:
    """.env holds the Jupyter token, the only barrier to Jupyter for every user of this
    host: a copy or a chmod that lets others read it is set back to 600, with a note."""
    if not ENV.is_file():
        return
    mode = stat.S_IMODE(ENV.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(ENV, 0o600)
    except OSError:
        raise EnvError(
            f"`.env` holds the Jupyter token and others may read it (mode {mode:o})", "chmod 600 .env, as its owner"
        ) from None
    print(f"note: .env was readable by others (mode {mode:o}) and holds the Jupyter token: set to 600", file=sys.stderr)


def read_team_env() -> dict[str, str]:
    """The lab's settings from team.env (committed), without the empty ones; {} without
    the file. EnvError for a key that is not the lab's to share."""
    if not os.path.lexists(TEAM_ENV):
        return {}
    values = parse_env(read_text(TEAM_ENV), name=TEAM_ENV.name)
    personal = [key for key in values if key not in TEAM_KEYS]
    if personal:
        raise EnvError(
            f"team.env sets {', '.join(personal)}: team.env is for what the whole lab shares "
            f"({', '.join(TEAM_KEYS)}), and these are each clone's own",
            f"move {', '.join(personal)} from team.env to your .env",
        )
    return {key: value for key, value in values.items() if value}


def take_team_settings(quiet: bool = False) -> list[str]:
    """Copy into .env the team.env values that .env lacks or leaves empty (a fresh clone:
    all of them); a value .env sets stays. Returns the keys taken."""
    team = read_team_env()
    current = read_env()
    taken = {key: value for key, value in team.items() if not current.get(key)}
    if not taken:
        return []
    lines = read_text(ENV).splitlines()
    # The line Compose takes for each key (the last one) gets the value in place.
    setting_lines = {line.partition("=")[0].strip(): number for number, line in enumerate(lines)
                     if "=" in line and not line.lstrip().startswith("#")}  # fmt: skip
    for key in taken.keys() & setting_lines.keys():
        lines[setting_lines[key]] = f"{key}={env_quote(key, taken[key])}"
    added = [key for key in taken if key not in setting_lines]
    if added:
        lines += ["# From team.env (the lab's settings; change a value here to override it for this clone):"]
        lines += [f"{key}={env_quote(key, taken[key])}" for key in added]
    write_private(ENV, "\n".join(lines) + "\n")
    if not quiet:
        print(f".env: took {', '.join(f'{key}={value}' for key, value in taken.items())} from team.env")
    return list(taken)


def env_quote(key: str, value: str) -> str:
    """team.env's value of key as a .env line holds it, read back the same by Compose and
    parse_env: bare when it is plain, else in single quotes (no escapes, no interpolation)."""
    if re.fullmatch(r"[\w@%+=:,./-]*", value):
        return value
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    raise EnvError(
        f"team.env: {key}={value!r} holds a single quote or a line break, which .env cannot take as it is",
        f"set {key} in team.env without them",
    )


def setting(env: dict[str, str], key: str) -> str:
    """A setting as Compose takes it: the shell's environment first, then .env."""
    return os.environ[key] if key in os.environ else env.get(key, "")


def jupyter_url(env: dict[str, str]) -> str:
    token = urllib.parse.quote(setting(env, "JUPYTER_TOKEN"), safe="")
    return f"http://127.0.0.1:{setting(env, 'JUPYTER_HOST_PORT')}/lab?token={token}"


def ssh_tunnel(env: dict[str, str]) -> str | None:
    """In an SSH session (a lab server), the command that brings this clone's Jupyter to
    the computer the user sits at: Jupyter listens on the server's 127.0.0.1 only. The
    server's address and port as this session reached them (SSH_CONNECTION)."""
    connection = os.environ.get("SSH_CONNECTION", "").split()
    if len(connection) != 4:
        return None
    port = setting(env, "JUPYTER_HOST_PORT")
    server, server_port = connection[2], connection[3]
    user = user_name(str(os.getuid())) or getpass.getuser()
    via = "" if server_port == "22" else f" -p {server_port}"
    return f"ssh -N -L {port}:127.0.0.1:{port}{via} {user}@{server}"


def ensure_env(overrides: dict[str, str] | None = None, quiet: bool = False) -> str:
    """Create .env from .env.example, or append the keys it lacks. Returns what happened:
    "created", "completed" or "kept"."""
    example_text = read_text(EXAMPLE)
    example = parse_env(example_text, name=EXAMPLE.name)
    if not os.path.lexists(ENV):
        values, notes = fresh_values(example, overrides or {})
        # The lab's values replace the template's defaults (GPU_DEVICES=all); the keys the
        # template does not set (BASE_IMAGE) take_team_settings adds after.
        team = {key: env_quote(key, value) for key, value in read_team_env().items() if key in example}
        values.update({key: value for key, value in team.items() if key not in (overrides or {})})
        lines = []
        for line in example_text.splitlines():
            key = line.partition("=")[0].strip()
            fresh = not line.lstrip().startswith("#") and "=" in line and key in values
            lines.append(f"{key}={values[key]}" if fresh else line)
        write_private(ENV, "\n".join(lines) + "\n")
        if not quiet:
            shown = ("COMPOSE_PROJECT_NAME", "IMAGE_NAME", "USER_UID", "USER_GID", "JUPYTER_HOST_PORT", "COMPOSE_FILE",
                     "ENGINE_MODE")  # fmt: skip
            print(".env written for this clone (edit it to change; it is never overwritten):")
            for key in shown:
                print(f"  {key}={values[key]}")
            print("  JUPYTER_TOKEN=(new; `make jupyter` prints the address with it)")
            for note in notes:
                print(f"  note: {note}")
        return "created"
    current = read_env()
    # `cp .env.example .env` leaves these empty: they are filled in place, like new keys.
    empty = [key for key in FILLED if key in current and not current[key]]
    missing = [key for key in example if key not in current]
    if empty:
        values, _ = fresh_values(example, overrides or {})
        lines = read_text(ENV).splitlines()
        lines = [f"{line.partition('=')[0]}={values[line.partition('=')[0].strip()]}"
                 if line.partition("=")[0].strip() in empty and "=" in line and not line.lstrip().startswith("#")
                 else line for line in lines]  # fmt: skip
        write_private(ENV, "\n".join(lines) + "\n")
        if not quiet:
            print(f".env: filled the empty {', '.join(empty)} for this clone")
        if not missing:
            return "completed"
    if not missing:
        return "kept"
    values, _ = fresh_values(example, overrides or {})
    notes = []
    if "COMPOSE_PROJECT_NAME" in missing and "IMAGE_NAME" in current:
        # A .env from before per-clone names: its containers run under the project's own
        # name. Keep it, so `make up` finds them instead of starting a second Jupyter.
        values["COMPOSE_PROJECT_NAME"] = SLUG
        notes.append(
            f"COMPOSE_PROJECT_NAME={SLUG} keeps this clone's running containers; for names of its own "
            "(a shared server): `make down`, then delete COMPOSE_PROJECT_NAME and IMAGE_NAME from .env"
        )
    # A key the lab sets comes from team.env, not from the template's default.
    team = {key: env_quote(key, value) for key, value in read_team_env().items()}
    added = {key: team.get(key, values.get(key, example[key])) for key in missing}
    text = read_text(ENV)
    text += ("" if text.endswith("\n") else "\n") + "# Added from .env.example (new in the template):\n"
    text += "".join(f"{key}={value}\n" for key, value in added.items())
    write_private(ENV, text)
    if not quiet:
        print(".env: added the settings a newer template introduced (your values are unchanged):")
        for key, value in added.items():
            print(f"  {key}={'(new token)' if key == 'JUPYTER_TOKEN' else value}")
        for note in notes:
            print(f"  note: {note}")
    return "completed"


# ---------------------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------------------


def parse_gpu_devices(value: str) -> list[str] | None:
    """GPU_DEVICES as a list of ids, [] for "all" and "auto" (leased at `make up`), None
    when it is not valid."""
    value = value.strip()
    if value.lower() in ("all", "auto"):
        return []
    ids = [part.strip() for part in value.split(",")]
    if not ids or any(not GPU_ID.fullmatch(part) for part in ids) or len(set(ids)) != len(ids):
        return None
    return ids


def host_gpus() -> list[dict] | None:
    """The host's GPUs and MIG devices (nvidia-smi -L), or None without a driver."""
    listing = nvidia_smi("-L")
    if listing is None or listing.returncode != 0:
        return None
    gpus: list[dict] = []
    for line in listing.stdout.splitlines():
        gpu = re.match(r"GPU (\d+): (.*?) \(UUID: (GPU-[^)]+)\)", line.strip())
        mig = re.match(r"MIG .*Device\s+(\d+): \(UUID: (MIG-[^)]+)\)", line.strip())
        if gpu:
            gpus.append({"index": gpu.group(1), "name": gpu.group(2), "uuid": gpu.group(3), "mig": []})
        elif mig and gpus:
            gpus[-1]["mig"].append({"index": f"{gpus[-1]['index']}:{mig.group(1)}", "uuid": mig.group(2)})
    return gpus


def unknown_gpu_ids(ids: list[str], gpus: list[dict]) -> list[str]:
    known = set()
    for gpu in gpus:
        known |= {gpu["index"], gpu["uuid"]}
        known |= {mig["index"] for mig in gpu["mig"]} | {mig["uuid"] for mig in gpu["mig"]}
    return [gpu_id for gpu_id in ids if gpu_id not in known]


def gpu_devices_problem(env: dict[str, str]) -> str | None:
    """Why GPU_DEVICES cannot work on this host, or None."""
    value = env.get("GPU_DEVICES", "all")
    ids = parse_gpu_devices(value)
    if ids is None:
        return (
            f"GPU_DEVICES={value!r} in .env is not `auto`, `all` or a comma-separated list of GPU indices, "
            "GPU UUIDs or MIG ids (as `nvidia-smi -L` shows them), e.g. GPU_DEVICES=0,1"
        )
    if gpu_count(env) is None:
        return f"GPU_COUNT={env.get('GPU_COUNT')!r} in .env is not a number of GPUs (1 or more), e.g. GPU_COUNT=2"
    gpus = host_gpus() if ids and GPU_FILE.name in env.get("COMPOSE_FILE", "") else None
    unknown = unknown_gpu_ids(ids, gpus) if gpus is not None else []
    if unknown:
        have = ", ".join(f"{gpu['index']} ({gpu['uuid']})" for gpu in gpus) or "none"
        return f"GPU_DEVICES in .env names {', '.join(unknown)}, which this host does not have (its GPUs: {have})"
    return None


# ---------------------------------------------------------------------------------------
# GPU leases: GPU_DEVICES=auto takes, at each `make up`, GPUs no one else holds
# ---------------------------------------------------------------------------------------

# Labels the lab container carries (compose.gpu.yaml): the GPUs it holds, and whose it
# is. Other clones' `make up` leave those GPUs alone; `make gpus` shows them.
LEASE_LABEL = "dev.gpu-template.gpus"
OWNER_LABEL = "dev.gpu-template.user"
# A GPU with more memory in use (MiB) is busy: someone runs on it outside this engine's
# containers (a script on the host, another engine), and `auto` leaves it alone.
BUSY_MIB = 1024


class LeaseError(Exception):
    """No lease: what `make up` would have taken, and why it cannot."""


def is_auto(env: dict[str, str]) -> bool:
    return env.get("GPU_DEVICES", "all").strip().lower() == "auto"


def gpu_count(env: dict[str, str]) -> int | None:
    """GPU_COUNT: how many GPUs `auto` leases (1 when unset); None when not a count."""
    value = env.get("GPU_COUNT", "").strip() or "1"
    return int(value) if value.isdigit() and int(value) >= 1 else None


def gpu_usage() -> list[dict]:
    """Each GPU with its memory use (MiB) and the processes on it (nvidia-smi queries)."""
    fields = "index,uuid,name,memory.used,memory.total"
    smi = nvidia_smi(f"--query-gpu={fields}", "--format=csv,noheader,nounits")
    apps = nvidia_smi("--query-compute-apps=gpu_uuid,pid,process_name,used_memory", "--format=csv,noheader,nounits")
    processes: dict[str, list[dict]] = {}
    for line in apps.stdout.splitlines() if apps is not None and apps.returncode == 0 else []:
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) == 4:
            processes.setdefault(cells[0], []).append({"pid": cells[1], "name": cells[2], "memory": cells[3]})
    gpus = []
    for line in smi.stdout.splitlines() if smi is not None and smi.returncode == 0 else []:
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) == 5 and cells[0].isdigit():
            index, uuid, name, used, total = cells
            gpus.append(
                {"index": index, "uuid": uuid, "name": name, "memory_used": used, "memory_total": total,
                 "processes": processes.get(uuid, [])}
            )  # fmt: skip
    return gpus


def gpu_holders() -> list[dict]:
    """Running containers on this engine that hold GPUs: their name, compose project and
    owner, and the GPU ids they hold (None: every GPU). A lease label says it; else the
    GPUs a container asked Docker for (another tool's, or a clone older than leases)."""
    holders = []
    for container in docker_containers():
        labels = (container.get("Config") or {}).get("Labels") or {}
        held: set[str] | None = set()
        if labels.get(LEASE_LABEL):
            lease = labels[LEASE_LABEL].strip()
            held = None if lease.lower() == "all" else {part.strip() for part in lease.split(",")}
        else:
            for request in (container.get("HostConfig") or {}).get("DeviceRequests") or []:
                if "gpu" in [cap for caps in request.get("Capabilities") or [] for cap in caps]:
                    ids = request.get("DeviceIDs") or []
                    held = {part for gpu_id in ids for part in gpu_id.split(",")} if ids else None
        if held is None or held:
            holders.append(
                {"name": container.get("Name", "").lstrip("/"), "project": compose_project(container),
                 "owner": labels.get(OWNER_LABEL, ""), "gpus": held}
            )  # fmt: skip
    return holders


def holds(holder: dict, gpu: dict) -> bool:
    return holder["gpus"] is None or gpu["index"] in holder["gpus"] or gpu["uuid"] in holder["gpus"]


def other_holders(holders: list[dict], own_project: str) -> list[dict]:
    """The holders that are not this clone's containers (all of them without a project)."""
    return [holder for holder in holders if not own_project or holder["project"] != own_project]


def memory_used(gpu: dict) -> int:
    """A GPU's memory in use, MiB (0 where nvidia-smi gave no number)."""
    return int(gpu["memory_used"]) if gpu["memory_used"].isdigit() else 0


def holder_text(holder: dict) -> str:
    who = holder["project"] or holder["name"]
    return f"{who} ({holder['owner']})" if holder["owner"] else who


def gpu_table(gpus: list[dict], holders: list[dict], own_project: str) -> list[str]:
    """`make gpus`: each GPU, its memory in use, and who holds it (compose project and
    user), this clone, or free."""
    lines = [f"  {'GPU':<4} {'memory used':<19} held by"]
    others = other_holders(holders, own_project)
    for gpu in gpus:
        held = [holder_text(holder) for holder in others if holds(holder, gpu)]
        mine = any(holds(holder, gpu) for holder in holders if holder not in others)
        state = ", ".join(held + (["this clone"] if mine else []))
        if not state:
            used = memory_used(gpu)
            state = f"busy: {used} MiB in use outside this engine's containers" if used > BUSY_MIB else "free"
        lines.append(f"  {gpu['index']:<4} {gpu['memory_used'] + ' / ' + gpu['memory_total'] + ' MiB':<19} {state}")
    return lines


def current_lease() -> list[str]:
    """The GPUs this clone's GPU file leased last (its lease label), [] without one (or
    with a file written for GPU_DEVICES=all)."""
    try:
        found = re.search(rf"^\s*{re.escape(LEASE_LABEL)}:\s*\"([^\"]*)\"", GPU_FILE.read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        return []
    lease = [part for part in found.group(1).split(",") if part] if found else []
    return [] if lease == ["all"] else lease


def lease_gpus(
    env: dict[str, str], strict: bool = True, gpus: list[dict] | None = None, holders: list[dict] | None = None
) -> list[dict]:
    """The GPUs GPU_DEVICES=auto takes: this clone's lease while no one else took it,
    then free ones (no other container holds them, little memory in use), least used
    first; GPU_COUNT of them. LeaseError when too few are free (strict), else the least
    used ones, for commands that start nothing. gpus and holders: gpu_usage() and
    gpu_holders(), where the caller has them already."""
    gpus = gpu_usage() if gpus is None else gpus
    count = gpu_count(env) or 1
    if not gpus:
        raise LeaseError("GPU_DEVICES=auto, and nvidia-smi lists no GPU here")
    own = env.get("COMPOSE_PROJECT_NAME", "")
    holders = gpu_holders() if holders is None else holders
    others = other_holders(holders, own)
    current = set(current_lease())
    taken = [gpu for gpu in gpus if any(holds(holder, gpu) for holder in others)]
    kept = [gpu for gpu in gpus if gpu not in taken and (gpu["uuid"] in current or gpu["index"] in current)]
    free = [gpu for gpu in gpus if gpu not in taken and gpu not in kept and memory_used(gpu) <= BUSY_MIB]
    chosen = (kept + sorted(free, key=lambda gpu: (memory_used(gpu), int(gpu["index"]))))[:count]
    if len(chosen) == count:
        return chosen
    if not strict:
        return sorted(gpus, key=lambda gpu: (memory_used(gpu), int(gpu["index"])))[:count]
    table = "\n".join(gpu_table(gpus, holders, own))
    raise LeaseError(
        f"GPU_DEVICES=auto: {len(chosen)} GPU(s) free here, and this clone asks for GPU_COUNT={count}:\n{table}\n"
        "Fix: wait for one (`make gpus` shows who holds which), lower GPU_COUNT in .env, or share a GPU on purpose "
        "with its holder: GPU_DEVICES=<index> in .env"
    )


GPU_FILE_HEADER = """# Written by docker/setup_env.py from GPU_DEVICES and ENGINE_MODE in .env (every `make`
# target that starts Docker rewrites it; edit .env, not this file). The GPUs, merged
# over compose.yaml when COMPOSE_FILE lists it.
"""
ULIMITS = """    # The limits NVIDIA sets for its own containers (--ulimit memlock=-1 --ulimit
    # stack=67108864): NCCL over InfiniBand pins memory for transfers, which the default
    # memlock limit (8 MB) stops, and the container, holding no capabilities, cannot
    # raise a limit itself.
    ulimits:
      memlock: -1
      stack: 67108864
"""
ROOTLESS_LIMITS = """    # No ulimits here: a rootless engine cannot raise a limit above your own, and the
    # container would not start. For NCCL over InfiniBand, raise your memlock limit on the
    # host (/etc/security/limits.conf: `you - memlock unlimited`), then log in again.
"""


def gpu_file_text(env: dict[str, str], lease: list[dict] | None = None) -> str:
    """The GPU file: the GPUs of GPU_DEVICES (or of the lease, for auto), and labels that
    name them and this clone's user for other clones' leases."""
    ids = parse_gpu_devices(env.get("GPU_DEVICES", "all")) or []
    mode = env.get("ENGINE_MODE", "docker")
    if lease:
        # Docker takes the stable UUIDs; CDI specs name devices by index (nvidia-ctk's default).
        ids = [gpu["index"] if mode == "podman" else gpu["uuid"] for gpu in lease]
    owner = user_name(env.get("USER_UID", "")) or f"uid {env.get('USER_UID', '?')}"
    labels = f"""    # What this container holds, for other clones' `make up` (GPU_DEVICES=auto) and `make gpus`.
    labels:
      {LEASE_LABEL}: "{",".join(gpu["uuid"] for gpu in lease) if lease else ",".join(ids) or "all"}"
      {OWNER_LABEL}: {json.dumps(owner)}
"""
    limits = ULIMITS if mode == "docker" else ROOTLESS_LIMITS
    if mode == "podman":
        devices = "".join(f"      - {CDI_GPU_KIND}={gpu_id}\n" for gpu_id in ids or ["all"])
        return f"""{GPU_FILE_HEADER}# Podman takes GPUs through CDI: each device below is one the host's spec names
# (`sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`; `nvidia-ctk cdi list`),
# with the device files, libraries and variables the spec adds. Without a spec, `up`
# fails with: unresolvable CDI devices {CDI_GPU_KIND}=...
services:
  lab:
{labels}    devices:
{devices}{limits}"""
    select = f"device_ids: {json.dumps(ids)}" if ids else "count: all"
    return f"""{GPU_FILE_HEADER}# Needs the NVIDIA driver and the NVIDIA Container Toolkit on the host; `docker compose
# up` otherwise fails with: could not select device driver "nvidia" with capabilities: [[gpu]]
services:
  lab:
{labels}    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              {select}
              capabilities: [gpu]
{limits}"""


def write_gpu_file(env: dict[str, str], lease: list[dict] | None = None) -> None:
    text = gpu_file_text(env, lease)
    # Compared as read_text would read it, but a hand-edited file that is not UTF-8 is
    # simply rewritten.
    if GPU_FILE.is_symlink() or not GPU_FILE.is_file() or decode_env(GPU_FILE.read_bytes())[0] != text:
        write_replacing(GPU_FILE, text, 0o644)


# ---------------------------------------------------------------------------------------
# What the container may change
# ---------------------------------------------------------------------------------------

MOUNTS_FILE = PROJECT / "compose.mounts.yaml"
# The folders the lab container may write when WRITABLE in .env is unset or empty: your
# code, notebooks, data, caches, train.py's checkpoints, and git's folder (commits from
# VS Code in the container). The rest of the project is read-only there.
DEFAULT_WRITABLE = "src notebooks data cache checkpoints .git"
# What the host executes (make, git, Compose, the dev container's host commands, Slurm
# and Kubernetes files): read-only in every container, inside a writable folder too, so
# that code run in a notebook cannot plant a command for the host's next `make` or commit.
HOST_EXECUTED = (
    "Makefile", "GNUmakefile", "makefile", ".env", "team.env", "compose.yaml", "compose.gpu.yaml",
    "compose.podman.yaml", MOUNTS_FILE.name, "docker", ".devcontainer", ".devcontainer.json", "deploy",
    ".vscode", ".envrc", ".pre-commit-config.yaml",
    ".git/hooks", ".git/config", ".git/modules", ".git/worktrees",
)  # fmt: skip
# A folder WRITABLE may name: a relative path of plain names (a mount's source and target).
FOLDER_PATH = re.compile(r"[\w.@+-]+(/[\w.@+-]+)*")


def inside(name: str, folder: str) -> bool:
    """Whether the project path name is folder or lies in it ("." holds everything)."""
    return folder == "." or name == folder or name.startswith(folder + "/")


def writable_folders(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """The folders WRITABLE names, as paths in the project ("." for all of it), and a
    sentence with its fix for each entry that cannot be one (refused at `make up`)."""
    folders, problems = [], []
    for entry in (env.get("WRITABLE") or DEFAULT_WRITABLE).replace(",", " ").split():
        name = os.path.normpath(entry)
        if entry.startswith("/") or not (name == "." or FOLDER_PATH.fullmatch(name)) or name.split("/")[0] == "..":
            problems.append(f"WRITABLE in .env: {entry!r} is not a folder in the project; name folders by their "
                            "path in it, e.g. WRITABLE=\"src notebooks data/raw\"")  # fmt: skip
        elif any(inside(name, executed) for executed in HOST_EXECUTED) or inside(name, ".git") and name != ".git":
            problems.append(f"WRITABLE in .env: {entry} is what the host executes (or git's own files), and stays "
                            "read-only in the container; change it on the host, and take it out of WRITABLE")  # fmt: skip
        elif (PROJECT / name).is_symlink() and not (PROJECT / name).is_dir():
            problems.append(f"WRITABLE in .env: {entry} is a link to {os.readlink(PROJECT / name)}, which is not a "
                            "folder here; make that folder, or take the link out of WRITABLE")  # fmt: skip
        elif os.path.lexists(PROJECT / name) and not (PROJECT / name).is_dir() and name != ".git":
            problems.append(f"WRITABLE in .env: {entry} is a file, and WRITABLE names folders (a file mounted on its "
                            "own would stop following edits on the host); edit it on the host, or WRITABLE=.")  # fmt: skip
        elif name not in folders:
            folders.append(name)
    for name in [name for name in folders if name != "." and (PROJECT / name).is_symlink()]:
        # A link is mounted as the folder it points to (a dataset on another disk), where
        # the container cannot have made it: in a folder it may not write.
        parent = os.path.dirname(name) or "."
        if any(inside(parent, folder) for folder in folders):
            problems.append(f"WRITABLE in .env: {name} is a link (to {os.readlink(PROJECT / name)}) inside a folder the "
                            "container may write, so code in it may have made it; replace it with a folder, or name "
                            "the link's place at the project's top level")  # fmt: skip
            folders.remove(name)
    return folders, problems


def create_writable_folders(folders: list[str]) -> list[Path]:
    """The writable folders that do not exist yet, created as you (as root: as the
    project's owner) before Docker would create them as root. Returns the ones created."""
    created = []
    for name in folders:
        if name in (".", ".git"):
            continue
        parts = Path(name).parts
        for path in [PROJECT.joinpath(*parts[: depth + 1]) for depth in range(len(parts))]:
            if not os.path.lexists(path):
                path.mkdir()
                give_to_project_owner(path)
                created.append(path)
    git = PROJECT / ".git"
    if ".git" in folders and git.is_dir() and not git.is_symlink():
        # Mounted read-only over the writable .git, so they must exist (as git init makes them).
        for path, make in ((git / "hooks", Path.mkdir), (git / "config", Path.touch)):
            if not os.path.lexists(path):
                make(path)
                give_to_project_owner(path)
    return created


def bind(name: str, read_only: bool = False) -> str:
    """One bind mount of the project path name, as a line of the mounts file."""
    source = "." if name == "." else f"./{name}"
    target = "/workspace" if name == "." else f"/workspace/{name}"
    fields = f"type: bind, source: {json.dumps(source)}, target: {json.dumps(target)}"
    return "      - {" + fields + (", read_only: true" if read_only else "") + "}\n"


def by_depth(names: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Mounts in the order they must be made: a folder before what is mounted inside it."""
    return sorted(names, key=lambda mount: 0 if mount[0] == "." else mount[0].count("/") + 1)


def mounts_text(folders: list[str]) -> str:
    """The mounts file. The lab service's project at /workspace: read-only but for the
    writable folders (.git only where it is a folder, not a linked worktree's .git file),
    and in them what the host executes, read-only again. The lock service's: writable (it
    writes the lock files) but for what the host executes and git's folder."""
    git_folder = (PROJECT / ".git").is_dir() and not (PROJECT / ".git").is_symlink()
    writable = [
        name for name in folders if name != "." and (PROJECT / name).is_dir() and (name != ".git" or git_folder)
    ]
    lab = [(".", "." not in folders)] + [(name, False) for name in writable]
    roots = [name for name, read_only in lab if not read_only]
    executed = [name for name in HOST_EXECUTED if (PROJECT / name).exists() or name == MOUNTS_FILE.name]
    lab += [(name, True) for name in executed if any(inside(name, root) for root in roots)]
    lock = [(".", False)] + [(name, True) for name in executed if not inside(name, ".git")]
    lock += [(".git", True)] if (PROJECT / ".git").exists() else []
    return f"""# Written by docker/setup_env.py from WRITABLE in .env (every `make` target that starts
# Docker rewrites it: edit .env, not this file). The project's mounts, which compose.yaml's
# services take by `extends`: the lab container may write the WRITABLE folders; what the
# host executes (Makefile, docker/, .devcontainer/, compose files, .env, git's hooks and
# config) stays read-only inside them, so code run in a notebook cannot plant a command
# for the host's next `make` or commit (README "What the container may change").
# WRITABLE={" ".join(folders)}
services:
  lab:
    volumes:
{"".join(bind(name, read_only) for name, read_only in by_depth(lab))}  lock:
    volumes:
{"".join(bind(name, read_only) for name, read_only in by_depth(lock))}"""


def git_problem() -> str | None:
    """A .git/commondir in the project's own git folder: git on the host would read its
    config and hooks from where it points. Git writes one only in a linked worktree's
    folder (.git/worktrees/NAME), never here: something else did, the container perhaps."""
    commondir = PROJECT / ".git" / "commondir"
    if (PROJECT / ".git").is_dir() and os.path.lexists(commondir):
        return (
            ".git/commondir exists: git on the host would take its config and hooks from where it points, and git "
            "never writes it in a project's own .git; look at it (cat .git/commondir), then remove it"
        )
    return None


def write_mounts_file(env: dict[str, str]) -> tuple[list[Path], list[str]]:
    """The mounts file from WRITABLE, after creating the writable folders that are missing.
    Returns the folders created, and what `make up` refuses (entries that cannot be
    writable folders, a planted .git/commondir)."""
    folders, problems = writable_folders(env)
    created = create_writable_folders(folders)
    text = mounts_text(folders)
    if MOUNTS_FILE.is_symlink() or not MOUNTS_FILE.is_file() or decode_env(MOUNTS_FILE.read_bytes())[0] != text:
        write_replacing(MOUNTS_FILE, text, 0o644)
    return created, problems + [problem for problem in [git_problem()] if problem]


# ---------------------------------------------------------------------------------------
# Who holds a port
# ---------------------------------------------------------------------------------------


def docker_containers() -> list[dict]:
    """`docker inspect` of every running container (JSON: the same on every engine), or
    `podman inspect` where only Podman is installed."""
    cli = shutil.which("docker") or shutil.which("podman")
    if not cli:
        return []
    ids = run([cli, "ps", "-q"])
    if ids is None or ids.returncode != 0 or not ids.stdout.split():
        return []
    inspected = run([cli, "inspect", *ids.stdout.split()])
    try:
        return json.loads(inspected.stdout) if inspected and inspected.returncode == 0 else []
    except json.JSONDecodeError:
        return []


def compose_project(container: dict) -> str:
    return ((container.get("Config") or {}).get("Labels") or {}).get("com.docker.compose.project", "")


def port_holder(port: int) -> tuple[str, str]:
    """Who listens on a host port: ("container", name + compose project) or ("process",
    name and pid), ("", "") when it cannot be told."""
    for container in docker_containers():
        bindings = (container.get("HostConfig") or {}).get("PortBindings") or {}
        for binds in bindings.values():
            if any(str(bind.get("HostPort")) == str(port) for bind in binds or []):
                name = container.get("Name", "").lstrip("/")
                project = compose_project(container)
                return "container", f"container {name}" + (f" (compose project {project})" if project else "")
    ss = run(["ss", "-ltnpH", f"sport = :{port}"]) if shutil.which("ss") else None
    if ss is not None and ss.returncode == 0:
        found = re.search(r'users:\(\("([^"]+)",pid=(\d+)', ss.stdout)
        if found:
            return "process", f"process {found.group(1)} (pid {found.group(2)})"
    return "", ""


def port_problem(env: dict[str, str]) -> str | None:
    """Why Jupyter's host port cannot be published, or None (free, or this clone's own)."""
    value = env.get("JUPYTER_HOST_PORT", "")
    port = port_number(value)
    if port is None:
        return f"JUPYTER_HOST_PORT={value!r} in .env is not a port (1 to 65535)"
    if port_free(port):
        return None
    kind, holder = port_holder(port)
    if kind == "container" and f"compose project {env.get('COMPOSE_PROJECT_NAME')})" in holder:
        return None  # this clone's Jupyter, already up
    return (
        f"port {port} on 127.0.0.1 is taken by {holder or 'another program'}; "
        "pick a free JUPYTER_HOST_PORT in .env, or stop it"
    )


def write_leased_gpu_file(env: dict[str, str], starting: bool) -> str | None:
    """The GPU file, with GPU_DEVICES=auto's lease where the GPU file is used: chosen
    again when a container is about to start (`make up`: the refusal is returned), kept
    as it is for the other commands (best effort where there is none yet)."""
    lease = None
    if is_auto(env) and GPU_FILE.name in env.get("COMPOSE_FILE", ""):
        if not starting and current_lease():
            return None
        try:
            lease = lease_gpus(env, strict=starting)
        except LeaseError as error:
            if starting:
                return str(error)
        if starting and lease and [gpu["uuid"] for gpu in lease] != current_lease():
            shown = ", ".join(f"{gpu['index']} ({gpu['uuid']})" for gpu in lease)
            print(f"GPU_DEVICES=auto: this clone takes GPU {shown}; `make gpus` shows who holds the others")
    write_gpu_file(env, lease)
    return None


def print_gpus() -> int:
    """`make gpus`: the host's GPUs, who holds each (compose project and user), which
    this clone leases, and which are free."""
    try:
        env = read_env() if ENV.exists() else {}
    except EnvError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    gpus = gpu_usage()
    if not gpus:
        print("No GPU here: nvidia-smi lists none (or does not answer).")
        return 1
    for line in gpu_table(gpus, gpu_holders(), env.get("COMPOSE_PROJECT_NAME", "")):
        print(line)
    lease = current_lease()
    if is_auto(env):
        leased = ", ".join(lease) or "none"
        print(f"This clone: GPU_DEVICES=auto, GPU_COUNT={gpu_count(env) or 1}; last leased: {leased}")
    else:
        print(f"This clone: GPU_DEVICES={env.get('GPU_DEVICES', 'all')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preflight", action="store_true", help="also refuse what would fail once Docker starts")
    parser.add_argument("--quiet", action="store_true", help="print nothing unless something is wrong")
    parser.add_argument("--compose", action="store_true", help="only print the compose command for this engine")
    parser.add_argument("--get", metavar="KEY", help="only print one setting, as Compose takes it (shell, then .env)")
    parser.add_argument("--jupyter-url", action="store_true", help="only print Jupyter's address with the token")
    parser.add_argument("--gpus", action="store_true", help="only print the GPUs, who holds each, and the free ones")
    args = parser.parse_args(argv)
    if args.compose:
        print(compose_command())
        return 0
    if args.gpus:
        return print_gpus()
    if args.get or args.jupyter_url:
        try:
            env = read_env()
        except EnvError as error:
            print(f"ERROR: {error}", file=sys.stderr)
            return 1
        print(setting(env, args.get) if args.get else jupyter_url(env))
        tunnel = ssh_tunnel(env) if args.jupyter_url else None
        if tunnel:
            print(f"This is an SSH session: on your own computer, run\n  {tunnel}\nthen open the address above there.")
        return 0
    try:
        with settings_lock():
            ensure_env(quiet=args.quiet)
            take_team_settings(quiet=args.quiet)
            sync_container_user(quiet=args.quiet)
            protect_env()
            env = {**read_env(), **{key: os.environ[key] for key in ("COMPOSE_FILE",) if key in os.environ}}
            problem = gpu_devices_problem(env)
            if problem is None:
                problem = write_leased_gpu_file(env, starting=args.preflight)
            _, mount_problems = write_mounts_file(env)
    except EnvError as error:
        # Nothing is written from a file this script cannot read; as with GPU_DEVICES
        # below, only starting is refused.
        print(f"{'ERROR' if args.preflight else 'WARNING'}: {error}", file=sys.stderr)
        return 1 if args.preflight else 0
    problems = [problem] if problem else []
    problems += mount_problems
    if problems and not args.preflight:
        # Stopping, removing or entering what runs must still work; only starting is refused.
        for found in problems:
            print(f"WARNING: {found}", file=sys.stderr)
        return 0
    if args.preflight:
        engine = engine_mode_problem(env, detect_engine(docker_info_text())) or podman_problem(env)
        problems += [found for found in (port_problem(env), engine and ": ".join(engine)) if found]
    for found in problems:
        print(f"ERROR: {found}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
