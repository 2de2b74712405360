"""The template's rules: the compatibility table, values derived from the answers,
validation of the answers, and defaults read from the host.

Shared by the hooks, the Jinja extension (``template_jinja.py``), the maintenance
scripts and the tests, so each rule is written once. Needs only the standard library
and PyYAML, which cookiecutter itself depends on, so it runs wherever cookiecutter does.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

REPO_DIR = Path(__file__).resolve().parent.parent
TABLE_PATH = REPO_DIR / "compat.yaml"
# Pre-resolved locks, one folder per combination; included into the project by Jinja.
LOCKS_DIR = REPO_DIR / "templates" / "locks"

# The files each dependency manager owns in a generated project:
# (its input, its lock, the hash-pinned requirements that install the tool itself).
MANAGER_FILES = {
    "uv": ("pyproject.toml", "uv.lock", "docker/uv-requirements.txt"),
    "pip": ("requirements.in", "requirements.txt", "docker/uv-requirements.txt"),
    "poetry": ("pyproject.toml", "poetry.lock", "docker/poetry-requirements.txt"),
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

# Ids that exist in every base image and must not be renamed to the project's user.
RESERVED_IDS = {0: "root", 65534: "nobody / nogroup"}
MAX_ID = 4294967294  # 2**32 - 2: (uid_t)-1 means "no change" to chown
SLUG_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
INT_RE = re.compile(r"[0-9]+\Z")


@cache
def load_table(path: Path = TABLE_PATH) -> dict:
    """The compatibility table (compat.yaml) as plain data."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# ---------------------------------------------------------------------------------------
# Labels for the prompts
# ---------------------------------------------------------------------------------------


def cuda_prompt(table: dict) -> str:
    """The cuda_version question: each framework's built CUDA versions with their driver floor.

    cuda_version is a text question, not a menu, because its default depends on the
    framework answered before it and on the host's driver (``default_cuda``), and
    cookiecutter cannot render a menu's entries without breaking `cuda_version=...`
    passed on the command line. Only builds with a shipped lock are listed; the table's
    others are refused by name.
    """
    offers = []
    for name, spec in table["frameworks"].items():
        builds = ", ".join(
            f"{cuda} (driver >= {table['cuda'][cuda]['min_driver']})" for cuda in built_cuda(table, name)
        )
        offers.append(f"{spec['label']} {builds}")
    return (
        f"CUDA build [{'; '.join(offers)}]. "
        "Default: the newest build of your framework that this host's NVIDIA driver runs (read from nvidia-smi)"
    )


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


def derive(answers: dict, table: dict | None = None) -> dict:
    """Values computed once from the answers; empty strings where an answer is invalid
    (the pre-generation hook then refuses it with a message, see ``validate``)."""
    table = table or load_table()
    framework = table["frameworks"].get(answers.get("framework"), {})
    cuda = table["cuda"].get(answers.get("cuda_version"), {})
    python = table["python"].get(answers.get("python_version"), {})
    build = framework.get("cuda", {}).get(answers.get("cuda_version"), {})
    slug = str(answers.get("project_slug", ""))
    derived = {
        "dist_name": slug.replace("_", "-"),
        "image_name": f"{slug}:dev" if slug else "",
        "min_driver": cuda.get("min_driver", ""),
        "base_image": "",
        "requires_python": "",
        "lock_key": "",
        "wheel_index": build.get("index_url", ""),
        # The name the project's config gives that index.
        "wheel_index_name": f"pytorch-cu{answers['cuda_version'].replace('.', '')}" if build.get("index_url") else "",
    }
    if cuda and python:
        derived["base_image"] = f"nvidia/cuda:{cuda['image_version']}-{table['image_flavour']}-ubuntu{python['ubuntu']}"
    if framework and python:
        excludes = "".join(f",!={version}" for version in framework.get("python_excludes", []))
        derived["requires_python"] = f">={answers['python_version']},<{next_minor(framework['python_max'])}{excludes}"
    if framework and cuda and python and answers.get("dependency_manager") in MANAGER_FILES:
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
    framework = table["frameworks"][answers["framework"]]
    extras = framework.get("extras", {})
    pinned = [
        f"{name}[{extras[name]}]=={version}" if name in extras else f"{name}=={version}"
        for name, version in framework["packages"].items()
    ]
    return [*pinned, f"numpy{framework['numpy']}", *table["common_requirements"]]


