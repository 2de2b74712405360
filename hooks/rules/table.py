"""The compatibility table (compat.yaml) and what is read or derived from it: the
prompts' labels, the values computed once from the answers, the locks the template ships.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

import yaml

REPO_DIR = Path(__file__).resolve().parent.parent.parent
TABLE_PATH = REPO_DIR / "compat.yaml"
# The project template: the tree a generated project is rendered from.
PROJECT_TEMPLATE = REPO_DIR / "{{cookiecutter.project_slug}}"
# Pre-resolved locks, one folder per combination; included into the project by Jinja.
LOCKS_DIR = REPO_DIR / "templates" / "locks"

# The files each dependency manager owns in a generated project: its input, its lock,
# and the hash-pinned requirements of the tools the image installs (uv installs the
# environment for every manager).
MANAGER_FILES = {
    "uv": ("pyproject.toml", "uv.lock", "docker/uv-requirements.txt"),
    "pip": ("requirements.in", "requirements.txt", "docker/uv-requirements.txt"),
    "poetry": ("pyproject.toml", "poetry.lock", "docker/poetry-requirements.txt", "docker/uv-requirements.txt"),
}

# The generated README's languages: the answer, and its label (the first is the default).
README_LANGUAGES = {
    "en": "English (README.md)",
    "ko": "한국어 / Korean (README.md)",
    "en+ko": "Both (README.md in English, README.ko.md in Korean)",
}

# What `cruft update` never patches in a project: the user's settings, code, data and
# caches, the lock (re-resolved by `make lock` when the inputs change), and cruft's own
# record. Written into each project's .cruft.json.
UPDATE_SKIP = [".cruft.json", ".env", "src", "data", "cache", *sorted({files[1] for files in MANAGER_FILES.values()})]


@cache
def load_table(path: Path = TABLE_PATH) -> dict:
    """The compatibility table (compat.yaml) as plain data. libyaml's loader where PyYAML
    has it (its wheels do): the pure-Python one takes ~40 ms of each generation's every
    load (the prompts, both hooks, each Jinja environment)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# ---------------------------------------------------------------------------------------
# Labels for the prompts
# ---------------------------------------------------------------------------------------


def cuda_prompt(table: dict) -> str:
    """The cuda_version question: each framework's CUDA builds, newest first, with the
    driver they need and the GPU generations they have kernels for.

    cuda_version is a text question, not a menu, because its default depends on the
    framework answered before it and on the host's driver and GPUs (``default_cuda``),
    and cookiecutter cannot render a menu's entries without breaking `cuda_version=...`
    passed on the command line.
    """
    offers = []
    for name, framework in table["frameworks"].items():
        builds = []
        for cuda in sorted(framework["cuda"], key=_version_tuple, reverse=True):
            spec = build_spec(table, name, cuda)
            where = ", from PyTorch's index" if spec["source"] == "index" else ""
            builds.append(f"{cuda} (driver >= {min_driver(table, cuda)}, {spec['gpus']}{where})")
        offers.append(f"{framework['label']}: {', '.join(builds)}")
    return (
        f"CUDA build [{' | '.join(offers)}]. "
        "Default: the newest build that this host's NVIDIA driver runs and that has kernels for its GPUs (read from nvidia-smi)"
    )


def framework_label(table: dict, framework: str) -> str:
    """ "PyTorch 2.14.1 (2.10.0 for CUDA 12.8)": the framework's versions across its builds."""
    spec = table["frameworks"][framework]
    main = framework_version(spec)
    others = [
        f"{framework_version(build_spec(table, framework, cuda))} for CUDA {cuda}"
        for cuda in spec["cuda"]
        if framework_version(build_spec(table, framework, cuda)) != main
    ]
    return f"{spec['label']} {main}" + (f" ({'; '.join(others)})" if others else "")


def python_label(table: dict, python: str) -> str:
    return f"Python {python} (Ubuntu {table['python'][python]['ubuntu']} base image)"


# ---------------------------------------------------------------------------------------
# Derived values
# ---------------------------------------------------------------------------------------


