"""The READMEs' commands are the tested ones, in English and Korean alike.

Every ```` ```bash <key> ```` block of the template's README and of the project's README
is run by a test that asks for it by key (`readme_block(path, key)`): the project's on a
real Docker engine (test_docker.py), its update commands with cruft (test_update.py),
its host self-test in a fresh venv (test_gpu_test.py), the quick start here. The Korean
READMEs must hold exactly the same blocks, so running the English ones runs both."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TEMPLATE, copy_working_tree, template_rules

PROJECT_TEMPLATE = TEMPLATE / "{{cookiecutter.project_slug}}"
PROJECT_README = PROJECT_TEMPLATE / "README.md"
READMES = {
    "template": (TEMPLATE / "README.md", TEMPLATE / "README.ko.md"),
    "project": (PROJECT_TEMPLATE / "README.md", PROJECT_TEMPLATE / "README.ko.md"),
}
# A fenced block, possibly indented under a list item: its info string and its body.
FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.MULTILINE | re.DOTALL
)
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block, bodies dedented."""
    text = path.read_text(encoding="utf-8")
    return [(match["info"].strip(), textwrap.dedent(match["body"])) for match in FENCE.finditer(text)]


def runnable_blocks(path: Path) -> dict[str, list[str]]:
    """key -> command lines of every ```bash <key> block (full-line comments dropped)."""
    blocks: dict[str, list[str]] = {}
    for info, body in fenced_blocks(path):
        words = info.split()
        if words[:1] == ["bash"]:
            assert len(words) == 2, f"{path.name}: a bash block needs exactly one key: ```{info}"
            assert words[1] not in blocks, f"{path.name}: key {words[1]} used twice"
            blocks[words[1]] = [
                line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")
            ]
    return blocks


def readme_block(path: Path, key: str) -> list[str]:
    """The command lines of one runnable block: what a test runs."""
    return runnable_blocks(path)[key]


def keys_run_by_tests() -> set[str]:
    """Keys that some test asks for by name: a literal key given to readme_block(path, key),
    or to test_docker's run_block(key), which runs readme_block's lines."""
    calls = re.compile(r'(?:readme_block\([^\n]*?,\s*|run_block\()"([\w-]+)"\)')
    found: set[str] = set()
    for test_file in Path(__file__).parent.glob("test_*.py"):
        found |= set(calls.findall(test_file.read_text(encoding="utf-8")))
    return found


# The Korean quick start's one difference: its project's README is Korean too.
KOREAN_ANSWER = ' ANSWERS="readme_language=ko"'


@pytest.mark.parametrize("which", sorted(READMES))
def test_the_korean_readme_holds_the_same_commands_and_structure(which):
    english, korean = READMES[which]
    assert korean.is_file(), f"{korean.relative_to(TEMPLATE)} is missing"
    en, ko = english.read_text(encoding="utf-8"), korean.read_text(encoding="utf-8")
    as_in_english = [(info, body.replace(f"make project{KOREAN_ANSWER}", "make project"))
                     for info, body in fenced_blocks(korean)]  # fmt: skip
    assert as_in_english == fenced_blocks(english)
    for pattern in (r"^## ", r"^### ", r"^\|"):  # sections, subsections, table rows
        assert len(re.findall(pattern, ko, re.MULTILINE)) == len(re.findall(pattern, en, re.MULTILINE)), pattern
    assert re.findall(r"\]\((https?://[^)]+)\)", ko) == re.findall(r"\]\((https?://[^)]+)\)", en)
    # Jinja statements and expressions: the same ones, in the same order (the Korean build
    # table asks for its words in Korean).
    ko_statements = [statement.replace(', "ko")', ")") for statement in re.findall(r"{%.*?%}", ko, re.DOTALL)]
    assert ko_statements == re.findall(r"{%.*?%}", en, re.DOTALL)
    assert sorted(re.findall(r"{{.*?}}", ko, re.DOTALL)) == sorted(re.findall(r"{{.*?}}", en, re.DOTALL))
    assert len(HANGUL.findall(ko)) > 500 and not HANGUL.findall(en.replace("한국어", ""))
    assert "(README.md)" in ko and "(README.ko.md)" in en  # each links to the other


def test_every_runnable_readme_block_is_run_by_a_test():
    keys = set()
    for english, _ in READMES.values():
        keys |= set(runnable_blocks(english))
    assert keys, "no runnable blocks found"
    assert sorted(keys - keys_run_by_tests()) == []


