"""Re-resolves the locks the template ships, so that generating a project stays offline.

    python scripts/relock.py                      # re-lock every shipped combination
    python scripts/relock.py pytorch-cu130-py3.12-uv   # add or re-lock one combination
    python scripts/relock.py --check              # exit 1 if a shipped lock no longer
                                                  # matches its rendered pyproject.toml

Each lock is resolved from the project's own pyproject.toml, rendered by cookiecutter's
Jinja environment exactly as a generated project gets it, for the container's
platforms (compat.yaml: lock_platforms), never the host's. Needs the network.
The root package's name is stored as a Jinja placeholder, so every project gets the
lock under its own name. Also refreshes docker/uv-requirements.txt (uv, hash-pinned).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hooks"))
sys.path.insert(0, str(REPO))  # local_extensions, as cookiecutter loads it

import template_rules
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

SENTINEL_SLUG = "lock_sentinel"
SENTINEL_DIST = SENTINEL_SLUG.replace("_", "-")
PLACEHOLDER = "{{ cookiecutter.__dist_name }}"
TEMPLATE_DIR = REPO / "{{cookiecutter.project_slug}}"
UV_REQUIREMENTS = TEMPLATE_DIR / "docker" / "uv-requirements.txt"


def parse_key(key: str) -> dict:
    framework, cuda, python, manager = key.split("-")
    cuda = cuda.removeprefix("cu")
    return {
        "framework": framework,
        "cuda_version": f"{cuda[:-1]}.{cuda[-1]}",
        "python_version": python.removeprefix("py"),
        "dependency_manager": manager,
    }


def render_inputs(answers: dict, dest: Path) -> None:
    """Render the manager's input file(s) the way cookiecutter does for a project."""
    context = {
        "cookiecutter": prompt_for_config(
            generate_context(str(REPO / "cookiecutter.json"), extra_context={"project_name": SENTINEL_SLUG, **answers}),
            no_input=True,
        )
    }
    env = StrictEnvironment(context=context, keep_trailing_newline=True)
    input_file = template_rules.MANAGER_FILES[answers["dependency_manager"]][0]
    source = (TEMPLATE_DIR / input_file).read_text(encoding="utf-8")
    (dest / input_file).write_text(env.from_string(source).render(**context), encoding="utf-8")


def find_python(version: str) -> str:
    """An interpreter of the lock's lowest Python, which uv needs to lock for it."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "--version"], capture_output=True, check=False).returncode == 0:
            return candidate
    sys.exit(f"relock: no Python {version} interpreter found (install one, or put python{version} on PATH)")


def uv(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The platform's certificate store, so a company's TLS-intercepting proxy is trusted.
    env = {"UV_SYSTEM_CERTS": "1", **os.environ}
    return subprocess.run(
        [sys.executable, "-m", "uv", *args], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )


def shipped_text(key: str, manager: str) -> str:
    return template_rules.shipped_lock(key, manager).read_text(encoding="utf-8")


def lock_one(key: str, check: bool) -> bool:
    answers = parse_key(key)
    manager = answers["dependency_manager"]
    if manager != "uv":
        sys.exit(f"relock: {manager} locks are not built yet")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        render_inputs(answers, work)
        python = find_python(answers["python_version"])
        lock_name = template_rules.MANAGER_FILES[manager][1]
        if check:
            (work / lock_name).write_text(
                shipped_text(key, manager).replace(PLACEHOLDER, SENTINEL_DIST), encoding="utf-8"
            )
            result = uv("lock", "--check", "--python", python, "--no-python-downloads", cwd=work)
            if result.returncode != 0:
                print(
                    f"STALE {key}: {result.stderr.strip()}\n  re-lock with: python scripts/relock.py {key}",
                    file=sys.stderr,
                )
                return False
            print(f"ok    {key}")
            return True
        result = uv("lock", "--python", python, "--no-python-downloads", cwd=work)
        if result.returncode != 0:
            # The previous lock stays untouched.
            sys.exit(f"relock: resolving {key} failed; the shipped lock is unchanged.\n{result.stderr}")
        text = (work / lock_name).read_text(encoding="utf-8")
    for marker in ("{{", "{%", "{#"):
        if marker in text:
            sys.exit(f"relock: {key} lock contains {marker!r}, which Jinja would interpret")
    target = template_rules.shipped_lock(key, manager)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.replace(f'"{SENTINEL_DIST}"', f'"{PLACEHOLDER}"'), encoding="utf-8")
    print(f"locked {key}: {target.relative_to(REPO)}")
    return True


def lock_uv_itself() -> None:
    version = template_rules.load_table()["tools"]["uv"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in.txt").write_text(f"uv=={version}\n", encoding="utf-8")
        result = uv(
            "pip",
            "compile",
            "in.txt",
            "--universal",
            "--generate-hashes",
            "--no-header",
            "--no-python-downloads",
            "--python-version",
            "3.10",
            "-o",
            "out.txt",
            cwd=Path(tmp),
        )
        if result.returncode != 0:
            sys.exit(f"relock: locking uv failed:\n{result.stderr}")
        body = (Path(tmp) / "out.txt").read_text(encoding="utf-8")
    UV_REQUIREMENTS.write_text(
        "# uv for the image, hash-pinned (compat.yaml: tools.uv). Refreshed by scripts/relock.py.\n" + body,
        encoding="utf-8",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help="combinations, e.g. pytorch-cu130-py3.12-uv (default: all shipped)")
    parser.add_argument("--check", action="store_true", help="check shipped locks against their inputs; change nothing")
    args = parser.parse_args()
    keys = args.keys or sorted(path.name for path in template_rules.LOCKS_DIR.iterdir())
    results = [lock_one(key, args.check) for key in keys]
    if not args.check and not args.keys:
        lock_uv_itself()
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
