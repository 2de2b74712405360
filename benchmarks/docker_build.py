"""Measures what users wait for: cold build, image size, `up` until Jupyter answers, and
rebuilds after a change to src/ and after adding one dependency. Prints figures only.

    python benchmarks/docker_build.py [--cold] [--base-image local/debian:trixie]
        [--ca-bundle /etc/ssl/certs/ca-certificates.crt] [answer=value ...]

--cold empties the whole BuildKit cache first (`docker builder prune -af`), so the
build downloads everything, as on a new machine. Needs a Docker engine and PyPI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import relock
from cookiecutter.main import cookiecutter


def sh(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.monotonic() - start


def jupyter_ready(port: int, token: str, timeout: float = 300) -> float:
    start = time.monotonic()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    sys.exit("Jupyter never answered")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="empty the BuildKit cache first")
    parser.add_argument("--base-image", default="local/debian:trixie")
    parser.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    parser.add_argument("--docker", default="/usr/bin/docker")
    parser.add_argument("answers", nargs="*", help="template answers, e.g. python_version=3.10")
    args = parser.parse_args()
    answers = dict(answer.split("=", 1) for answer in args.answers)
    answers.setdefault("jupyter_host_port", "28899")
    docker = args.docker

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(cookiecutter(str(REPO), no_input=True, extra_context=answers, output_dir=tmp))
        env_file = dict(
            line.split("=", 1) for line in (project / ".env").read_text().splitlines() if line and line[0] != "#"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        env.update(COMPOSE_FILE="compose.yaml", BASE_IMAGE=args.base_image, CA_BUNDLE=args.ca_bundle)
        compose = [docker, "compose"]
        figures = {}
        try:
            if args.cold:
                sh([docker, "builder", "prune", "-af"], project, env)
            figures["build (cold)" if args.cold else "build"] = sh([*compose, "build"], project, env)
            size = subprocess.run(
                [docker, "image", "inspect", env_file["IMAGE_NAME"], "--format", "{{.Size}}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            figures["image size (GB)"] = int(size) / 1e9
            start = time.monotonic()
            sh([*compose, "up", "-d"], project, env)
            figures["up -> Jupyter 200 (s)"] = (time.monotonic() - start) + jupyter_ready(
                int(env_file["JUPYTER_HOST_PORT"]), env_file["JUPYTER_TOKEN"]
            )
            (project / "src" / project.name / "model.py").write_text("X = 1\n")
            figures["rebuild after a src/ change"] = sh([*compose, "build"], project, env)
            pyproject = project / "pyproject.toml"
            pyproject.write_text(
                pyproject.read_text().replace('    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "tqdm",\n')
            )
            python = relock.find_python(answers.get("python_version", "3.12"))
            figures["uv lock after adding tqdm"] = sh(
                [sys.executable, "-m", "uv", "lock", "--python", python, "--no-python-downloads"], project, env
            )
            figures["rebuild after adding tqdm"] = sh([*compose, "build"], project, env)
        finally:
            subprocess.run(
                [*compose, "down", "-v", "--rmi", "all"], cwd=project, env=env, capture_output=True, check=False
            )
    for name, value in figures.items():
        print(f"{name:<32} {value:8.2f}" + ("" if "GB" in name else " s"))
    print(json.dumps({"answers": answers, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