def shipped_lock(key: str, manager: str) -> Path:
    return LOCKS_DIR / key / MANAGER_FILES[manager][1]


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
# Validation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One refused answer: which field, the value given, why, and what would work."""

    field: str
    value: object
    why: str
    fix: str

    def __str__(self) -> str:
        return f"ERROR: {self.field} = {self.value!r}: {self.why}\n  Fix: {self.fix}"


def _parse_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and INT_RE.match(value):
        return int(value)
    return None


def _check_port(field: str, value: object, low: int, why_low: str) -> list[Problem]:
    port = _parse_int(value)
    if port is None or not 1 <= port <= 65535:
        return [
            Problem(
                field,
                value,
                "a port is a whole number from 1 to 65535",
                f"answer e.g. {load_table()['defaults'][field]}",
            )
        ]
    if port < low:
        return [
            Problem(field, value, why_low, f"use a port from {low} to 65535, e.g. {load_table()['defaults'][field]}")
        ]
    return []


def _check_id(field: str, value: object) -> list[Problem]:
    number = _parse_int(value)
    what = "user" if field == "uid" else "group"
    host_cmd = "id -u" if field == "uid" else "id -g"
    if number is None or number > MAX_ID:
        return [
            Problem(
                field,
                value,
                f"a {what} id is a whole number from 1 to {MAX_ID}",
                f"answer the output of `{host_cmd}` on the host",
            )
        ]
    if number in RESERVED_IDS:
        return [
            Problem(
                field,
                value,
                f"{number} is {RESERVED_IDS[number]} in every base image; the container user must be an ordinary {what}",
                f"answer the output of `{host_cmd}` as your normal user, or 1000",
            )
        ]
    return []


def _check_names(answers: dict) -> list[Problem]:
    problems = []
    name = answers.get("project_name")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        problems.append(
            Problem("project_name", name, "the name must be non-empty printable text", "answer e.g. 'GPU Lab'")
        )
    slug = answers.get("project_slug")
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        problems.append(
            Problem(
                "project_slug",
                slug,
                "the slug names the directory, the Python package, the compose project and the image, "
                "so it must start with a lowercase letter and hold only lowercase letters, digits and '_'",
                "answer e.g. 'gpu_lab'",
            )
        )
    elif keyword.iskeyword(slug) or slug in sys.stdlib_module_names:
        problems.append(
            Problem(
                "project_slug",
                slug,
                "it is a Python keyword or a standard-library module, so `import` would pick the wrong one",
                f"answer e.g. '{slug}_project'",
            )
        )
    elif len(slug) > 60:
        problems.append(Problem("project_slug", slug, "it is longer than 60 characters", "answer a shorter slug"))
    return problems


def _check_choice(table: dict, field: str, section: dict, value: object) -> list[Problem]:
    if value in section:
        return []
    return [Problem(field, value, "not a choice this template offers", f"answer one of: {', '.join(section)}")]


def _check_combination(table: dict, answers: dict) -> list[Problem]:
    framework_name = answers["framework"]
    framework = table["frameworks"][framework_name]
    cuda, python = answers["cuda_version"], answers["python_version"]
    if cuda not in framework["cuda"]:
        return [
            Problem(
                "cuda_version",
                cuda,
                f"{framework['label']} {framework_version(framework)} has no CUDA {cuda} build",
                f"answer one of: {', '.join(framework['cuda'])}",
            )
        ]
    problems = []
    if not _version_tuple(framework["python_min"]) <= _version_tuple(python) <= _version_tuple(framework["python_max"]):
        problems.append(
            Problem(
                "python_version",
                python,
                f"{framework['label']} {framework_version(framework)} supports Python {framework['python_min']} to {framework['python_max']}",
                f"answer one of: {', '.join(p for p in table['python'] if _version_tuple(framework['python_min']) <= _version_tuple(p) <= _version_tuple(framework['python_max']))}",
            )
        )
    ubuntu = table["python"][python]["ubuntu"]
    if ubuntu not in table["cuda"][cuda]["ubuntu"]:
        problems.append(
            Problem(
                "python_version",
                python,
                f"nvidia/cuda publishes no CUDA {cuda} image for Ubuntu {ubuntu}",
                f"answer a Python whose Ubuntu is one of: {', '.join(table['cuda'][cuda]['ubuntu'])}",
            )
        )
    if problems:
        return problems
    manager = answers["dependency_manager"]
    key = lock_key(framework_name, cuda, python, manager)
    if not shipped_lock(key, manager).is_file():
        offered = sorted(path.name for path in LOCKS_DIR.iterdir()) if LOCKS_DIR.is_dir() else []
        problems.append(
            Problem(
                "framework / cuda_version / python_version / dependency_manager",
                f"{framework_name}, {cuda}, {python}, {manager}",
                "this combination is not built yet in this version of the template (no lock is shipped for it)",
                f"choose one of the combinations that are: {', '.join(offered) or 'none'}",
            )
        )
    return problems


