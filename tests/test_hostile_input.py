"""Hostile input and regeneration: what a security review tried, by class.

- refusals end with our message, say what works, and leave nothing on disk;
- answers that would run as Jinja, or derived values given by hand, are refused before
  anything is evaluated or written;
- every accepted project name or slug, across Unicode, gives files that parse (a
  property test), and every refused one names its field;
- as root, generation never writes or changes owners through a link, and regeneration
  keeps the user's files, owners and ids.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

import json5
import pytest
import yaml
from conftest import TEMPLATE, copy_working_tree, template_rules, tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COOKIECUTTER = [sys.executable, "-m", "cookiecutter"]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="generation as root (CI runs as root)")


def generate(output: Path, *answers: str, overwrite: bool = False, env: dict | None = None):
    """`cookiecutter TEMPLATE --no-input -o OUTPUT answers...`, as a user runs it."""
    command = [*COOKIECUTTER, str(TEMPLATE), "--no-input", "-o", str(output), *answers]
    if overwrite:
        command.append("--overwrite-if-exists")
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)


def last_lines(text: str, count: int = 2) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


# ---------------------------------------------------------------------------------------
# Messages: ours last, and what works
# ---------------------------------------------------------------------------------------


def test_a_refusal_is_the_last_thing_on_screen_and_its_command_line_works(tmp_path):
    refused = generate(tmp_path, "uid=0501", "project_name=Line Lab", "framework=pytorch")
    assert refused.returncode == 1
    output = refused.stdout + refused.stderr
    assert "ERROR: uid = '0501': a leading zero makes some tools read the number as octal\n  Fix: answer 501" in output
    assert "Traceback" not in output and "--replay" not in output
    message, command = last_lines(output)
    assert message.startswith(
        "Nothing was generated (1 refused). Run it again (cookiecutter or cruft create) and answer uid"
    )
    # The line keeps every other answer; with the fix added it generates the project.
    assert command.startswith("  cookiecutter <template> project_name='Line Lab' ")
    kept = shlex.split(command)[2:]
    assert "framework=pytorch" in kept and not any(answer.startswith("uid=") for answer in kept)
    assert generate(tmp_path, *kept, "uid=501").returncode == 0
    assert (tmp_path / "line_lab" / "Makefile").is_file()


def test_cruft_create_ends_with_the_refusal_too(tmp_path):
    template = tmp_path / "template"
    copy_working_tree(template)
    subprocess.run(["git", "init", "-q"], cwd=template, check=True)
    subprocess.run(["git", "add", "-A"], cwd=template, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"], cwd=template, check=True)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            tool("cruft"),
            "create",
            str(template),
            "--no-input",
            "--output-dir",
            str(out),
            "--extra-context",
            '{"uid": "33"}',
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "ERROR: uid = '33': uids 1 to 99 are system accounts" in output
    assert "Traceback" not in output
    assert last_lines(output, 2)[0].startswith("Nothing was generated (1 refused).")
    assert not out.exists() or not any(out.iterdir())


def test_derived_values_cannot_be_given_on_the_command_line(tmp_path):
    """cookiecutter lets the command line set private variables; the Dockerfile would then
    build FROM whatever was given. Refused for the first and for the last of them."""
    for given_value in ("__base_image=evil.example/cuda:latest", "__wheel_index_name=evil"):
        result = generate(tmp_path, given_value)
        field = given_value.partition("=")[0]
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert f"ERROR: {field} = '{given_value.partition('=')[2]}': the template derives this value" in output
        assert f"leave out {field}" in output
        assert list(tmp_path.iterdir()) == []


def test_jinja_in_an_answer_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    output_dir = tmp_path / "out"
    for answer in (f"project_name=Lab {payload}", f"project_slug={payload}", f"gid={payload}"):
        result = generate(output_dir, answer)
        field = answer.partition("=")[0]
        assert result.returncode == 1
        assert f"ERROR: {field} = " in result.stderr + result.stdout
        assert "it holds Jinja syntax" in result.stderr + result.stdout
        assert not marker.exists(), "the answer was evaluated"
        assert not output_dir.exists() or list(output_dir.iterdir()) == []


def test_jinja_in_a_replayed_answer_is_refused_by_the_hook(tmp_path):
    """A replay file is not rendered: the pre-generation hook refuses what it holds."""
    baked = generate(tmp_path / "first", "project_name=Replay Lab")
    assert baked.returncode == 0
    record = json.loads((tmp_path / "first" / "replay_lab" / ".cruft.json").read_text())
    context = {key: value for key, value in record["context"]["cookiecutter"].items() if not key.startswith("_")}
    context["project_name"] = "Replay {{ 6 * 7 }}"
    replay = tmp_path / "replay.json"
    # As cookiecutter writes it: the answers and the values derived from them.
    derived = {f"__{key}": value for key, value in template_rules.derive(context).items()}
    replay.write_text(json.dumps({"cookiecutter": {**context, **derived, "_template": str(TEMPLATE)}}))
    result = subprocess.run(
        [*COOKIECUTTER, str(TEMPLATE), "--replay-file", str(replay), "-o", str(tmp_path / "second")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "ERROR: project_name = 'Replay {{ 6 * 7 }}': it holds Jinja syntax" in result.stderr
    assert not (tmp_path / "second" / "replay_lab").exists()


def test_macos_ids_are_accepted(bake):
    baked = bake(uid=501, gid=20)
    assert baked.exit_code == 0, baked.output
    env = (baked.project_path / ".env").read_text()
    assert "USER_UID=501\n" in env and "USER_GID=20\n" in env


def test_every_importable_module_of_the_lock_is_refused_as_a_slug():
    base = {
        "project_name": "x", "framework": "pytorch", "cuda_version": "13.0", "python_version": "3.12",
        "jupyter_host_port": "18888", "jupyter_container_port": "8888", "uid": "1000", "gid": "1000",
        "dependency_manager": "uv", "readme_language": "en",
    }  # fmt: skip
    for framework, cuda in (("pytorch", "13.0"), ("tensorflow", "12.5")):
        modules = template_rules.importable_modules(framework)
        assert {"numpy", "yaml", "jupyter", "ipykernel", "matplotlib", "nvidia"} <= set(modules)
        for module in modules:
            if template_rules.SLUG_RE.match(module):
                problems = template_rules.validate({**base, "framework": framework, "cuda_version": cuda,
                                                    "project_slug": module})  # fmt: skip
                assert any(problem.field == "project_slug" for problem in problems), module


# ---------------------------------------------------------------------------------------
# Every accepted name gives files that parse; every refused one names its field
# ---------------------------------------------------------------------------------------

NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=24
) | st.sampled_from(["Emoji 🚀 Lab", 'Quote " Lab', "Back\\slash", "$(id) `id`", "a: b # c", "{{ 7*7 }}", "Ｆｕｌｌ"])
SLUGS = st.none() | st.text(alphabet="abz09_ﬁ", min_size=1, max_size=12) | st.sampled_from(["numpy", "lab__x", "x_"])


def parse_every_file(project: Path) -> None:
    tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    for name in ("compose.yaml", "compose.gpu.yaml", ".hadolint.yaml"):
        yaml.safe_load((project / name).read_text(encoding="utf-8"))
    for name in (".cruft.json", "docker/kernel.json", "docker/lab-overrides.json", "notebooks/gpu_check.ipynb"):
        json.loads((project / name).read_text(encoding="utf-8"))
    json5.loads((project / ".devcontainer/devcontainer.json").read_text(encoding="utf-8"))
    make = subprocess.run(["make", "-n", "help"], cwd=project, capture_output=True, text=True, check=False)
    assert make.returncode == 0, make.stderr
    lint = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=project, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, slug=SLUGS)
def test_any_name_and_slug_gives_a_project_that_parses_or_a_refusal_naming_its_field(
    name, slug, _cookiecutter_config_file
):
    from cookiecutter.main import cookiecutter

    answers = {"project_name": name} if slug is None else {"project_name": name, "project_slug": slug}
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch)
        try:
            project = Path(
                cookiecutter(
                    str(TEMPLATE),
                    no_input=True,
                    extra_context=answers,
                    output_dir=str(output),
                    config_file=str(_cookiecutter_config_file),
                )
            )
        except Exception as refused:  # noqa: BLE001 - a refusal is one of the two outcomes
            message = str(refused)
            assert "project_name = " in message or "project_slug = " in message, message
            assert list(output.iterdir()) == []
            return
        parse_every_file(project)
        toml = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
        assert toml["project"]["description"] == f"Development environment for {name}"


# ---------------------------------------------------------------------------------------
# Links and regeneration, as root
# ---------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Owner, mode and content of everything under root (links as links)."""
    state = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(root))] = (info.st_uid, info.st_gid, info.st_mode, content)
    return state


