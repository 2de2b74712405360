"""The Docker Engine's own API, for figures the CLI prints only rounded: the bytes of an
image that no other image shares; what a build's plain progress output says of one
step; a rootless Docker engine started for an ordinary user, and rootless Podman for
another. Used by the Docker tier and benchmarks/docker_build.py."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class EngineConnection(http.client.HTTPConnection):
    """HTTP over the Engine's Unix socket (DOCKER_HOST=unix://..., or the default)."""

    def __init__(self) -> None:
        super().__init__("localhost", timeout=300)
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        self.socket_path = host.removeprefix("unix://")

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


def get(path: str):
    connection = EngineConnection()
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return json.loads(body)
    finally:
        connection.close()


def unique_bytes(image: str) -> int:
    """Bytes of the layers only this image holds: its size less what it shares with other
    images (/system/df). Removing the image frees this much."""
    image_id = get(f"/images/{image}/json")["Id"]
    for entry in get("/system/df")["Images"]:
        if entry["Id"] == image_id:
            return entry["Size"] - entry["SharedSize"]
    raise RuntimeError(f"{image} is not in /system/df")


def layers(image: str) -> list[str]:
    """The image's layers (diff ids), lowest first."""
    return get(f"/images/{image}/json")["RootFS"]["Layers"]


def build_steps(output: str, source: str) -> tuple[bool, bool]:
    """Of `docker compose --progress plain build` output: whether the step that installs
    `source` (a layer file) ran, and whether BuildKit took it from its cache."""
    [step] = set(re.findall(rf"^(#\d+) \[[^\]]*\] RUN .*{re.escape(source)}", output, re.MULTILINE))
    return bool(re.search(rf"^{step} DONE", output, re.MULTILINE)), f"\n{step} CACHED" in output


# ---------------------------------------------------------------------------------------
# A rootless Docker engine for an ordinary user (the rootless tier, the benchmark)
# ---------------------------------------------------------------------------------------

ROOTLESS_SCRIPT = ("dockerd-rootless.sh", "/usr/share/docker.io/contrib/dockerd-rootless.sh")


def rootless_script() -> str | None:
    """Docker's dockerd-rootless.sh: on PATH, or where Debian's docker.io ships it."""

    for candidate in ROOTLESS_SCRIPT:
        found = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    return None


def rootless_missing() -> str | None:
    """What this host lacks to run a rootless engine for another user, or None."""

    if os.geteuid() != 0:
        return "creating the engine's user and its id ranges needs root"
    missing = [tool for tool in ("rootlesskit", "newuidmap", "slirp4netns") if not shutil.which(tool)]
    if missing or not rootless_script():
        return f"{', '.join(missing) or 'dockerd-rootless.sh'} missing: apt-get install rootlesskit uidmap slirp4netns"
    if not os.path.exists("/dev/net/tun") or os.stat("/dev/net/tun").st_mode & 0o006 != 0o006:
        return "/dev/net/tun is not open to every user (udev makes it 0666): slirp4netns needs it"
    return None


