"""What the templates and cookiecutter.json can call: the filters and globals of the
template's Jinja environment (template_jinja.py)."""

from __future__ import annotations

from pathlib import Path

from . import table as compat
from .host import build_guide, default_cuda, host_gpus, host_ids
from .table import MANAGER_FILES, build_spec, derive, env_layers, lock_is_shipped, min_driver, requirements
from .update import cruft_record


def install_jinja(environment) -> None:
    """Filters and globals of the template's Jinja environment (template_jinja.py).

    cookiecutter.json computes each private ``__`` variable once with the ``derived``
    filter, e.g. ``"__base_image": "{{ cookiecutter | derived('base_image') }}"``.
    """
    environment.filters["derived"] = lambda answers, key: derive(dict(answers))[key]
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
    # The README's "your nvidia-smi shows ... -> choose ..." rows for the project's framework.
    environment.globals["build_guide"] = lambda answers: build_guide(compat.load_table(), answers["framework"])
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