@pytest.fixture
def decoy(tmp_path) -> Path:
    """Files outside the project that a generation must never touch."""
    root = tmp_path / "decoy"
    (root / "inner").mkdir(parents=True)
    (root / "secret.txt").write_text("not yours\n")
    (root / "inner" / "gpu_check.ipynb").write_text("{}\n")
    (root / "Makefile").write_text("decoy:\n")
    for path in [root, *root.rglob("*")]:
        os.lchown(path, 777, 778)
    (root / "secret.txt").chmod(0o640)
    return root


IDS = ("uid=4321", "gid=4321")


def plant(project: Path, decoy: Path, case: str) -> str:
    """Put a link of the given kind into an existing project; returns the path a refusal names."""
    if case == "src":
        for child in (project / "src").iterdir():
            subprocess.run(["rm", "-rf", str(child)], check=True)
        (project / "src").rmdir()
        (project / "src").symlink_to(decoy)
    elif case == "data":
        subprocess.run(["rm", "-rf", str(project / "data")], check=True)
        (project / "data").symlink_to(decoy / "inner")
    elif case == "notebook":
        (project / "notebooks" / "gpu_check.ipynb").unlink()
        (project / "notebooks" / "gpu_check.ipynb").symlink_to(decoy / "inner" / "gpu_check.ipynb")
        return "notebooks/gpu_check.ipynb"
    elif case == "env":
        (project / ".env").unlink()
        (project / ".env").symlink_to(decoy / "secret.txt")
        return ".env"
    elif case == "docker":
        subprocess.run(["rm", "-rf", str(project / "docker")], check=True)
        (project / "docker").symlink_to(decoy)
    elif case == "hardlink":
        (project / "Makefile").unlink()
        os.link(decoy / "Makefile", project / "Makefile")
        return "Makefile"
    elif case == "starter":
        # Staged files generation would move into place: a link to a file outside.
        (project / ".starter").mkdir()
        (project / ".starter" / "compose.gpu.yaml").symlink_to(decoy / "secret.txt")
        return ".starter"
    return case


