"""Validation of the answers: each refusal names the field, the value, why, and what
would work.
"""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass

from . import table as compat
from .table import (
    README_LANGUAGES,
    _version_tuple,
    build_spec,
    framework_builds,
    framework_version,
    lock_key,
    shipped_lock,
)

# Ids that exist in every base image and must not be renamed to the project's user.
RESERVED_IDS = {0: "root", 65534: "nobody / nogroup"}
MAX_ID = 4294967294  # 2**32 - 2: (uid_t)-1 means "no change" to chown
SLUG_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
INT_RE = re.compile(r"[0-9]+\Z")


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
                f"answer e.g. {compat.load_table()['defaults'][field]}",
            )
        ]
    if port < low:
        return [
            Problem(
                field, value, why_low, f"use a port from {low} to 65535, e.g. {compat.load_table()['defaults'][field]}"
            )
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


def _check_cuda(table: dict, value: object) -> list[Problem]:
    if value in table["cuda"]:
        return []
    return [
        Problem(
            "cuda_version",
            value,
            "no framework here has a build for it",
            f"answer one of the builds there are: {framework_builds(table)}",
        )
    ]


def _check_combination(table: dict, answers: dict) -> list[Problem]:
    framework_name = answers["framework"]
    framework = table["frameworks"][framework_name]
    cuda, python = answers["cuda_version"], answers["python_version"]
    if cuda not in framework["cuda"]:
        return [
            Problem(
                "cuda_version",
                cuda,
                f"{framework['label']} has no CUDA {cuda} build",
                f"answer one of the builds there are: {framework_builds(table)}",
            )
        ]
    build = build_spec(table, framework_name, cuda)
    label = f"{framework['label']} {framework_version(build)} (CUDA {cuda})"
    low, high = _version_tuple(build["python_min"]), _version_tuple(build["python_max"])
    problems = []
    if not low <= _version_tuple(python) <= high:
        problems.append(
            Problem(
                "python_version",
                python,
                f"{label} supports Python {build['python_min']} to {build['python_max']}",
                f"answer one of: {', '.join(p for p in table['python'] if low <= _version_tuple(p) <= high)}",
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
    # A build from PyTorch's index may come without a lock: the index is not reachable
    # where the template is maintained, and the project's first `make lock` writes it.
    if build["source"] != "index" and not shipped_lock(key, manager).is_file():
        offered = sorted(path.name for path in compat.LOCKS_DIR.iterdir()) if compat.LOCKS_DIR.is_dir() else []
        problems.append(
            Problem(
                "framework / cuda_version / python_version / dependency_manager",
                f"{framework_name}, {cuda}, {python}, {manager}",
                "this combination is not built yet in this version of the template (no lock is shipped for it)",
                f"choose one of the combinations that are: {', '.join(offered) or 'none'}",
            )
        )
    return problems


def validate(answers: dict, table: dict | None = None) -> list[Problem]:
    """Every problem with the answers; an empty list means generation may go on."""
    table = table or compat.load_table()
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
        _check_cuda(table, answers.get("cuda_version")),
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