def test_readme_blocks_are_parsed_as_written(tmp_path):
    """The parser the other tests rely on: indented blocks, keys, comments."""
    readme = tmp_path / "README.md"
    readme.write_text(
        "1. Step\n\n   ```bash first\n   make up   # start\n   # a note\n   make jupyter\n   ```\n\n```text\nnot run\n```\n"
    )
    assert runnable_blocks(readme) == {"first": ["make up   # start", "make jupyter"]}
    readme.write_text("```bash\nmake up\n```\n")
    with pytest.raises(AssertionError, match="needs exactly one key"):
        runnable_blocks(readme)


@pytest.mark.parametrize(
    ("language", "files"),
    [("en", {"README.md"}), ("ko", {"README.md"}), ("en+ko", {"README.md", "README.ko.md"})],
)
def test_the_project_readme_comes_in_the_chosen_language(bake, language, files):
    project = bake(readme_language=language).project_path
    assert {path.name for path in project.glob("README*")} == files
    readme = (project / "README.md").read_text()
    assert bool(HANGUL.search(readme.replace("한국어", ""))) is (language == "ko")
    assert ("README.ko.md" in readme) is (language == "en+ko")
    if language == "en+ko":
        korean = (project / "README.ko.md").read_text()
        assert HANGUL.search(korean) and "(README.md)" in korean
        assert [body for _, body in fenced_blocks(project / "README.ko.md")] == [
            body for _, body in fenced_blocks(project / "README.md")
        ]


