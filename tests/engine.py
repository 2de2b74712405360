"""The Docker Engine's own API, for figures the CLI prints only rounded: the bytes of an
image that no other image shares; and what a build's plain progress output says of one
step. Used by the Docker tier and benchmarks/docker_build.py."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket


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
