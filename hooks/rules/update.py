"""Where the project came from, for `cruft update`: the template's address and commit,
and the project's .cruft.json.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .table import REPO_DIR, UPDATE_SKIP


def template_commit(repo_dir: Path = REPO_DIR) -> str:
    """The template's git commit, or "" where it is not a git checkout (a zip download)."""
    git = shutil.which("git")
    # Only the template's own checkout counts, not a repository it happens to sit in.
    if not git or not (repo_dir / ".git").exists():
        return ""
    try:
        result = subprocess.run(
            [git, "-C", str(repo_dir), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def template_address(given: str, repo_dir: Path = REPO_DIR) -> str:
    """What `cruft update` clones: the URL the user gave, with cookiecutter's gh:/gl:/bb:
    abbreviations expanded, or this checkout's absolute path for a local template."""
    from cookiecutter.config import BUILTIN_ABBREVIATIONS
    from cookiecutter.repository import expand_abbreviations, is_repo_url

    expanded = expand_abbreviations(given, BUILTIN_ABBREVIATIONS)
    return expanded if is_repo_url(expanded) else str(repo_dir)


def cruft_record(answers: dict, repo_dir: Path = REPO_DIR) -> dict:
    """The project's .cruft.json: template address and commit, the answers, the skip list.

    The answers are the questions only: cruft passes them back as answers on update, so
    derived values (the private ``__`` variables) are derived again by the new template.
    """
    questions = {key: value for key, value in answers.items() if not key.startswith("_")}
    address = template_address(str(answers.get("_template", "")), repo_dir)
    commit = template_commit(repo_dir)
    return {
        "template": address,
        "commit": commit,
        "checkout": None,
        "context": {"cookiecutter": {**questions, "_template": address, "_commit": commit}},
        "directory": None,
        "skip": UPDATE_SKIP,
    }