def lock_key(framework: str, cuda: str, python: str, manager: str) -> str:
    """Name of the folder holding the shipped lock for one combination."""
    return f"{framework}-cu{cuda.replace('.', '')}-py{python}-{manager}"


def next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def build_spec(table: dict, framework: str, cuda: str) -> dict:
    """One CUDA build of a framework: the build's own settings over the framework's
    (packages, Python range, lock platforms), plus the build's CUDA version."""
    settings = table["frameworks"][framework]
    spec = {key: value for key, value in settings.items() if key != "cuda"}
    spec["lock_platforms"] = table["lock_platforms"]
    spec.update(settings["cuda"][cuda])
    spec["cuda_version"] = cuda
    return spec


def cuda_major(table: dict, cuda: str) -> dict:
    """The driver rule of a CUDA version's major release (compat.yaml: cuda_majors)."""
    return table["cuda_majors"][cuda.split(".")[0]]


def min_driver(table: dict, cuda: str) -> str:
    """The oldest driver a build of this CUDA runs on (minor version compatibility)."""
    return cuda_major(table, cuda)["min_driver"]


def derive(answers: dict, table: dict | None = None) -> dict:
    """Values computed once from the answers; empty strings where an answer is invalid
    (the pre-generation hook then refuses it with a message, see ``validate``)."""
    table = table or load_table()
    framework_name, cuda_version = answers.get("framework"), answers.get("cuda_version")
    framework = table["frameworks"].get(framework_name, {})
    cuda = table["cuda"].get(cuda_version, {})
    python = table["python"].get(answers.get("python_version"), {})
    build = (
        build_spec(table, framework_name, cuda_version) if cuda and cuda_version in framework.get("cuda", {}) else {}
    )
    slug = str(answers.get("project_slug", ""))
    derived = {
        "dist_name": slug.replace("_", "-"),
        "min_driver": min_driver(table, cuda_version) if cuda else "",
        "toolkit_driver": cuda.get("toolkit_driver", ""),
        "require_cuda": cuda_major(table, cuda_version)["require_cuda"] if cuda else "",
        "base_image": "",
        "requires_python": "",
        "lock_key": "",
        "wheel_index": build.get("index_url", ""),
        # The name the project's config gives that index.
        "wheel_index_name": f"pytorch-cu{cuda_version.replace('.', '')}" if build.get("index_url") else "",
    }
    if cuda and python:
        derived["base_image"] = f"nvidia/cuda:{cuda['image_version']}-{table['image_flavour']}-ubuntu{python['ubuntu']}"
    if build and python:
        excludes = "".join(f",!={version}" for version in build.get("python_excludes", []))
        derived["requires_python"] = f">={answers['python_version']},<{next_minor(build['python_max'])}{excludes}"
    if build and python and answers.get("dependency_manager") in MANAGER_FILES:
        derived["lock_key"] = lock_key(
            answers["framework"],
            answers["cuda_version"],
            answers["python_version"],
            answers["dependency_manager"],
        )
    return derived


def requirements(answers: dict, table: dict | None = None) -> list[str]:
    """The project's direct dependencies (PEP 508), the same for every manager."""
    table = table or load_table()
    build = build_spec(table, answers["framework"], answers["cuda_version"])
    extras = build.get("extras", {})
    pinned = [
        f"{name}[{extras[name]}]=={version}" if name in extras else f"{name}=={version}"
        for name, version in build["packages"].items()
    ]
    return [*pinned, f"numpy{build['numpy']}", *table["common_requirements"]]


