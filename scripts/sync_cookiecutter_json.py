"""Writes cookiecutter.json's choices, defaults and prompt labels from compat.yaml.

    python scripts/sync_cookiecutter_json.py          # rewrite cookiecutter.json
    python scripts/sync_cookiecutter_json.py --check  # exit 1 if it is out of date

cookiecutter.json must list the choices itself (cookiecutter reads nothing else), so it
is generated from the table rather than edited, and a test runs --check.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hooks"))

import template_rules


def first(default, choices):
    """A cookiecutter choice list: the default first, then the rest in table order."""
    return [default] + [choice for choice in choices if choice != default]


def build(table: dict) -> dict:
    defaults = table["defaults"]
    frameworks = table["frameworks"]
    return {
        "project_name": "GPU Lab",
        # Never empty (an empty name would be the output folder itself): a blank project
        # name then reaches the hook, which refuses it by name.
        "project_slug": "{{ cookiecutter.project_name | slugify(separator='_') or 'project' }}",
        "framework": first(defaults["framework"], frameworks),
        # A text question: its default depends on the framework and the host's driver.
        "cuda_version": "{{ host_cuda(cookiecutter.framework) }}",
        "python_version": first(defaults["python_version"], table["python"]),
        "jupyter_host_port": defaults["jupyter_host_port"],
        "jupyter_container_port": defaults["jupyter_container_port"],
        # The generating user's ids (hooks/template_rules.py), so bind-mounted files are theirs.
        "uid": "{{ host_uid() }}",
        "gid": "{{ host_gid() }}",
        "dependency_manager": first(defaults["dependency_manager"], table["dependency_managers"]),
        "readme_language": list(template_rules.README_LANGUAGES),
        "__dist_name": "{{ cookiecutter | derived('dist_name') }}",
        "__base_image": "{{ cookiecutter | derived('base_image') }}",
        "__min_driver": "{{ cookiecutter | derived('min_driver') }}",
        "__toolkit_driver": "{{ cookiecutter | derived('toolkit_driver') }}",
        "__require_cuda": "{{ cookiecutter | derived('require_cuda') }}",
        "__requires_python": "{{ cookiecutter | derived('requires_python') }}",
        "__lock_key": "{{ cookiecutter | derived('lock_key') }}",
        "__wheel_index": "{{ cookiecutter | derived('wheel_index') }}",
        "__wheel_index_name": "{{ cookiecutter | derived('wheel_index_name') }}",
        "__prompts__": {
            "project_name": "Project name",
            "project_slug": "Slug (directory, Python package, compose project and image name)",
            "framework": {
                "__prompt__": "Deep-learning framework",
                **{name: template_rules.framework_label(table, name) for name in frameworks},
            },
            "cuda_version": template_rules.cuda_prompt(table),
            "python_version": {
                "__prompt__": "Python of the image",
                **{python: template_rules.python_label(table, python) for python in table["python"]},
            },
            "jupyter_host_port": "Jupyter port on the host (http://127.0.0.1:PORT)",
            "jupyter_container_port": "Jupyter port inside the container",
            "uid": "Container user's uid (`id -u` on the host)",
            "gid": "Container user's gid (`id -g` on the host)",
            "dependency_manager": {
                "__prompt__": "Dependency manager",
                **{name: spec["label"] for name, spec in table["dependency_managers"].items()},
            },
            "readme_language": {"__prompt__": "Language of the project's README", **template_rules.README_LANGUAGES},
        },
        "_extensions": ["template_jinja.TemplateRules"],
        "_jinja2_env_vars": {"lstrip_blocks": True, "trim_blocks": True},
    }


def render(table: dict) -> str:
    return json.dumps(build(table), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args()
    target = REPO / "cookiecutter.json"
    wanted = render(template_rules.load_table())
    if args.check:
        if target.read_text(encoding="utf-8") != wanted:
            print(
                "cookiecutter.json is out of date with compat.yaml: run python scripts/sync_cookiecutter_json.py",
                file=sys.stderr,
            )
            return 1
        return 0
    target.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