def framework_version(framework: dict) -> str:
    """The framework's own version: the first pinned package (torch, tensorflow)."""
    return next(iter(framework["packages"].values()))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _driver_tuple(version: str) -> tuple[int, ...] | None:
    """A driver version (three dot-separated numbers, as nvidia-smi prints it) as a tuple; None for anything else."""
    parts = version.strip().split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else None


def validate(answers: dict, table: dict | None = None) -> list[Problem]:
    """Every problem with the answers; an empty list means generation may go on."""
    table = table or load_table()
    problems = _check_names(answers)
    problems += _check_port(
        "jupyter_host_port",
        answers.get("jupyter_host_port"),
        1,
        "",
    )
    problems += _check_port(
        "jupyter_container_port",
        answers.get("jupyter_container_port"),
        1024,
        "Jupyter runs as a non-root user inside the container, and ports below 1024 need privileges on some engines",
    )
    problems += _check_id("uid", answers.get("uid"))
    problems += _check_id("gid", answers.get("gid"))
    choices = [
        _check_choice(table, "framework", table["frameworks"], answers.get("framework")),
        _check_choice(table, "cuda_version", table["cuda"], answers.get("cuda_version")),
        _check_choice(table, "python_version", table["python"], answers.get("python_version")),
        _check_choice(table, "dependency_manager", table["dependency_managers"], answers.get("dependency_manager")),
        _check_choice(table, "readme_language", README_LANGUAGES, answers.get("readme_language")),
    ]
    for found in choices:
        problems += found
    if not any(choices):
        problems += _check_combination(table, answers)
    return problems


# ---------------------------------------------------------------------------------------
# Host defaults
# ---------------------------------------------------------------------------------------


def host_ids() -> tuple[int, int]:
    """The generating user's uid and gid, so bind-mounted files belong to them.

    The table's defaults (1000, the first ordinary user on most Linux systems) where
    the ids are unknown (Windows) or root's: a container user must not be root.
    """
    defaults = load_table()["defaults"]
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return defaults["uid"], defaults["gid"]
    uid, gid = getuid(), os.getgid()
    return (uid if uid not in RESERVED_IDS else defaults["uid"]), (gid if gid not in RESERVED_IDS else defaults["gid"])


# The driver query may hang on a wedged GPU; generation must stay fast.
NVIDIA_SMI_TIMEOUT_S = 5


def host_driver() -> str | None:
    """The host's NVIDIA driver version from nvidia-smi (offline, local), or None.

    None when nvidia-smi is missing, fails, hangs or prints no version: generating on a
    laptop without a GPU, in CI or in a container is normal and keeps the static default.
    """
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        result = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines() if result.returncode == 0 else []
    # One line per GPU; every GPU of a host shares the one driver.
    return lines[0].strip() if lines and _driver_tuple(lines[0]) else None


def default_cuda(framework: str, driver: str | None, table: dict | None = None) -> str:
    """The cuda_version default: the newest built CUDA of the framework that the driver runs.

    Without a driver (or when it runs none of them) the table's default for the
    framework: the project may well be meant for another machine, and the pre-generation
    hook says so when this host cannot run it (``host_notes``).
    """
    table = table or load_table()
    built = built_cuda(table, framework)
    static = table["defaults"]["cuda_version"].get(framework)
    fallback = static if static in built else (built[0] if built else static or "")
    have = _driver_tuple(driver) if driver else None
    if not have:
        return fallback
    runnable = [cuda for cuda in built if _driver_tuple(table["cuda"][cuda]["min_driver"]) <= have]
    return max(runnable, key=_version_tuple) if runnable else fallback


