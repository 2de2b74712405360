"""What the templates and cookiecutter.json can call: the filters and globals of the
template's Jinja environment (template_jinja.py)."""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path

from . import table as compat
from .answers import JINJA_MARKERS, Problem, refuse, validate
from .host import build_guide, default_cuda, host_gpus, host_ids
from .table import MANAGER_FILES, build_spec, derive, env_layers, lock_is_shipped, min_driver, requirements
from .update import cruft_record
from .words import make_help


def install_jinja(environment) -> None:
    """Filters and globals of the template's Jinja environment (template_jinja.py).

    cookiecutter.json computes each private ``__`` variable once with the ``derived``
    filter, e.g. ``"__base_image": "{{ cookiecutter | derived('base_image') }}"``.
    """
    environment.filters["derived"] = derived
    # Strings in TOML files (pyproject.toml): JSON's escapes, less its surrogate pairs.
    environment.filters["toml_string"] = toml_string
    # Defaults for the uid/gid questions: the generating user's ids.
    environment.globals["host_uid"] = lambda: host_ids()[0]
    environment.globals["host_gid"] = lambda: host_ids()[1]
    # Default for cuda_version: the newest build of the chosen framework that the host's
    # driver runs and that has kernels for its GPUs (nvidia-smi), else the table's default.
    environment.globals["host_cuda"] = lambda framework: default_cuda(framework, host_gpus())
    # One CUDA build's settings (packages, lock platforms, index), for the project's files.
    environment.globals["build"] = lambda answers: build_spec(
        compat.load_table(), answers["framework"], answers["cuda_version"]
    )
    # Every CUDA build of the project's framework (driver floor, GPU code), for doctor.py.
    environment.globals["doctor_builds"] = lambda answers: {
        cuda: {
            "min_driver": min_driver(compat.load_table(), cuda),
            "architectures": spec.get("architectures", []),
        }
        for cuda, spec in compat.load_table()["frameworks"][answers["framework"]]["cuda"].items()
    }
    # The README's "your nvidia-smi shows ... -> choose ..." rows for the project's framework,
    # in the README's language (README.ko.md asks for "ko").
    environment.globals["build_guide"] = lambda answers, language="en": build_guide(
        compat.load_table(), answers["framework"], language
    )
    # `make help`'s line for a target, in the language the project speaks (readme_language).
    environment.globals["make_help"] = lambda answers, target: make_help(answers["readme_language"], target)
    # Whether the template ships this project's lock (index builds: the first `make lock`).
    environment.globals["lock_shipped"] = lambda answers: lock_is_shipped(dict(answers))
    # Where the hooks import template_rules from (hooks/): absolute, because cookiecutter's
    # _repo_dir is relative to a working directory the hooks do not run in.
    environment.globals["template_rules_dir"] = str(Path(__file__).resolve().parent.parent)
    # The project's direct dependencies, for pyproject.toml and requirements.in.
    environment.globals["requirements"] = lambda answers: requirements(dict(answers))
    # The environment's layers below the project's own packages, for the Dockerfile.
    environment.globals["env_layers"] = lambda answers: env_layers(dict(answers))
    # Each manager's (input, lock, tool requirements) file names.
    environment.globals["manager_files"] = MANAGER_FILES
    # .cruft.json's content: where the project came from, for `cruft update`.
    environment.filters["cruft_record"] = lambda answers: cruft_record(dict(answers))
    # The table itself, for blocks that list its facts (pinned packages, platforms).
    environment.globals["compat"] = compat.load_table()


def derived(answers, key: str) -> str:
    """One private ``__`` value. The first one is rendered once every question is
    answered, before anything is written: refused answers stop cookiecutter there, with
    the refusal as the last thing on screen (the pre-generation hook checks again, for
    replays and for what needs the project folder)."""
    answers = dict(answers)
    # (A replay file without the private values has them rendered alone, without the
    # questions: nothing to check here, the hook checks the replayed answers.)
    # A combination without a shipped lock is left to the hook: scripts/relock.py renders
    # it to write that lock.
    problems = validate(answers, require_lock=False) if "project_name" in answers else []
    if problems:
        refuse(problems, answers)
    return derive(answers)[key]


def toml_string(value: object) -> str:
    """A TOML basic string. JSON escapes a character beyond the Basic Multilingual Plane
    as a surrogate pair, which TOML rejects; TOML takes it as it is (UTF-8), and has
    escapes for the control characters and DEL, which JSON leaves raw."""
    escaped = json.dumps(str(value), ensure_ascii=False)[1:-1]
    escaped = re.sub(r"[\x7f\x80-\x9f]", lambda match: f"\\u{ord(match.group()):04X}", escaped)
    return f'"{escaped}"'


_TAG = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)


@cache
def template_tags() -> frozenset[str]:
    """Every Jinja tag of the template itself: cookiecutter.json's values, the hooks, and
    the project's files (contents and names), which cookiecutter and the maintenance
    scripts (scripts/relock.py) render."""
    texts = []
    for path in [
        compat.REPO_DIR / "cookiecutter.json",
        *(compat.REPO_DIR / "hooks").glob("*.py"),
        *compat.PROJECT_TEMPLATE.rglob("*"),
        *(compat.REPO_DIR / "templates").rglob("*"),
    ]:
        texts.append(str(path.relative_to(compat.REPO_DIR)))
        if path.is_file() and path.stat().st_size < 1_000_000:
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return frozenset(tag for text in texts for tag in _TAG.findall(text))


def _field_being_rendered() -> str:
    """The question cookiecutter is rendering, for the message: its prompt loop's ``key``."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "prompt_for_config" and isinstance(frame.f_locals.get("key"), str):
            return frame.f_locals["key"]
        frame = frame.f_back
    return "an answer"


def preprocess(source: str, name: str | None) -> str:
    """Every source before Jinja parses it (template_jinja.TemplateRules). Refuses a
    string rendered from text (not a template file) that holds Jinja tags the template
    does not have: an answer given on the command line, in a replay file or a user's
    default_context, which cookiecutter renders as a template and which could run code.
    Refused before it is evaluated."""
    if name is not None or not any(mark in source for mark in JINJA_MARKERS):
        return source
    if not _TAG.search(source) or any(tag not in template_tags() for tag in _TAG.findall(source)):
        problem = Problem(
            _field_being_rendered(),
            source,
            "it holds Jinja syntax, which cookiecutter evaluates in answers given on the command line, "
            "in replay files and on `cruft update` (it could run code); nothing was evaluated",
            "answer without '{{', '{%' and '{#'",
        )
        refuse([problem], {})
    return source