@as_root
@pytest.mark.parametrize("case", ["src", "data", "notebook", "env", "docker", "hardlink", "starter"])
def test_regeneration_as_root_never_writes_through_a_link(tmp_path, decoy, case):
    out = tmp_path / "out"
    assert generate(out, *IDS).returncode == 0
    project = out / "gpu_lab"
    named = plant(project, decoy, case)
    before = snapshot(decoy)
    result = generate(out, *IDS, overwrite=True)
    assert result.returncode == 1
    assert f"ERROR: {named} = '{project / named}'" in result.stderr
    assert snapshot(decoy) == before


@as_root
def test_a_project_folder_that_is_a_link_is_refused(tmp_path, decoy):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu_lab").symlink_to(decoy)
    before = snapshot(decoy)
    result = generate(out, *IDS, overwrite=True)
    assert result.returncode == 1
    assert f"ERROR: project folder = '{out / 'gpu_lab'}': it is a symbolic link (to {decoy})" in result.stderr
    assert snapshot(decoy) == before


@as_root
def test_regeneration_keeps_the_users_files_and_their_owners(tmp_path):
    out = tmp_path / "out"
    assert generate(out, *IDS).returncode == 0
    project = out / "gpu_lab"
    package = project / "src" / "gpu_lab" / "__init__.py"
    notebook = project / "notebooks" / "gpu_check.ipynb"
    package.write_text("MINE = 1\n")
    notebook.write_text('{"mine": true}\n')
    # A file someone else wrote into data/ (another container user, a teammate).
    foreign = project / "data" / "shared.csv"
    foreign.write_text("a,b\n")
    os.chown(foreign, 5555, 5555)
    (project / "Makefile").unlink()
    env_before = (project / ".env").read_text()
    # Files of the user's that a teammate (uid 2000) wrote last: they keep that owner.
    theirs = [package, notebook, project / "data" / ".gitignore"]
    for path in theirs:
        os.chown(path, 2000, 2000)

    assert generate(out, *IDS, overwrite=True).returncode == 0
    assert package.read_text() == "MINE = 1\n" and notebook.read_text() == '{"mine": true}\n'
    assert (foreign.stat().st_uid, foreign.stat().st_gid) == (5555, 5555)
    assert (project / "Makefile").is_file() and (project / "Makefile").stat().st_uid == 4321
    assert (project / ".env").read_text() == env_before
    assert not (project / template_rules.STARTER_DIR).exists()
    assert [(path.stat().st_uid, path.stat().st_gid) for path in theirs] == [(2000, 2000)] * 3


