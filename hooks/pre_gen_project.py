"""pre_gen_project hook: refuse impossible or unsafe answers before anything is written.

Each refusal names the field, the value, why and what would work. Exiting non-zero
makes cookiecutter delete the (still empty) project directory, so nothing is left behind.
"""

import json
import sys

# Answers are read as data, never pasted into code (a quote in a name cannot break this).
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

sys.path.insert(0, json.loads(r'''{{ template_rules_dir | tojson }}'''))

import template_rules  # noqa: E402


def main() -> int:
    problems = template_rules.validate(ANSWERS)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(
            f"\nNothing was generated ({len(problems)} answer(s) refused). "
            "Run cookiecutter again with the answers fixed; `cookiecutter --replay` re-asks nothing you already answered.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