def host_notes(answers: dict, driver: str | None, table: dict | None = None) -> list[str]:
    """Warnings (not refusals) about running the answers on this host."""
    table = table or load_table()
    cuda = table["cuda"].get(answers.get("cuda_version"))
    have = _driver_tuple(driver) if driver else None
    if not cuda or not have or _driver_tuple(cuda["min_driver"]) <= have:
        return []
    note = (
        f"NOTE: this host's NVIDIA driver {driver} is older than CUDA {answers['cuda_version']} needs "
        f"({cuda['min_driver']}): the container will start here only without the GPU "
        "(COMPOSE_FILE=compose.yaml). Update the driver, or ignore this if the project is for another machine."
    )
    return [note]


# ---------------------------------------------------------------------------------------
# Where the project came from (for `cruft update`)
# ---------------------------------------------------------------------------------------


def template_commit(repo_dir: Path = REPO_DIR) -> str:
    """The template's git commit, or "" where it is not a git checkout (a zip download)."""
    git = shutil.which("git")
    # Only the template's own checkout counts, not a repository it happens to sit in.
    if not git or not (repo_dir / ".git").exists():
        return ""
    try:
        result = subprocess.run(
            [git, "-C", str(repo_dir), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def template_address(given: str, repo_dir: Path = REPO_DIR) -> str:
    """What `cruft update` clones: the URL the user gave, with cookiecutter's gh:/gl:/bb:
    abbreviations expanded, or this checkout's absolute path for a local template."""
    from cookiecutter.config import BUILTIN_ABBREVIATIONS
    from cookiecutter.repository import expand_abbreviations, is_repo_url

    expanded = expand_abbreviations(given, BUILTIN_ABBREVIATIONS)
    return expanded if is_repo_url(expanded) else str(repo_dir)


def cruft_record(answers: dict, repo_dir: Path = REPO_DIR) -> dict:
    """The project's .cruft.json: template address and commit, the answers, the skip list.

    The answers are the questions only: cruft passes them back as answers on update, so
    derived values (the private ``__`` variables) are derived again by the new template.
    """
    questions = {key: value for key, value in answers.items() if not key.startswith("_")}
    address = template_address(str(answers.get("_template", "")), repo_dir)
    commit = template_commit(repo_dir)
    return {
        "template": address,
        "commit": commit,
        "checkout": None,
        "context": {"cookiecutter": {**questions, "_template": address, "_commit": commit}},
        "directory": None,
        "skip": UPDATE_SKIP,
    }


# ---------------------------------------------------------------------------------------
# Jinja: what the templates and cookiecutter.json can call
# ---------------------------------------------------------------------------------------


def install_jinja(environment) -> None:
    """Filters and globals of the template's Jinja environment (template_jinja.py).

    cookiecutter.json computes each private ``__`` variable once with the ``derived``
    filter, e.g. ``"__base_image": "{{ cookiecutter | derived('base_image') }}"``.
    """
    environment.filters["derived"] = lambda answers, key: derive(dict(answers))[key]
    # Defaults for the uid/gid questions: the generating user's ids.
    environment.globals["host_uid"] = lambda: host_ids()[0]
    environment.globals["host_gid"] = lambda: host_ids()[1]
    # Default for cuda_version: the newest build of the chosen framework the host's
    # driver runs (nvidia-smi), else the table's default for that framework.
    environment.globals["host_cuda"] = lambda framework: default_cuda(framework, host_driver())
    # Where the hooks import this module from: absolute, because cookiecutter's
    # _repo_dir is relative to a working directory the hooks do not run in.
    environment.globals["template_rules_dir"] = str(Path(__file__).resolve().parent)
    # The project's direct dependencies, for pyproject.toml and requirements.in.
    environment.globals["requirements"] = lambda answers: requirements(dict(answers))
    # Each manager's (input, lock, tool requirements) file names.
    environment.globals["manager_files"] = MANAGER_FILES
    # .cruft.json's content: where the project came from, for `cruft update`.
    environment.filters["cruft_record"] = lambda answers: cruft_record(dict(answers))
    # The table itself, for blocks that list its facts (pinned packages, platforms).
    environment.globals["compat"] = load_table()
