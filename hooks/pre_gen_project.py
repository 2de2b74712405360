"""pre_gen_project hook: refuse impossible or unsafe answers before anything is written.

Each refusal names the field, the value, why and what would work. Exiting non-zero
makes cookiecutter delete the (still empty) project directory, so nothing is left behind.
"""

import json
import sys

# Answers are read as data, never pasted into code (a quote in a name cannot break this).
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# A JSON string starts and ends with '"', so single triple quotes hold it.
RULES_DIR = json.loads(r'''{{ template_rules_dir | tojson }}''')  # fmt: skip
sys.path.insert(0, RULES_DIR)

import template_rules


def main() -> int:
    problems = template_rules.validate(ANSWERS)
    if not problems:
        for note in template_rules.host_notes(ANSWERS, template_rules.host_gpus()):
            print(note, file=sys.stderr)
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