def env_layers(answers: dict, table: dict | None = None) -> list[str]:
    """The image's environment layers below the project's own packages, lowest first, as
    docker/env_layers.py takes them (NAME=ROOTS[:KEEP]), by weight and rate of change: the
    framework's big wheels alone, which change least and weigh most; NumPy and the tools
    every project installs; the framework's large dependencies that release rarely; then
    its small ones, which move often and reinstall in seconds. What a project adds goes
    in a last layer of its own."""
    table = table or load_table()
    framework = table["frameworks"][answers["framework"]]
    roots = ",".join(build_spec(table, answers["framework"], answers["cuda_version"])["packages"])
    common = [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in table["common_requirements"]]
    return [
        f"framework={roots}:{','.join(framework['heavy_dependencies'])}",
        f"common={','.join(['numpy', *common])}",
        f"framework-large-deps={roots}:{','.join(framework['large_dependencies'])}",
        f"framework-deps={roots}",
    ]


def shipped_lock(key: str, manager: str) -> Path:
    return LOCKS_DIR / key / MANAGER_FILES[manager][1]


def lock_is_shipped(answers: dict, table: dict | None = None) -> bool:
    """Whether the template ships the lock of these answers (index builds may have none:
    the project's first `make lock` writes it)."""
    key = derive(answers, table)["lock_key"]
    return bool(key) and shipped_lock(key, answers["dependency_manager"]).is_file()


def built_cuda(table: dict, framework: str) -> list[str]:
    """The framework's CUDA builds that have at least one shipped lock, in table order."""
    shipped = {path.name for path in LOCKS_DIR.iterdir()} if LOCKS_DIR.is_dir() else set()
    prefix = f"{framework}-cu"
    return [
        cuda
        for cuda in table["frameworks"].get(framework, {}).get("cuda", {})
        if any(key.startswith(f"{prefix}{cuda.replace('.', '')}-") for key in shipped)
    ]


# ---------------------------------------------------------------------------------------
# GPUs: which builds have kernels for which GPU
# ---------------------------------------------------------------------------------------


def load_module(path: Path, name: str):
    """A Python file as a module, executed afresh (no import cache, no sys.path change)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ beside it: in a project, root's hooks would leave one the user cannot
    # delete; in the template, cookiecutter would copy it into every project.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def framework_builds(table: dict) -> str:
    """Every framework/CUDA pair there is, for messages: "PyTorch 13.2, 13.0, ...; TensorFlow 12.5"."""
    return "; ".join(
        f"{spec['label']} {', '.join(sorted(spec['cuda'], key=_version_tuple, reverse=True))}"
        for spec in table["frameworks"].values()
    )


def framework_version(framework: dict) -> str:
    """The framework's own version: the first pinned package (torch, tensorflow)."""
    return next(iter(framework["packages"].values()))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# A package's name in each lock format: uv.lock and poetry.lock (TOML, read with a pattern:
# the hooks may run on Python 3.10, which has no tomllib) and requirements.txt.
_LOCKED_NAME = re.compile(r'^\[\[package\]\]\r?\nname = "([^"]+)"|^([A-Za-z0-9][A-Za-z0-9._-]*)==', re.MULTILINE)


def normalized_name(name: str) -> str:
    """A package name as PEP 503 compares it, with '_' (its module's usual spelling)."""
    return re.sub(r"[-_.]+", "_", name).lower()


@cache
def importable_modules(framework: str) -> dict[str, str]:
    """Top-level module names the framework's environment installs, each with its
    package: every package in the framework's shipped locks (any Python, any manager, so
    builds whose lock the project writes itself are covered) and what `python3 -m venv`
    adds (venv_packages), under its own name and the names compat.yaml lists for it."""
    table = load_table()
    renames = table.get("import_names", {})
    packages = list(table.get("venv_packages", []))
    for lock in sorted(LOCKS_DIR.glob(f"{framework}-*/*")):
        if lock.name in {files[1] for files in MANAGER_FILES.values()}:
            found = _LOCKED_NAME.finditer(lock.read_text(encoding="utf-8"))
            packages += [(match.group(1) or match.group(2)).lower() for match in found]
    modules: dict[str, str] = {}
    for package in packages:
        if "{" not in package:  # (the project itself, in the shipped lock's template)
            names = [normalized_name(package)]
            for pattern, listed in renames.items():
                if fnmatch.fnmatchcase(package, pattern):
                    names += listed
            modules.update({name: package for name in names if name not in modules})
    return modules
