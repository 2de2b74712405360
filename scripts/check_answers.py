"""`make project ANSWERS="key=value ..."`: each word must answer one of the template's
questions, since cookiecutter silently ignores a key it does not know (a typo would
generate the defaults). Values are checked by cookiecutter and the pre-generation hook.

    python scripts/check_answers.py readme_language=ko framework=tensorflow
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent


def questions() -> dict:
    """The template's questions and their defaults (a list: the choices)."""
    context = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    return {key: value for key, value in context.items() if not key.startswith("_")}


def problems(words: list[str]) -> list[str]:
    known = questions()
    found = []
    for word in words:
        key, equals, value = word.partition("=")
        if not equals:
            found.append(f'ANSWERS: {word!r} is not key=value (e.g. ANSWERS="readme_language=ko")')
        elif key not in known:
            found.append(f"ANSWERS: {key!r} is not a question of the template; the questions: {', '.join(known)}")
        elif isinstance(known[key], list) and value not in known[key]:
            found.append(f"ANSWERS: {key}={value!r} is not one of its choices: {', '.join(known[key])}")
    return found


def main(argv: list[str]) -> int:
    for problem in problems(argv):
        print(problem, file=sys.stderr)
    return 1 if problems(argv) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
