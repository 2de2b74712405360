"""Measures what users wait for: cold build, image size, `up` until Jupyter answers, and
rebuilds after a change to src/, after adding one dependency (`make lock`, then the
rebuild) and after a new version of a small dependency of the framework ("bump":
filelock or termcolor held below its pin, then `make lock UPGRADE_PACKAGE=<it>`, each
followed by the rebuild), against the floor: one layer FROM the old image installing
one small package, what any rebuild must at least cost. For the bump, whether the
framework's layer came from the cache (1) or was installed again (0). Also: `make lock`
+ rebuild + `up` until Jupyter answers again, what the rebuild leaves behind (bytes only
the old image holds), and a teammate's build (another uid) with the bytes only it
holds. And what a new container costs before any work: the framework's import (`import
torch`) in a fresh container, the bytecode the image holds, and the size of the
compilers' layer. Prints figures only.

    python benchmarks/docker_build.py [--cold] [--base-image local/debian:trixie]
        [--ca-bundle /etc/ssl/certs/ca-certificates.crt] [answer=value ...]
    python benchmarks/docker_build.py --compare-with REV [answer=value ...]
    python benchmarks/docker_build.py --rootless [answer=value ...]

--cold empties the whole BuildKit cache first (`docker builder prune -af`), so the
build downloads everything, as on a new machine. --compare-with REV measures only the
new container's figures (build, size, import, up until Jupyter answers, bytecode, the
compilers' layer), for the template at git revision REV and for this one, side by
side: before and after a change. --rootless measures, in one run, a cold build, the image
size and `make up` until Jupyter answers on the rootful engine and on a rootless Docker
engine started for an ordinary user (as tests/test_rootless.py does; needs root and
Debian's rootlesskit, uidmap, slirp4netns), the same project and ids on both. Needs a
Docker engine and PyPI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import env_values
from cookiecutter.main import cookiecutter
from engine import RootlessEngine, build_steps, rootless_missing, unique_bytes


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


# How each manager's input file gains one small dependency.
ADD_TQDM = {
    "uv": ("pyproject.toml", '    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "tqdm",\n'),
    "pip": ("requirements.in", "numpy>=1.26\n", "numpy>=1.26\ntqdm\n"),
    "poetry": ("pyproject.toml", '    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "tqdm",\n'),
}


# `import <framework>` timed in a new container each time: what a notebook's first cell
# or a script pays before any work (no bytecode: each module compiled on the way).
IMPORT_SECONDS = (
    "import sys, time; start = time.perf_counter(); __import__(sys.argv[1]); print(time.perf_counter() - start)"
)
SIZE_UNITS = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def import_seconds(docker: str, image: str, module: str, runs: int = 3) -> float:
    """The median of `runs` imports, each in a container of its own."""
    times = []
    for _ in range(runs):
        result = subprocess.run(
            [docker, "run", "--rm", image, "python", "-c", IMPORT_SECONDS, module],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        times.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def compilers_layer_bytes(docker: str, image: str) -> float:
    """The size of the layer that installs gcc/g++ (0 where the image has none)."""
    history = subprocess.run(
        [docker, "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for line in history.splitlines():
        size, _, created_by = line.partition("\t")
        if "g++ gcc" in created_by:
            number, unit = re.fullmatch(r"([0-9.]+)\s*([kKMGT]?B)", size.strip()).groups()
            return float(number) * SIZE_UNITS[unit]
    return 0.0


def bytecode_bytes(docker: str, image: str) -> float:
    """The .pyc files in the image's environment."""
    total = subprocess.run(
        [docker, "run", "--rm", image, "sh", "-c",
         "find /opt/venv -name '*.pyc' -printf '%s\\n' | awk '{s += $1} END {print s + 0}'"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(total.strip() or 0)


def startup_figures(template: Path, answers: dict, args, tmp: str) -> dict:
    """Build the project of `template` and measure what a new container costs; removes
    its images afterwards."""
    docker = args.docker
    # In a process of its own: the template's Jinja extension and rules are imported from
    # the template folder, and this process already holds this checkout's.
    baked = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", tmp, str(template),
         *(f"{key}={value}" for key, value in answers.items())],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if baked.returncode != 0:
        sys.exit(f"generating from {template} failed:\n{baked.stdout[-2000:]}{baked.stderr[-2000:]}")
    [project] = Path(tmp).iterdir()
    env_file = dict(
        line.split("=", 1) for line in (project / ".env").read_text().splitlines() if line and line[0] != "#"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.update(COMPOSE_FILE="compose.yaml", BASE_IMAGE=args.base_image, CA_BUNDLE=args.ca_bundle)
    compose = [docker, "compose"]
    image = env_file["IMAGE_NAME"]
    module = "tensorflow" if answers.get("framework") == "tensorflow" else "torch"
    figures = {}
    try:
        figures["build"] = sh([*compose, "build"], project, env)
        size = subprocess.run(
            [docker, "image", "inspect", image, "--format", "{{.Size}}"], capture_output=True, text=True, check=True
        ).stdout
        figures["image size (GB)"] = int(size) / 1e9
        figures["compilers' layer (MB)"] = compilers_layer_bytes(docker, image) / 1e6
        figures["bytecode in /opt/venv (MB)"] = bytecode_bytes(docker, image) / 1e6
        figures[f"import {module}, new container (s)"] = import_seconds(docker, image, module)
        start = time.monotonic()
        sh([*compose, "up", "-d"], project, env)
        figures["up -> Jupyter 200 (s)"] = (time.monotonic() - start) + jupyter_ready(
            int(env_file["JUPYTER_HOST_PORT"]), env_file["JUPYTER_TOKEN"]
        )
    finally:
        subprocess.run(
            [*compose, "--profile", "tools", "down", "-v", "--rmi", "all"],
            cwd=project, env=env, capture_output=True, check=False,
        )  # fmt: skip
    return figures


def compare(revision: str, answers: dict, args) -> int:
    """startup_figures for the template at `revision` (a git worktree) and for this one."""
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        sh(["git", "worktree", "add", "--detach", str(before), revision], REPO, dict(os.environ))
        try:
            old = startup_figures(before, answers, args, str(Path(tmp) / "old"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)
        new = startup_figures(REPO, answers, args, str(Path(tmp) / "new"))
    print(f"{'':<36} {revision[:12]:>12} {'this tree':>12}")
    for name in new:
        unit = "" if "(" in name else " s"
        print(f"{name:<36} {old.get(name, float('nan')):12.2f} {new[name]:12.2f}{unit}")
    print(json.dumps({"answers": answers, "revision": revision, "before": old, "after": new}))
    return 0


# The rootless engine's user: its own ids and subordinate range (none of the tests').
ROOTLESS_USER, ROOTLESS_UID, ROOTLESS_SUBORDINATE = "gpt-bench-rootless", 2469, "589824:65536"


def engine_figures(run, project: Path, env_file: dict, prune: list[str]) -> dict:
    """Cold build, image size and `make up` until Jupyter answers, with `run` running a
    command on one engine (its own user and environment); removes what it built."""
    image = env_file["IMAGE_NAME"]
    figures = {}

    def timed(cmd: list[str]) -> float:
        start = time.monotonic()
        result = run(cmd, project)
        if result.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return time.monotonic() - start

    try:
        run(prune, project)  # an empty build cache: every download and install again
        figures["cold build (s)"] = timed(["docker", "compose", "build", "lab"])
        figures["image size (GB)"] = int(run(["docker", "image", "inspect", image, "--format", "{{.Size}}"],
                                             project).stdout) / 1e9  # fmt: skip
        start = time.monotonic()
        timed(["make", "up"])
        figures["make up -> Jupyter 200 (s)"] = (time.monotonic() - start) + jupyter_ready(
            int(env_file["JUPYTER_HOST_PORT"]), env_file["JUPYTER_TOKEN"]
        )
    finally:
        run(["docker", "compose", "--profile", "tools", "down", "-v", "--rmi", "all"], project)
        run(prune, project)
    return figures


def rootless_compare(answers: dict, args) -> int:
    """The same project, the same ids, on the rootful engine and on a rootless one."""
    missing = rootless_missing()
    if missing:
        sys.exit(f"--rootless: {missing}")
    answers = {**answers, "uid": str(ROOTLESS_UID), "gid": str(ROOTLESS_UID)}
    site = sysconfig.get_paths()["purelib"]
    generate = [sys.executable, "-m", "cookiecutter", "--no-input", str(REPO),
                *(f"{key}={value}" for key, value in answers.items())]  # fmt: skip
    build_env = {"BASE_IMAGE": args.base_image, "CA_BUNDLE": args.ca_bundle, "COMPOSE_FILE": "compose.yaml"}
    prune = ["docker", "builder", "prune", "-af"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rootful_bin = Path(tmp) / "bin"  # `docker` is the rootful engine's CLI, as --docker names it
        rootful_bin.mkdir()
        (rootful_bin / "docker").symlink_to(args.docker)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("COMPOSE_", "DOCKER_"))}
        env.update(build_env, PATH=f"{rootful_bin}{os.pathsep}{env['PATH']}", PYTHONDONTWRITEBYTECODE="1")
        sh(generate, Path(tmp), env)
        [project] = [path for path in Path(tmp).iterdir() if path != rootful_bin]
        # Generated by root here: the project's files become the ids' owner, as a user's are.
        subprocess.run(["chown", "-R", f"{ROOTLESS_UID}:{ROOTLESS_UID}", str(project)], check=True)

        def rootful(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
            return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)

        results["rootful Docker"] = engine_figures(rootful, project, env_values(project / ".env"), prune)
    engine = RootlessEngine(ROOTLESS_USER, ROOTLESS_UID, ROOTLESS_SUBORDINATE, args.docker, args.base_image)
    try:
        workdir = engine.home / "benchmark"
        subprocess.run(["rm", "-rf", str(workdir)], check=True)
        workdir.mkdir()
        os.chown(workdir, ROOTLESS_UID, ROOTLESS_UID)
        engine.env.update(build_env, PYTHONPATH=site, PYTHONDONTWRITEBYTECODE="1")
        # The host's python3 (the tests' venv lies under root's home), with the tests' cookiecutter.
        generated = engine.run(["python3", *generate[1:]], cwd=workdir)
        if generated.returncode != 0:
            sys.exit(f"generating as {ROOTLESS_USER} failed:\n{generated.stderr[-3000:]}")
        [project] = workdir.iterdir()
        mode = env_values(project / ".env").get("ENGINE_MODE")
        if mode != "rootless-docker":
            sys.exit(f"the project on the rootless engine has ENGINE_MODE={mode}")
        results["rootless Docker"] = engine_figures(
            lambda cmd, cwd: engine.run(cmd, cwd=cwd), project, env_values(project / ".env"), prune
        )
    finally:
        engine.stop()
    names = list(results["rootful Docker"])
    print(f"{'':<30} {'rootful':>10} {'rootless':>10}")
    for name in names:
        print(f"{name:<30} {results['rootful Docker'][name]:10.2f} {results['rootless Docker'][name]:10.2f}")
    print(json.dumps({"answers": answers, **results}))
    return 0


BEFORE = "benchmark-before:tmp"
TEAMMATE = "benchmark-teammate:tmp"


def floor(docker: str, image: str, project: Path, env: dict, env_file: dict) -> float:
    """What any rebuild after adding tqdm must at least cost: one layer FROM the image as
    it was, installing the same locked tqdm into /opt/venv as the image's user, with
    the same CA secret. Built in a folder of its own and removed again."""
    lock = (project / "uv.lock").read_text() if (project / "uv.lock").is_file() else ""
    match = re.search(r'name = "tqdm"\nversion = "([^"]+)"', lock) or re.search(
        r"^tqdm==([\w.]+)",
        "\n".join((project / n).read_text() for n in ("requirements.txt", "poetry.lock") if (project / n).is_file()),
        re.MULTILINE,
    )
    pin = f"tqdm=={match.group(1)}" if match else "tqdm"
    with tempfile.TemporaryDirectory() as context:
        uid = env_file["USER_UID"]
        install = (
            f"if [ -x /opt/uv/bin/uv ]; then /opt/uv/bin/uv pip install --python /opt/venv/bin/python {pin}; "
            f"else /opt/venv/bin/python -m pip install --no-cache-dir {pin}; fi"
        )
        (Path(context) / "Dockerfile").write_text(
            f"FROM {image}\nRUN --mount=type=secret,id=ca_bundle,uid={uid} with-build-ca sh -c '{install}'\n"
        )
        cmd = [
            docker,
            "build",
            "-q",
            "--no-cache",
            "-t",
            "benchmark-floor:tmp",
            "--secret",
            f"id=ca_bundle,src={env['CA_BUNDLE']}",
        ]
        seconds = sh([*cmd, context], Path(context), {**env, "DOCKER_BUILDKIT": "1"})
        subprocess.run([docker, "image", "rm", "-f", "benchmark-floor:tmp"], capture_output=True, check=False)
    return seconds


# A small dependency of each framework, for the bump (a pure-Python package that releases
# often: torch needs filelock, TensorFlow termcolor).
SMALL_DEPENDENCY = {"pytorch": "filelock", "tensorflow": "termcolor"}


def bump(compose: list[str], project: Path, env: dict, answers: dict, floor_seconds: float) -> dict:
    """A small dependency of the framework held below its pin by the input, relocked and
    rebuilt; then the input as it was and `make lock UPGRADE_PACKAGE=<it>`'s command,
    timed with the rebuild that follows, and whether that rebuild took the framework's
    layer from the cache."""
    package = SMALL_DEPENDENCY[answers.get("framework", "pytorch")]
    name, old, new = ADD_TQDM[answers.get("dependency_manager", "uv")]
    path = project / name
    text = path.read_text()
    lock = next(project / n for n in ("uv.lock", "requirements.txt", "poetry.lock") if (project / n).is_file())
    pattern = rf'name = "{package}"\nversion = "([^"]+)"|^{package}==([\w.]+)'
    match = re.search(pattern, lock.read_text(), re.MULTILINE)
    version = match.group(1) or match.group(2)
    path.write_text(text.replace(old, new.replace("tqdm", f"{package}<{version}")))
    sh([*compose, "run", "--rm", "lock"], project, env)
    sh([*compose, "build"], project, env)
    path.write_text(text)
    upgrade = [*compose, "run", "--rm", "lock", "with-build-ca", "docker/lock", "--upgrade-package", package]
    figures = {f"make lock UPGRADE_PACKAGE={package}": sh(upgrade, project, env)}
    start = time.monotonic()
    result = subprocess.run(
        [*compose, "--progress", "plain", "build"], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    figures[f"rebuild after upgrading {package}"] = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"the rebuild after upgrading {package} failed:\n{result.stderr[-3000:]}")
    figures["bump rebuild / floor"] = figures[f"rebuild after upgrading {package}"] / floor_seconds
    figures["framework layer cached (1 = yes)"] = float(build_steps(result.stdout + result.stderr, "framework.txt")[1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="empty the BuildKit cache first")
    parser.add_argument("--base-image", default="local/debian:trixie")
    parser.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    parser.add_argument("--docker", default="/usr/bin/docker")
    parser.add_argument("--compare-with", metavar="REV", help="new-container figures at git revision REV and here")
    parser.add_argument("--rootless", action="store_true", help="cold build and make up on rootful and rootless Docker")
    parser.add_argument("answers", nargs="*", help="template answers, e.g. python_version=3.10")
    args = parser.parse_args()
    answers = dict(answer.split("=", 1) for answer in args.answers)
    answers.setdefault("jupyter_host_port", "28899")
    docker = args.docker
    if args.compare_with:
        return compare(args.compare_with, answers, args)
    if args.rootless:
        return rootless_compare(answers, args)

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
            figures["compilers' layer (MB)"] = compilers_layer_bytes(docker, env_file["IMAGE_NAME"]) / 1e6
            figures["bytecode in /opt/venv (MB)"] = bytecode_bytes(docker, env_file["IMAGE_NAME"]) / 1e6
            module = "tensorflow" if answers.get("framework") == "tensorflow" else "torch"
            figures[f"import {module}, new container (s)"] = import_seconds(docker, env_file["IMAGE_NAME"], module)
            start = time.monotonic()
            sh([*compose, "up", "-d"], project, env)
            figures["up -> Jupyter 200 (s)"] = (time.monotonic() - start) + jupyter_ready(
                int(env_file["JUPYTER_HOST_PORT"]), env_file["JUPYTER_TOKEN"]
            )
            (project / "src" / project.name / "model.py").write_text("X = 1\n")
            figures["rebuild after a src/ change"] = sh([*compose, "build"], project, env)
            manager = answers.get("dependency_manager", "uv")
            name, old, new = ADD_TQDM[manager]
            (project / name).write_text((project / name).read_text().replace(old, new))
            figures["make lock after adding tqdm"] = sh([*compose, "run", "--rm", "--build", "lock"], project, env)
            # The image as it was, under a name of its own (BuildKit resolves FROM by name).
            sh([docker, "tag", env_file["IMAGE_NAME"], BEFORE], project, env)
            figures["rebuild after adding tqdm"] = sh([*compose, "build"], project, env)
            start = time.monotonic()
            sh([*compose, "up", "-d"], project, env)
            figures["up -> Jupyter 200 again (s)"] = (time.monotonic() - start) + jupyter_ready(
                int(env_file["JUPYTER_HOST_PORT"]), env_file["JUPYTER_TOKEN"]
            )
            figures["make lock + rebuild + Jupyter (s)"] = (
                figures["make lock after adding tqdm"]
                + figures["rebuild after adding tqdm"]
                + figures["up -> Jupyter 200 again (s)"]
            )
            figures["only in the old image (MB)"] = unique_bytes(BEFORE) / 1e6
            figures["floor: tqdm into the built image"] = floor(docker, BEFORE, project, env, env_file)
            figures["rebuild / floor"] = (
                figures["rebuild after adding tqdm"] / figures["floor: tqdm into the built image"]
            )
            teammate = {**env, "USER_UID": "4321", "USER_GID": "4321", "IMAGE_NAME": TEAMMATE}
            figures.update(bump(compose, project, env, answers, figures["floor: tqdm into the built image"]))
            figures["teammate's build, uid 4321"] = sh([*compose, "build"], project, teammate)
            figures["only in the teammate's image (MB)"] = unique_bytes(TEAMMATE) / 1e6
        finally:
            subprocess.run([docker, "image", "rm", "-f", BEFORE, TEAMMATE], capture_output=True, check=False)
            subprocess.run(
                [*compose, "--profile", "tools", "down", "-v", "--rmi", "all"],
                cwd=project,
                env=env,
                capture_output=True,
                check=False,
            )
    for name, value in figures.items():
        unit = "" if "(" in name else ("x" if name.endswith("/ floor") else " s")
        print(f"{name:<36} {value:8.2f}{unit}")
    print(json.dumps({"answers": answers, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
