"""Validation of the answers: each refusal names the field, the value, why, and what
would work.
"""

from __future__ import annotations

import keyword
import re
import shlex
import sys
from dataclasses import dataclass

from . import table as compat
from .table import (
    README_LANGUAGES,
    _version_tuple,
    build_spec,
    framework_builds,
    framework_version,
    importable_modules,
    lock_key,
    shipped_lock,
)

# Ids that exist in every base image and must not be renamed to the project's user.
RESERVED_IDS = {0: "root", 65534: "nobody / nogroup"}
MAX_ID = 4294967294  # 2**32 - 2: (uid_t)-1 means "no change" to chown
# Debian and Ubuntu give uids 1-99 to system accounts statically (daemon, bin, www-data,
# ...: Debian policy 9.2.2), so the base image has them and no person's account does
# (Linux starts people at 1000, macOS at 501). Groups may collide safely: an existing
# group is reused as it is (macOS's gid 20 is Ubuntu's "dialout").
SYSTEM_UID_MAX = 99
SLUG_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
# Docker image names separate their parts with one or two '_' and end in a letter or digit.
IMAGE_NAME_RE = re.compile(r"[a-z0-9]+(?:_{1,2}[a-z0-9]+)*\Z")
INT_RE = re.compile(r"[0-9]+\Z")
# What Jinja reads as the start of a tag: cookiecutter renders answers given on the
# command line, in a replay file or by `cruft update` as templates (see README: Limits).
JINJA_MARKERS = ("{{", "{%", "{#")


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


def _check_zero_padded(field: str, value: object) -> list[Problem]:
    """0501 is 501 to Python and Compose but 321 to `install -o` and other tools that read
    a leading zero as octal: refused, so every file holds the one spelling."""
    if isinstance(value, str) and INT_RE.match(value) and len(value) > 1 and value.startswith("0"):
        return [
            Problem(
                field,
                value,
                "a leading zero makes some tools read the number as octal",
                f"answer {int(value)}",
            )
        ]
    return []


def _check_port(field: str, value: object, low: int, why_low: str) -> list[Problem]:
    if padded := _check_zero_padded(field, value):
        return padded
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


