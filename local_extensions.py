"""Jinja extension: values derived from the answers, and defaults read from the host.

cookiecutter.json computes each private ``__`` variable once with the ``derived``
filter, e.g. ``"__base_image": "{{ cookiecutter | derived('base_image') }}"``; the rule
behind every value lives in hooks/template_rules.py, next to the compatibility table.
The uid/gid questions default to ``host_uid()`` / ``host_gid()``: the generating user;
cuda_version to ``host_cuda(framework)``: the newest build the host's driver runs.
"""

import sys
from pathlib import Path

from jinja2.ext import Extension

sys.path.insert(0, str(Path(__file__).resolve().parent / "hooks"))

import template_rules


class TemplateRules(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.filters["derived"] = lambda answers, key: template_rules.derive(dict(answers))[key]
        # Defaults for the uid/gid questions: the generating user's ids.
        environment.globals["host_uid"] = lambda: template_rules.host_ids()[0]
        environment.globals["host_gid"] = lambda: template_rules.host_ids()[1]
        # Default for cuda_version: the newest build of the chosen framework the host's
        # driver runs (nvidia-smi), else the table's default for that framework.
        environment.globals["host_cuda"] = lambda framework: template_rules.default_cuda(
            framework, template_rules.host_driver()
        )
        # Where the hooks import template_rules from: absolute, because cookiecutter's
        # _repo_dir is relative to a working directory the hooks do not run in.
        environment.globals["template_rules_dir"] = str(Path(template_rules.__file__).resolve().parent)
        # The project's direct dependencies, for pyproject.toml and requirements.in.
        environment.globals["requirements"] = lambda answers: template_rules.requirements(dict(answers))
        # Each manager's (input, lock, tool requirements) file names.
        environment.globals["manager_files"] = template_rules.MANAGER_FILES
        # The table itself, for blocks that list its facts (pinned packages, platforms).
        environment.globals["compat"] = template_rules.load_table()