@as_root
def test_regeneration_with_other_ids_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "out"
    assert generate(out, *IDS).returncode == 0
    project = out / "gpu_lab"
    before = snapshot(project)
    result = generate(out, "uid=4322", "gid=4321", overwrite=True)
    assert result.returncode == 1
    assert "ERROR: uid = '4322': this project's .env has USER_UID=4321" in result.stderr
    assert "answer uid=4321" in result.stderr
    assert snapshot(project) == before
    # Without .env, the owner of the user folders says who the project belongs to.
    (project / ".env").unlink()
    result = generate(out, "uid=4322", "gid=4322", overwrite=True)
    assert result.returncode == 1
    assert "src/ belongs to 4321:4321, and generation does not re-own the user's files" in result.stderr


@as_root
def test_the_hand_over_stops_at_a_link_planted_after_the_checks(tmp_path, decoy):
    """A link that appears between the pre-generation checks and the hand-over (a race)
    is not followed: nothing under it, whichever path leads there, changes owner."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "docker").symlink_to(decoy)
    (project / "src" / "mine.py").write_text("")
    before = snapshot(decoy)
    paths = [PurePosixPath(p) for p in ("docker", "docker/Makefile", "docker/inner/gpu_check.ipynb", "src")]
    template_rules.hand_over(project, paths, 4321, 4321)
    assert snapshot(decoy) == before
    assert (project / "src").stat().st_uid == 4321
    assert (project / "src" / "mine.py").stat().st_uid == 0  # not on the list: the user's own


@as_root
def test_a_link_in_place_of_the_env_files_temporary_is_replaced_not_followed(tmp_path, decoy):
    out = tmp_path / "out"
    assert generate(out, *IDS).returncode == 0
    project = out / "gpu_lab"
    (project / ".env").unlink()
    (project / "..env.tmp").symlink_to(decoy / "secret.txt")
    (project / ".compose.gpu.yaml.tmp").symlink_to(decoy / "Makefile")
    before = snapshot(decoy)
    result = generate(out, *IDS, overwrite=True)
    assert result.returncode == 0, result.stderr
    assert snapshot(decoy) == before
    env = project / ".env"
    assert not env.is_symlink() and env.stat().st_uid == 4321 and "JUPYTER_TOKEN=" in env.read_text()


@as_root
def test_a_root_owned_user_folder_is_refused_with_a_fix_that_works(tmp_path):
    """Docker created data/ as root (the README's own trouble case): the fix is the chown,
    not answering root's ids."""
    out = tmp_path / "out"
    assert generate(out, *IDS).returncode == 0
    project = out / "gpu_lab"
    (project / ".env").unlink()
    os.chown(project / "data", 0, 0)
    result = generate(out, *IDS, overwrite=True)
    assert result.returncode == 1
    assert "data/ belongs to 0:0" in result.stderr
    assert "give the folders to the project's user first: sudo chown -R 4321:4321 src notebooks data cache" in (
        result.stderr
    )
    assert "answer uid=0" not in result.stderr


def test_an_env_file_that_is_not_utf8_is_refused_before_regeneration(tmp_path):
    out = tmp_path / "out"
    assert generate(out).returncode == 0
    project = out / "gpu_lab"
    makefile = (project / "Makefile").read_bytes()
    with open(project / ".env", "ab") as env:
        env.write(b"# caf\xe9\n")
    (project / "Makefile").write_text("mine\n")
    result = generate(out, overwrite=True)
    assert result.returncode == 1
    assert "ERROR: .env = " in result.stderr and "is not UTF-8" in result.stderr
    assert (project / "Makefile").read_text() == "mine\n" and makefile != b"mine\n"  # nothing rewritten


def test_generation_leaves_no_bytecode_behind(tmp_path):
    """The hooks load the project's docker/setup_env.py: as root they would leave a
    root-owned __pycache__ in the user's project."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    for stale in (TEMPLATE / "hooks").rglob("__pycache__"):  # from runs before this rule
        shutil.rmtree(stale)
    assert generate(tmp_path, env=env).returncode == 0
    assert list((tmp_path / "gpu_lab").rglob("__pycache__")) == []
    assert list((TEMPLATE / "{{cookiecutter.project_slug}}").rglob("__pycache__")) == []
    assert list((TEMPLATE / "hooks").rglob("__pycache__")) == []


def test_nvidia_smi_output_that_is_not_utf8_does_not_stop_generation(bake, tmp_path, monkeypatch):
    from conftest import fake_nvidia_smi

    fake_nvidia_smi(tmp_path, monkeypatch, r"printf '\377\376535.86\200, 8.6\n'")
    assert template_rules.host_gpus() is None
    baked = bake(cuda_version="13.0")
    assert baked.exit_code == 0, baked.output
    assert "Traceback" not in baked.output


def test_relock_renders_a_combination_whose_lock_is_not_shipped_yet(tmp_path, monkeypatch):
    """The answers are checked while cookiecutter renders them; scripts/relock.py renders
    a combination to write its first lock, so that check leaves the missing lock to the
    hook."""
    import template_jinja

    sys.path.insert(0, str(TEMPLATE / "scripts"))
    import relock

    monkeypatch.setattr(template_rules.table, "LOCKS_DIR", tmp_path / "no-locks")
    monkeypatch.setattr(template_jinja, "load_rules", lambda: template_rules)
    relock.render(relock.parse_key("pytorch-cu130-py3.12-pip"), tmp_path / "out", ["requirements.in"])
    assert "torch==" in (tmp_path / "out" / "requirements.in").read_text()
    answers = {**relock.parse_key("pytorch-cu130-py3.12-pip"), "project_name": "x", "project_slug": "x",
               "jupyter_host_port": "1", "jupyter_container_port": "8888", "uid": "1000", "gid": "1000",
               "readme_language": "en"}  # fmt: skip
    assert [problem.why for problem in template_rules.validate(answers)] == [
        "this combination is not built yet in this version of the template (no lock is shipped for it)"
    ]