def _check_id(field: str, value: object, python: object = None) -> list[Problem]:
    number = _parse_int(value)
    what = "user" if field == "uid" else "group"
    host_cmd = "id -u" if field == "uid" else "id -g"
    if padded := _check_zero_padded(field, value):
        return padded
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
    base_accounts = compat.load_table()["python"].get(python, {}).get("system_uids", {}) if python else {}
    if field == "uid" and number in base_accounts:
        ubuntu = compat.load_table()["python"][python]["ubuntu"]
        return [
            Problem(
                field,
                value,
                f"it is {base_accounts[number]}, a system account of the Ubuntu {ubuntu} base image (Python {python})",
                f"answer the output of `{host_cmd}` as your normal user, or 1000",
            )
        ]
    if field == "uid" and number <= SYSTEM_UID_MAX:
        return [
            Problem(
                field,
                value,
                f"uids 1 to {SYSTEM_UID_MAX} are system accounts (daemon, bin, www-data, ...) in Debian and Ubuntu "
                "images, so the base image already has this one, with a home of its own",
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
    elif not IMAGE_NAME_RE.match(slug):
        fixed = re.sub(r"_{3,}", "__", slug).rstrip("_")
        problems.append(
            Problem(
                "project_slug",
                slug,
                "it names the Docker image, whose names end in a letter or digit and separate words "
                "with one or two '_'",
                f"answer e.g. '{fixed}'",
            )
        )
    elif slug in (shadowed := importable_modules(str(answers.get("framework")))):
        problems.append(
            Problem(
                "project_slug",
                slug,
                f"the environment installs a module of that name (from {shadowed[slug]}), and src/ comes first "
                f"on the container's PYTHONPATH, so `import {slug}` would find the project instead",
                f"answer e.g. '{slug}_project'",
            )
        )
    return problems


def _check_no_jinja(answers: dict) -> list[Problem]:
    """An answer holding Jinja syntax is evaluated (can run code) wherever cookiecutter
    renders answers as templates: refused, so the project never carries one."""
    return [
        Problem(
            field,
            value,
            "it holds Jinja syntax ('{{', '{%' or '{#'), which cookiecutter evaluates in answers given on the "
            "command line, in replay files and on `cruft update`",
            "answer without those characters",
        )
        for field, value in answers.items()
        if not field.startswith("_") and isinstance(value, str) and any(mark in value for mark in JINJA_MARKERS)
    ]


def check_derived(answers: dict, table: dict | None = None) -> list[Problem]:
    """The private ``__`` values must be what the template derives from the answers:
    cookiecutter lets the command line (or a replay file) set them too, and the
    Dockerfile and lock would then follow a value no rule checked."""
    derived = compat.derive(answers, table)
    return [
        Problem(
            f"__{key}",
            answers[f"__{key}"],
            "the template derives this value from the other answers; it cannot be given",
            f"leave it out of the command line (or the replay file): from these answers it is {expected!r}",
        )
        for key, expected in derived.items()
        if f"__{key}" in answers and answers[f"__{key}"] != expected
    ]


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


def _check_combination(table: dict, answers: dict, require_lock: bool = True) -> list[Problem]:
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
    if require_lock and build["source"] != "index" and not shipped_lock(key, manager).is_file():
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


def validate(answers: dict, table: dict | None = None, require_lock: bool = True) -> list[Problem]:
    """Every problem with the answers; an empty list means generation may go on.
    require_lock=False leaves out "no lock is shipped for this combination", which
    scripts/relock.py renders to write that lock (the hook still refuses it)."""
    table = table or compat.load_table()
    problems = _check_no_jinja(answers)
    problems += _check_names(answers)
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
    problems += _check_id("uid", answers.get("uid"), answers.get("python_version"))
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
        problems += _check_combination(table, answers, require_lock)
    if not problems:
        problems += check_derived(answers, table)
    return problems


def refusal(problems: list[Problem], answers: dict) -> str:
    """The whole message for refused answers: each problem, then what works to run again.

    (`cookiecutter --replay` does not: it replays the refused answers too.) Answers given
    on the command line become the defaults of their questions, so the line printed keeps
    every accepted answer and leaves the refused ones to their questions.
    """
    refused = {name.strip() for problem in problems for name in problem.field.split("/")}
    kept = [
        f"{field}={shlex.quote(str(value))}"
        for field, value in answers.items()
        if not field.startswith("_") and field not in refused and isinstance(value, (str, int))
    ]
    questions = sorted(name for name in refused if name in answers and not name.startswith("_"))
    derived = sorted(name for name in refused if name.startswith("__"))
    steps = []
    if questions:
        steps.append(f"answer {', '.join(questions)} with the fix")
    if derived:
        steps.append(f"leave out {', '.join(derived)}")
    if not questions and not derived:
        steps.append("fix what is named above")
    lines = [*(str(problem) for problem in problems), ""]
    lines.append(
        f"Nothing was generated ({len(problems)} refused). Run it again (cookiecutter or cruft create) and "
        f"{' and '.join(steps)}"
        + ("; with cookiecutter, this line keeps your other answers as the questions' defaults:" if kept else ".")
    )
    if kept:
        template = shlex.quote(str(answers["_template"])) if answers.get("_template") else "<template>"
        lines.append(f"  cookiecutter {template} {' '.join(kept)}")
    return "\n".join(lines)


def refuse(problems: list[Problem], answers: dict):
    """Stop cookiecutter (or cruft) with the refusal as the last thing on screen.

    The exception is cookiecutter's FailedHookException, which its command line prints
    alone, and a SystemExit, which ends cruft quietly after printing it; either way
    nothing has been written yet.
    """
    from cookiecutter.exceptions import FailedHookException

    class AnswersRefused(FailedHookException, SystemExit):
        def __init__(self, message: str):
            super().__init__(message)
            self.code = message  # printed by Python at exit, with status 1

    raise AnswersRefused(refusal(problems, answers))
