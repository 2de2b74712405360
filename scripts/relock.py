"""Re-resolves the locks the template ships, so that generating a project stays offline.

    python scripts/relock.py                          # every shipped lock, and the tools
    python scripts/relock.py pytorch-cu130-py3.12-pip # add or re-lock one combination
    python scripts/relock.py --upgrade                # resolve afresh, newest versions
    python scripts/relock.py --check                  # exit 1 if a shipped lock no longer
                                                      # matches its input (offline)

Each combination is locked by the generated project's own `docker/lock` script, on
the input file (pyproject.toml or requirements.in) rendered exactly as a project
gets it, so the template and `make lock` in a project produce the same lock, for the
container's platforms (compat.yaml: lock_platforms), never the host's. Locking needs
PyPI; --check does not. uv.lock's root package name is stored as a Jinja placeholder,
so every project gets the lock under its own name. Also refreshes the hash-pinned
requirements that install uv and poetry in the image (docker/*-requirements.txt).
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
sys.path.insert(0, str(REPO))  # template_jinja, as cookiecutter loads it

import template_rules
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

SENTINEL_SLUG = "lock_sentinel"
SENTINEL_DIST = SENTINEL_SLUG.replace("_", "-")
PLACEHOLDER = "{{ cookiecutter.__dist_name }}"
TEMPLATE_DIR = REPO / "{{cookiecutter.project_slug}}"
CONTEXT_FILE = REPO / "cookiecutter.json"


def parse_key(key: str) -> dict:
    framework, cuda, python, manager = key.split("-")
    cuda = cuda.removeprefix("cu")
    return {
        "framework": framework,
        "cuda_version": f"{cuda[:-1]}.{cuda[-1]}",
        "python_version": python.removeprefix("py"),
        "dependency_manager": manager,
    }


def render(answers: dict, dest: Path, names: list[str]) -> None:
    """Render project files the way cookiecutter does for a project named SENTINEL_SLUG."""
    context = {
        "cookiecutter": prompt_for_config(
            generate_context(str(CONTEXT_FILE), extra_context={"project_name": SENTINEL_SLUG, **answers}),
            no_input=True,
        )
    }
    env = StrictEnvironment(context=context, keep_trailing_newline=True, **context["cookiecutter"]["_jinja2_env_vars"])
    for name in names:
        source = TEMPLATE_DIR / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.from_string(source.read_text(encoding="utf-8")).render(**context), encoding="utf-8")
        target.chmod(source.stat().st_mode)


def find_python(version: str) -> str:
    """An interpreter of the lock's lowest Python, which uv needs to lock for it."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "--version"], capture_output=True, check=False).returncode == 0:
            return candidate
    sys.exit(f"relock: no Python {version} interpreter found (install one, or put python{version} on PATH)")


def tool_env(python: str) -> dict:
    """The project's docker/lock finds uv and poetry on PATH, as in the image."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "UV_PYTHON": python,
        "UV_NO_PYTHON_DOWNLOADS": "1",
        # The platform's certificate store, so a company's TLS-intercepting proxy is trusted.
        "UV_SYSTEM_CERTS": "1",
    }


def lock_one(key: str, check: bool, upgrade: bool) -> bool:
    """Lock (or check) one combination with the project's own docker/lock script."""
    answers = parse_key(key)
    manager = answers["dependency_manager"]
    input_name, lock_name, *_ = template_rules.MANAGER_FILES[manager]
    shipped = template_rules.shipped_lock(key, manager)
    if check and not shipped.is_file():
        print(f"MISSING {key}: no lock shipped", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        render(answers, work, [input_name, "docker/lock"])
        if shipped.is_file() and not upgrade:
            # The shipped pins are kept unless the input asks otherwise.
            (work / lock_name).write_text(shipped.read_text(encoding="utf-8").replace(PLACEHOLDER, SENTINEL_DIST))
        env = tool_env(find_python(answers["python_version"]))
        result = subprocess.run(
            ["sh", "docker/lock", *(["--check"] if check else [])],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if check:
            if result.returncode != 0:
                print(
                    f"STALE {key}: {result.stderr.strip()}\n  re-lock with: python scripts/relock.py {key}",
                    file=sys.stderr,
                )
                return False
            print(f"ok    {key}")
            return True
        if result.returncode != 0:
            # The shipped lock stays untouched.
            sys.exit(f"relock: resolving {key} failed; the shipped lock is unchanged.\n{result.stderr}")
        text = (work / lock_name).read_text(encoding="utf-8")
    for marker in ("{{", "{%", "{#"):
        if marker in text:
            sys.exit(f"relock: {key} lock contains {marker!r}, which Jinja would interpret")
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shipped.write_text(text.replace(f'"{SENTINEL_DIST}"', f'"{PLACEHOLDER}"'), encoding="utf-8")
    print(f"locked {key}: {shipped}")
    return True


def lock_tool(name: str) -> None:
    """docker/<name>-requirements.txt: the tool and its dependencies, hash-pinned."""
    version = template_rules.load_table()["tools"][name]
    target = TEMPLATE_DIR / "docker" / f"{name}-requirements.txt"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in.txt").write_text(f"{name}=={version}\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "uv", "pip", "compile", "in.txt", "--universal", "--generate-hashes"]
        cmd += ["--no-header", "--python-version", "3.10", "-o", "out.txt"]
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=tool_env(sys.executable), check=False)
        if result.returncode != 0:
            sys.exit(f"relock: locking {name} failed:\n{result.stderr}")
        body = (Path(tmp) / "out.txt").read_text(encoding="utf-8")
    header = f"# {name} for the image, hash-pinned (compat.yaml: tools.{name}). Refreshed by scripts/relock.py.\n"
    target.write_text(header + body, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help="combinations, e.g. pytorch-cu130-py3.12-uv (default: all shipped)")
    parser.add_argument("--check", action="store_true", help="check shipped locks against their inputs; change nothing")
    parser.add_argument("--upgrade", action="store_true", help="resolve afresh instead of keeping the shipped pins")
    args = parser.parse_args()
    keys = args.keys or sorted(path.name for path in template_rules.LOCKS_DIR.iterdir())
    results = [lock_one(key, args.check, args.upgrade) for key in keys]
    if not args.check and not args.keys:
        for tool in template_rules.load_table()["tools"]:
            lock_tool(tool)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