def test_the_quick_start_is_what_ci_runs():
    """`make test` is the second quick-start command and the command CI runs."""
    generate, run_tests = (line.split("#")[0].strip() for line in readme_block(TEMPLATE / "README.md", "quick-start"))
    assert run_tests == "make test"
    ci = (TEMPLATE / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
    assert generate == "make project"


def test_make_test_leaves_the_docker_tier_until_asked(tmp_path):
    """The quick start's `make test` on a machine with an engine: the Docker tier is
    skipped, saying how to run it, and no docker command runs (a stand-in records any)."""
    calls = tmp_path / "docker-calls"
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\necho "$*" >>"{calls}"\nexit 1\n')  # an engine that is down
    docker.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("REQUIRE_DOCKER", "RUN_DOCKER_TESTS")}
    env["DOCKER"] = str(docker)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_docker_user.py",
         f"--basetemp={tmp_path / 'run'}"],
        cwd=TEMPLATE, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" not in result.stdout and " skipped" in result.stdout
    assert "RUN_DOCKER_TESTS=1 make test runs it" in result.stdout
    assert not calls.exists()
    asked = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_docker_user.py",
         f"--basetemp={tmp_path / 'asked'}"],
        cwd=TEMPLATE, env={**env, "RUN_DOCKER_TESTS": "1"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    # Asked: the tier goes to the engine (this one does not answer, so it skips, saying so).
    assert asked.returncode == 0 and "no Docker engine answers" in asked.stdout
    assert calls.read_text().splitlines()[0] == "info"


@pytest.mark.network
def test_the_quick_start_generates_a_project_on_a_fresh_clone(tmp_path):
    """`make project` in a fresh clone: it installs the pinned tools, then generates."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(TEMPLATE), str(clone)], check=True)
    copy_working_tree(clone)  # the working tree, committed or not
    generate = readme_block(TEMPLATE / "README.md", "quick-start")[0].split("#")[0].strip()
    result = subprocess.run(generate, shell=True, cwd=clone, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    project = clone / "build" / "gpu_lab"
    assert (project / "README.md").is_file() and (project / ".env").is_file()
    assert f"Project written to {project}" in result.stdout
    assert "\n  cd build/gpu_lab\n" in result.stdout  # where it is from the clone, not `cd gpu_lab`


@pytest.mark.parametrize(("output", "shown"), [("build", "build/gpu_lab"), ("{outside}", "{outside}/gpu_lab")])
def test_the_next_steps_cd_into_the_project_from_where_cookiecutter_ran(tmp_path, output, shown):
    """The printed `cd` works in the shell that ran cookiecutter: relative below its
    folder, the full path elsewhere."""
    here, outside = tmp_path / "here", tmp_path / "outside"
    here.mkdir()
    output, shown = output.format(outside=outside), shown.format(outside=outside)
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    result = subprocess.run(
        [str(cookiecutter), "--no-input", "-o", output, str(TEMPLATE)],
        cwd=here, env={**os.environ, "PWD": str(here)}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [cd] = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("cd ")]
    assert cd == f"cd {shown}"
    assert (here / shown / "Makefile").is_file()


# A web address run on into Hangul: Markdown viewers link the Hangul too, and the link 404s.
URL_INTO_HANGUL = re.compile(r"https?://[^\s<>()`\"'\]]*[\uac00-\ud7a3]")


def test_no_address_in_a_korean_readme_runs_on_into_hangul(bake):
    """Every CUDA build of both frameworks (the PyTorch index address of the builds that
    come without a lock included), in the Korean project README, and the template's."""
    table = template_rules.load_table()
    for framework, facts in table["frameworks"].items():
        for cuda in facts["cuda"]:
            readme = bake(framework=framework, cuda_version=cuda, readme_language="ko").project_path / "README.md"
            assert URL_INTO_HANGUL.findall(readme.read_text(encoding="utf-8")) == [], (framework, cuda)
    assert URL_INTO_HANGUL.findall((TEMPLATE / "README.ko.md").read_text(encoding="utf-8")) == []


def user_shell() -> dict[str, str]:
    """The environment of a user's shell: not that of `make test`, whose make would print
    "Entering directory" lines in the make the test runs."""
    return {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def older_python() -> str | None:
    """A real Python older than 3.11 on this machine (Ubuntu 22.04 ships 3.10): one pyenv
    installed, or one on PATH, that runs."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [
        *sorted(map(str, pyenv.glob("3.10.*/bin/python3"))),
        *sorted(map(str, pyenv.glob("3.9.*/bin/python3"))),
    ]
    candidates += [found for found in map(shutil.which, ("python3.10", "python3.9")) if found]
    for python in candidates:
        ran = subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info >= (3, 11))"], capture_output=True,
                             check=False)  # fmt: skip
        if ran.returncode == 0:
            return python
    return None


def test_the_quick_start_on_an_older_python_says_in_one_line_how_to_get_a_newer_one(tmp_path):
    """`make project` with Ubuntu 22.04's Python 3.10: one line naming the version and the
    commands for 3.11, and no half-made .venv (issue #27)."""
    python = older_python()
    if python is None:
        pytest.skip("no Python older than 3.11 here (python3.10 on PATH, or pyenv's)")
    shutil.copy(TEMPLATE / "Makefile", tmp_path / "Makefile")
    shutil.copy(TEMPLATE / "requirements-dev.txt", tmp_path / "requirements-dev.txt")
    result = subprocess.run(["make", "project", f"PYTHON={python}"], cwd=tmp_path, env=user_shell(), capture_output=True, text=True,
                            check=False)  # fmt: skip
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("make: ***")]
    assert f"is Python {version}, and the template's tools need 3.11 or newer" in line
    assert line.endswith("sudo apt install python3.11 python3.11-venv, then make project PYTHON=python3.11")
    assert not (tmp_path / ".venv").exists()


def test_the_korean_quick_start_writes_a_korean_project_and_answers_are_checked(tmp_path):
    """README.ko's `make project` line (issue #27): the project's README is Korean. A word
    of ANSWERS that is no question, or no choice of it, stops before anything is written,
    naming it (cookiecutter itself ignores unknown keys)."""
    generate = readme_block(TEMPLATE / "README.ko.md", "quick-start")[0].split("#")[0].strip()
    assert generate.endswith(KOREAN_ANSWER)
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    made = subprocess.run(f"{generate} OUTPUT_DIR={tmp_path / 'out'}", shell=True, cwd=TEMPLATE, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    readme = (tmp_path / "out" / "gpu_lab" / "README.md").read_text(encoding="utf-8")
    assert len(HANGUL.findall(readme)) > 500
    for answers, named in (("readme_langage=ko", "'readme_langage' is not a question of the template"),
                           ("readme_language=kr", "readme_language='kr' is not one of its choices: en, ko, en+ko"),
                           ("ko", "'ko' is not key=value")):  # fmt: skip
        refused = subprocess.run(["make", "project", f"ANSWERS={answers}", f"OUTPUT_DIR={tmp_path / answers}"],
                                 cwd=TEMPLATE, env=env, capture_output=True, text=True, check=False)  # fmt: skip
        assert refused.returncode != 0 and f"ANSWERS: {named}" in refused.stderr, refused.stderr
        assert not (tmp_path / answers).exists()


# English prose: three or more Latin-script words in a row, separated by spaces only (a
# list of names, "RHEL, Rocky, Alma", is no sentence).
LATIN_PROSE = re.compile(r"[A-Za-z][A-Za-z'’-]*(?: [A-Za-z][A-Za-z'’-]*){2,}")
# Names that stay as they are in Korean text: products and what an editor's menu says.
KEPT_NAMES = ("NVIDIA Container Toolkit", "Docker Desktop", "VS Code", "Dev Containers", "Reopen in Container")


def latin_prose(markdown: str) -> list[str]:
    """English sentences left in Korean Markdown: outside code blocks and code spans,
    link targets, web addresses, quoted messages (the exact words a tool prints) and names."""
    text = FENCE.sub("", markdown)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<https?://[^>]*>|https?://\S+", "", text)
    text = re.sub(r'"[^"\n]*"', "", text)
    for name in KEPT_NAMES:
        text = text.replace(name, "")
    return LATIN_PROSE.findall(text)


def test_a_korean_project_speaks_korean_in_its_readme_next_steps_and_make_help(bake):
    """Every Korean project README variant (both frameworks, every manager, every CUDA
    build: the build table included) has no English prose outside code, names and
    commands; the message after generation and `make help` are Korean too (issue #27)."""
    table = template_rules.load_table()
    for framework, facts in table["frameworks"].items():
        for manager in ("uv", "pip", "poetry"):
            for cuda in facts["cuda"]:
                baked = bake(framework=framework, cuda_version=cuda, dependency_manager=manager, readme_language="ko")
                readme = (baked.project_path / "README.md").read_text(encoding="utf-8")
                assert latin_prose(readme) == [], (framework, manager, cuda)
    assert "다음 단계:" in baked.output and "Next steps" not in baked.output
    assert latin_prose(baked.output.split("다음 단계:")[1].split("Jupyter:")[0]) == []
    shown = subprocess.run(
        ["make", "help"], cwd=baked.project_path, env=user_shell(), capture_output=True, text=True, check=True
    ).stdout
    lines = shown.strip().splitlines()
    assert len(lines) == len(template_rules.MAKE_HELP["ko"])
    assert all(HANGUL.search(line) for line in lines) and latin_prose(shown) == []
    english = bake(readme_language="en+ko")
    assert "Next steps:" in english.output
    shown = subprocess.run(
        ["make", "help"], cwd=english.project_path, env=user_shell(), capture_output=True, text=True, check=True
    )
    assert "make up         Build if needed and start the environment in the background" in shown.stdout
    assert latin_prose((TEMPLATE / "README.ko.md").read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("cuda", ["13.0", "12.6"])
def test_the_first_run_numbers_its_steps_and_an_index_build_starts_with_make_lock(bake, cuda):
    """A build from PyTorch's index (12.6) comes without a lock: writing it is a numbered
    first-run step before `make up`, in both languages; the other steps follow on."""
    project = bake(cuda_version=cuda, readme_language="en+ko").project_path
    shipped = template_rules.lock_is_shipped({"framework": "pytorch", "cuda_version": cuda, "dependency_manager": "uv",
                                              "python_version": "3.12"})  # fmt: skip
    for name, heading in (("README.md", "## First run"), ("README.ko.md", "## 처음 실행하기")):
        section = (project / name).read_text(encoding="utf-8").split(heading)[1].split("\n## ")[0]
        steps = re.findall(r"^(\d+)\. (.*)$", section, re.MULTILINE)
        assert [int(number) for number, _ in steps] == list(range(1, len(steps) + 1)), name
        assert len(steps) == (5 if shipped else 6), name
        lock_step = [text for _, text in steps if "lock" in text]
        assert bool(lock_step) is not shipped and (shipped or steps[2][1] == lock_step[0]), name


def test_the_korean_readmes_keep_to_the_glossary(bake):
    """One Korean word per concept and one politeness level (words.GLOSSARY): no variant it
    replaces in the prose of the template's README.ko or of a Korean project's README."""
    readmes = {"template": (TEMPLATE / "README.ko.md").read_text(encoding="utf-8")}
    for framework in ("pytorch", "tensorflow"):
        project = bake(framework=framework, cuda_version="12.6" if framework == "pytorch" else "12.5",
                       readme_language="ko").project_path  # fmt: skip
        readmes[framework] = (project / "README.md").read_text(encoding="utf-8")
    for which, text in readmes.items():
        prose = re.sub(r"`[^`]*`", "", FENCE.sub("", text))  # a code span may wrap
        for word, variants in template_rules.GLOSSARY.items():
            found = [variant for variant in variants if variant in prose]
            assert found == [], f"{which}: {found} where the glossary says {word}"
