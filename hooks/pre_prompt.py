"""pre_prompt hook: default uid/gid to the generating user's, before any question.

Cookiecutter runs this in a temporary copy of the template, so rewriting
cookiecutter.json here changes only this run's defaults. Offline and fast.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import template_rules  # noqa: E402


def main() -> None:
    path = Path("cookiecutter.json")
    context = json.loads(path.read_text(encoding="utf-8"))
    context["uid"], context["gid"] = template_rules.host_ids()
    path.write_text(json.dumps(context, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