class RootlessEngine:
    """dockerd-rootless.sh run by `user` (created with `uid` and a subordinate id range
    where missing), its socket in the user's own runtime folder, the base image loaded
    from the rootful engine `cli`. stop() removes everything it stored."""

    def __init__(self, user: str, uid: int, subordinate: str, cli: str, base_image: str) -> None:
        self.uid = uid
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--uid", str(uid), "--user-group", "--shell", "/bin/bash", user],
                           check=True, capture_output=True)  # fmt: skip
        for path in ("/etc/subuid", "/etc/subgid"):
            lines = Path(path).read_text().splitlines() if os.path.exists(path) else []
            if not any(line.startswith(f"{user}:") for line in lines):
                with open(path, "a") as ranges:
                    ranges.write(f"{user}:{subordinate}\n")
        self.home = Path(pwd.getpwnam(user).pw_dir)
        # XDG_RUNTIME_DIR, as a login would give it (no systemd here): the user's alone.
        self.runtime_dir = self.home / ".run"
        subprocess.run(["rm", "-rf", str(self.runtime_dir)], check=True)
        self.runtime_dir.mkdir(mode=0o700)
        os.chown(self.runtime_dir, uid, uid)
        script = rootless_script()
        self.env = {
            "HOME": str(self.home),
            "USER": user,
            "LOGNAME": user,
            "PATH": f"{Path(script).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DOCKER_HOST": f"unix://{self.runtime_dir}/docker.sock",
            "LANG": "C.UTF-8",
        }
        self.log = open(self.runtime_dir / "dockerd.log", "w")  # noqa: SIM115 - closed by stop()
        self.daemon = subprocess.Popen([script], env=self.env, cwd=self.home, user=uid, group=uid, extra_groups=[],
                                       stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        for _ in range(60):
            if self.run(["docker", "info"]).returncode == 0 or self.daemon.poll() is not None:
                break
            time.sleep(1)
        info = self.run(["docker", "info", "--format", "{{json .SecurityOptions}}"])
        if info.returncode != 0 or "rootless" not in info.stdout:
            self.stop()
            raise RuntimeError(
                f"the rootless engine did not start:\n{(self.runtime_dir / 'dockerd.log').read_text()[-3000:]}"
            )
        # The stand-in base image, from the rootful engine's store into this one's.
        saved = subprocess.Popen([cli, "save", base_image], stdout=subprocess.PIPE)
        loaded = self.run(["docker", "load"], stdin=saved.stdout, text=False)
        saved.wait()
        if loaded.returncode != 0:
            self.stop()
            raise RuntimeError(f"docker load into the rootless engine: {loaded.stderr}")

    def run(self, cmd: list[str], cwd: Path | None = None, env: dict | None = None, **kwargs):
        """cmd as the user, with only the user's environment (its engine, its HOME)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(cmd, cwd=cwd or self.home, env={**self.env, **(env or {})}, user=self.uid,
                              group=self.uid, extra_groups=[], check=False, **kwargs)  # fmt: skip

    def stop(self) -> None:
        """Stop the engine and remove what it stored: images, build cache, data root (its
        files belong to the user's subordinate ids: removed as root)."""

        if self.daemon.poll() is None:
            self.run(["docker", "system", "prune", "-af"])
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.daemon.pid, signal.SIGKILL)
                self.daemon.wait()
        self.log.close()
        subprocess.run(["rm", "-rf", str(self.home / ".local" / "share" / "docker")], check=False)


def podman_missing() -> str | None:
    """What this host lacks to run rootless Podman for another user, or None."""

    if os.geteuid() != 0:
        return "creating the user and its id ranges needs root"
    missing = [tool for tool in ("podman", "podman-compose", "newuidmap", "fuse-overlayfs") if not shutil.which(tool)]
    if missing:
        return (
            f"{', '.join(missing)} missing: apt-get install podman catatonit fuse-overlayfs uidmap, and podman-compose"
        )
    if not os.path.exists("/dev/fuse") or os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
        return "/dev/fuse is not open to every user (udev makes it 0666): fuse-overlayfs needs it"
    return None


class PodmanUser:
    """Rootless Podman as `user` (created with `uid` and a subordinate id range where
    missing): overlay storage through fuse-overlayfs, as the README asks; `docker` on the
    user's PATH is Podman, as RHEL's podman-docker makes it; the base image copied from
    the rootful engine `cli`. stop() removes every container, image and build cache."""

    def __init__(self, user: str, uid: int, subordinate: str, cli: str, base_image: str) -> None:
        self.uid = uid
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--uid", str(uid), "--user-group", "--shell", "/bin/bash", user],
                           check=True, capture_output=True)  # fmt: skip
        for path in ("/etc/subuid", "/etc/subgid"):
            lines = Path(path).read_text().splitlines() if os.path.exists(path) else []
            if not any(line.startswith(f"{user}:") for line in lines):
                with open(path, "a") as ranges:
                    ranges.write(f"{user}:{subordinate}\n")
        self.home = Path(pwd.getpwnam(user).pw_dir)
        self.runtime_dir = self.home / ".run"
        subprocess.run(["rm", "-rf", str(self.runtime_dir)], check=True)
        self.runtime_dir.mkdir(mode=0o700)
        config = self.home / ".config" / "containers"
        config.mkdir(parents=True, exist_ok=True)
        (config / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n'
        )
        shim = self.home / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "docker").write_text('#!/bin/sh\nexec podman "$@"\n')
        (shim / "docker").chmod(0o755)
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(self.runtime_dir), str(self.home / ".config"), str(shim)],
                       check=True)  # fmt: skip
        self.env = {
            "HOME": str(self.home),
            "USER": user,
            "LOGNAME": user,
            "PATH": f"{shim}:/usr/local/bin:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "LANG": "C.UTF-8",
        }
        info = self.run(["podman", "info", "--format", "json"])
        if info.returncode != 0:
            raise RuntimeError(f"rootless Podman does not answer for {user}: {info.stderr[-3000:]}")
        store = json.loads(info.stdout)["store"]["graphDriverName"]
        if store != "overlay":
            raise RuntimeError(f"Podman stores {user}'s images with {store}, not overlay")
        saved = subprocess.Popen([cli, "save", base_image], stdout=subprocess.PIPE)
        loaded = self.run(["podman", "load"], stdin=saved.stdout)
        saved.wait()
        named = re.search(r"^Loaded image(?:\(s\))?: (\S+)", loaded.stdout, re.MULTILINE)
        if loaded.returncode != 0 or not named:
            raise RuntimeError(f"podman load: {loaded.stdout}{loaded.stderr}")
        # Podman's name for it: a name without a registry becomes localhost/NAME.
        self.base_image = named.group(1)

    def run(self, cmd: list[str], cwd: Path | None = None, env: dict | None = None, **kwargs):
        """cmd as the user, with only the user's environment."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(cmd, cwd=cwd or self.home, env={**self.env, **(env or {})}, user=self.uid,
                              group=self.uid, extra_groups=[], check=False, **kwargs)  # fmt: skip

    def stop(self) -> None:
        """Remove the user's containers, images and build cache (files of subordinate ids:
        removed as root)."""

        self.run(["podman", "rm", "-af", "-t", "0"])
        self.run(["podman", "system", "reset", "--force"])
        subprocess.run(["rm", "-rf", str(self.home / ".local" / "share" / "containers")], check=False)
