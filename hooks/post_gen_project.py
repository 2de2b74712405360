"""post_gen_project hook: finish the project on disk. Offline, fast and idempotent:
running it again over the same project changes nothing the user made.

Reads as a decision table: main() calls one small named helper per decision.
"""

import json
import os
import shlex
import sys
from pathlib import Path, PurePosixPath

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# A JSON string starts and ends with '"', so single triple quotes hold it.
RULES_DIR = json.loads(r'''{{ template_rules_dir | tojson }}''')  # fmt: skip
sys.path.insert(0, RULES_DIR)
# No __pycache__ in the template's checkout (it may be shared, or root may run this).
sys.dont_write_bytecode = True

import template_rules

PROJECT = Path.cwd()
SLUG = ANSWERS["project_slug"]


def remove(*names: str) -> None:
    for name in names:
        path = PROJECT / name
        if path.is_file():
            path.unlink()


def remove_other_managers_files(manager: str) -> None:
    """Keep only the chosen dependency manager's input and lock files."""
    keep = set(template_rules.MANAGER_FILES[manager])
    for other, files in template_rules.MANAGER_FILES.items():
        if other != manager:
            remove(*(name for name in files if name not in keep))


def keep_readme_languages(language: str) -> None:
    """README.md is rendered in English and README.ko.md in Korean; keep what was asked."""
    korean = PROJECT / "README.ko.md"
    if language == "en":
        remove("README.ko.md")
    elif language == "ko" and korean.is_file():
        korean.replace(PROJECT / "README.md")


def remove_update_record_without_commit() -> bool:
    """.cruft.json needs the template's commit; a copy without git history has none, and
    a record without it would make `cruft update` fail. Returns True when kept."""
    record = PROJECT / ".cruft.json"
    if record.is_file() and not json.loads(record.read_text(encoding="utf-8"))["commit"]:
        record.unlink()
    return record.is_file()


def create_user_dirs() -> list[PurePosixPath]:
    """The bind-mounted folders, before Docker can create them as root. Returns what it
    created (folders, .gitignore files): what the user had stays as it is."""
    created = []
    for name in template_rules.USER_DIRS:
        if not (PROJECT / name).is_dir():
            (PROJECT / name).mkdir()
            created.append(PurePosixPath(name))
    for name in template_rules.UNTRACKED_DIRS:
        ignore = PROJECT / name / ".gitignore"
        if not os.path.lexists(ignore):
            ignore.write_text("# Contents stay on this machine: not for git.\n*\n!.gitignore\n", encoding="utf-8")
            created.append(PurePosixPath(name, ".gitignore"))
    return created


def write_env_file() -> tuple[bool, list[PurePosixPath]]:
    """.env from .env.example, as docker/setup_env.py writes it for a fresh clone (a new
    token; the GPU compose file only where Docker has the NVIDIA runtime; this clone's
    compose project and image names), with the ids and port answered, and the GPU and
    mounts files from it. Kept if it exists (its token is the user's): only keys it lacks
    are added. Returns whether .env was written, and the writable folders created."""
    # The project's own script: generation makes the choices a fresh clone's `make up` makes.
    setup = template_rules.load_module(PROJECT / "docker" / "setup_env.py", "_project_setup_env")
    answered = {
        "USER_UID": str(ANSWERS["uid"]),
        "USER_GID": str(ANSWERS["gid"]),
        "JUPYTER_HOST_PORT": str(ANSWERS["jupyter_host_port"]),
    }
    outcome = setup.ensure_env(answered)
    env = setup.read_env()
    setup.write_gpu_file(env)
    created, _ = setup.write_mounts_file(env)  # what it refuses, `make up` names
    return outcome == "created", [PurePosixPath(path.relative_to(PROJECT).as_posix()) for path in created]


def place_starter_files() -> list[PurePosixPath]:
    """The package's __init__.py and the first notebook, only where the user has none:
    regenerating keeps the user's versions. Returns the files placed."""
    return template_rules.place_starter_files(PROJECT, SLUG)


def what_generation_wrote(created: list[PurePosixPath], env_written: bool) -> list[PurePosixPath]:
    """The template's files (cookiecutter rewrites them all), the folders and files the
    hooks created, .env when it is new, and the GPU and mounts files (always rewritten)."""
    rendered = [path for path in template_rules.rendered_paths(SLUG) if path.parts[0] != template_rules.STARTER_DIR]
    written = [PurePosixPath(name) for name in ("compose.gpu.yaml", "compose.mounts.yaml")]
    written += [PurePosixPath(".env")] if env_written else []
    return [*rendered, *created, *written]


def hand_over_to_configured_user(paths: list[PurePosixPath], uid: int, gid: int) -> None:
    """When root generates the project for another user (sudo, a shared server), give
    what generation wrote to that user, as if they had generated it: the container user
    (same ids) must be able to write into the bind mounts. The user's own files keep
    their owners (the pre-generation hook made sure the ids agree with the project's)."""
    if getattr(os, "geteuid", lambda: -1)() != 0 or (uid, gid) == (0, 0):
        return
    template_rules.hand_over(PROJECT, paths, uid, gid)


def first_lock_note(lock_shipped: bool, language: str) -> str:
    """Builds from PyTorch's index come without a lock: say who writes it, before `make up`."""
    if lock_shipped:
        return ""
    lock = template_rules.MANAGER_FILES[ANSWERS["dependency_manager"]][1]
    note = template_rules.NOTES[language]["first_lock"]
    return note.format(lock=lock, cuda=ANSWERS["cuda_version"], index=ANSWERS["__wheel_index"])


def where_to_cd() -> str:
    """The project as the user reaches it from the folder they ran cookiecutter in (the
    shell's PWD, which the hook inherits): relative below it (`make project`:
    build/gpu_lab), else the full path."""
    start = os.environ.get("PWD", "")
    if os.path.isabs(start) and os.path.isdir(start):
        relative = os.path.relpath(PROJECT, start)
        if not relative.startswith(".."):
            return shlex.quote(relative)
    return shlex.quote(str(PROJECT))


def print_next_steps(env_written: bool, updatable: bool, lock_shipped: bool) -> None:
    """What to do next, in the language of the project's README (words.NEXT_STEPS)."""
    language = template_rules.spoken(ANSWERS["readme_language"])
    notes = template_rules.NOTES[language]
    shown = ([] if env_written else [notes["env_kept"]]) + ([] if updatable else [notes["no_record"]])
    print(
        template_rules.NEXT_STEPS[language].format(
            project=PROJECT,
            notes="".join(f"{note}\n" for note in shown),
            cd=where_to_cd(),
            first_lock=first_lock_note(lock_shipped, language),
            port=ANSWERS["jupyter_host_port"],
            min_driver=ANSWERS["__min_driver"],
            cuda=ANSWERS["cuda_version"],
        )
    )


def main() -> None:
    remove_other_managers_files(ANSWERS["dependency_manager"])
    keep_readme_languages(ANSWERS["readme_language"])
    updatable = remove_update_record_without_commit()
    created = create_user_dirs() + place_starter_files()
    env_written, folders = write_env_file()
    created += folders
    written = what_generation_wrote(created, env_written)
    hand_over_to_configured_user(written, int(ANSWERS["uid"]), int(ANSWERS["gid"]))
    print_next_steps(env_written, updatable, template_rules.lock_is_shipped(ANSWERS))


if __name__ == "__main__":
    main()
