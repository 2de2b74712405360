"""pre_gen_project hook: refuse impossible or unsafe answers, and unsafe places to write,
before anything is written.

The answers were checked already, when cookiecutter rendered the first derived value
(hooks/rules/jinja.py), with our message as the last thing on screen; they are checked
again here for what that cannot see: a replayed context, derived values given on the
command line, and the project folder (links, the ids of a project being regenerated).
Each refusal names the field or path, the value, why and what would work. Exiting
non-zero makes cookiecutter delete the project folder if it created it: nothing is left.
"""

import json
import os
import sys
from pathlib import Path

# Answers are read as data, never pasted into code (a quote in a name cannot break this).
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# A JSON string starts and ends with '"', so single triple quotes hold it.
RULES_DIR = json.loads(r'''{{ template_rules_dir | tojson }}''')  # fmt: skip
sys.path.insert(0, RULES_DIR)
# No __pycache__ in the template's checkout (it may be shared, or root may run this).
sys.dont_write_bytecode = True

import template_rules


def main() -> int:
    problems = template_rules.validate(ANSWERS)
    if not problems:
        # Where cookiecutter writes: the folder as named, not as resolved (cwd is resolved).
        # (cruft renders into a folder of its own and gives no _output_dir.)
        output = ANSWERS.get("_output_dir")
        project = Path(output) / ANSWERS["project_slug"] if output else Path.cwd()
        problems = template_rules.link_problems(project, ANSWERS["project_slug"])
        as_root = getattr(os, "geteuid", lambda: -1)() == 0
        problems = problems or template_rules.regeneration_problems(project, ANSWERS, as_root)
    if problems:
        print(template_rules.refusal(problems, ANSWERS), file=sys.stderr)
        return 1
    for note in template_rules.host_notes(ANSWERS, template_rules.host_gpus()):
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
