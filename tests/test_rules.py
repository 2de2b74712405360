"""Unit tests of hooks/template_rules.py and of what is generated from compat.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import TEMPLATE, fake_nvidia_smi, template_rules, working_tree_files

TABLE = template_rules.load_table()
DEFAULT_ANSWERS = {
    "project_name": "GPU Lab",
    "project_slug": "gpu_lab",
    "framework": "pytorch",
    "cuda_version": "13.0",
    "python_version": "3.12",
    "jupyter_host_port": "18888",
    "jupyter_container_port": "8888",
    "uid": "1000",
    "gid": "1000",
    "dependency_manager": "uv",
    "readme_language": "en",
}


def test_defaults_are_valid():
    assert template_rules.validate(DEFAULT_ANSWERS) == []


def test_problem_message_names_field_value_and_fix():
    [problem] = template_rules.validate({**DEFAULT_ANSWERS, "jupyter_host_port": "70000"})
    text = str(problem)
    assert text.startswith("ERROR: jupyter_host_port = '70000': ")
    assert "Fix: answer e.g. 18888" in text


def test_derived_values_for_the_defaults():
    derived = template_rules.derive(DEFAULT_ANSWERS)
    cuda = TABLE["cuda"]["13.0"]
    assert derived == {
        "dist_name": "gpu-lab",
        "min_driver": TABLE["cuda_majors"]["13"]["min_driver"],
        "toolkit_driver": cuda["toolkit_driver"],
        "require_cuda": "cuda>=13.0",
        "base_image": f"nvidia/cuda:{cuda['image_version']}-base-ubuntu24.04",
        "requires_python": ">=3.12,<3.15,!=3.14.1",
        "lock_key": "pytorch-cu130-py3.12-uv",
        "wheel_index": "",
        "wheel_index_name": "",
    }


def test_derived_values_tolerate_invalid_answers():
    """Rendering cookiecutter.json must not crash before the hook can explain."""
    derived = template_rules.derive({**DEFAULT_ANSWERS, "cuda_version": "11.8", "framework": "jax"})
    assert derived["base_image"] == "" and derived["lock_key"] == ""


@pytest.mark.parametrize(
    ("uid", "gid", "expected"),
    [(501, 20, (501, 20)), (0, 0, (1000, 1000)), (1234, 0, (1234, 1000)), (65534, 65534, (1000, 1000))],
)
def test_host_ids(monkeypatch, uid, gid, expected):
    monkeypatch.setattr(os, "getuid", lambda: uid)
    monkeypatch.setattr(os, "getgid", lambda: gid)
    assert template_rules.host_ids() == expected


def test_host_ids_without_posix_ids(monkeypatch):
    monkeypatch.delattr(os, "getuid")
    assert template_rules.host_ids() == (1000, 1000)


def test_cookiecutter_json_is_generated_from_the_table():
    result = subprocess.run([sys.executable, "scripts/sync_cookiecutter_json.py", "--check"], cwd=TEMPLATE, check=False)
    assert result.returncode == 0, "run: python scripts/sync_cookiecutter_json.py"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # One line per GPU, the query nvidia-smi is asked.
        (
            '[ "$1" = --query-gpu=driver_version,compute_cap ] && printf "580.95.05, 9.0\\n580.95.05, 9.0\\n"',
            "580.95.05",
        ),
        # A driver before R510 has no compute_cap field: the driver alone.
        ('[ "$1" = --query-gpu=driver_version ] && echo 470.256.02 || exit 2', "470.256.02"),
        ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9', None),
        ('echo "No devices were found"', None),
    ],
)
def test_host_driver_reads_nvidia_smi(tmp_path, monkeypatch, body, expected):
    fake_nvidia_smi(tmp_path, monkeypatch, body)
    assert template_rules.host_driver() == expected


def test_host_driver_gives_up_on_a_hung_nvidia_smi(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "sleep 30")
    monkeypatch.setattr(template_rules.host, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    assert template_rules.host_driver() is None


def test_host_driver_is_none_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(template_rules.host.shutil, "which", lambda name: None)
    assert template_rules.host_driver() is None


def test_every_shipped_lock_is_an_offered_valid_combination():
    keys = sorted(path.name for path in template_rules.LOCKS_DIR.iterdir())
    assert "pytorch-cu130-py3.12-uv" in keys
    sys.path.insert(0, str(TEMPLATE / "scripts"))
    import relock

    for key in keys:
        answers = {**DEFAULT_ANSWERS, **relock.parse_key(key)}
        assert template_rules.validate(answers) == [], key
        assert template_rules.derive(answers)["lock_key"] == key
        text = template_rules.shipped_lock(key, answers["dependency_manager"]).read_text()
        # The only Jinja in a lock is the project's name, which only uv.lock records.
        expected = 1 if answers["dependency_manager"] == "uv" else 0
        assert text.count("{{") == text.count('"{{ cookiecutter.__dist_name }}"') == expected
        for marker in ("{%", "{#"):
            assert marker not in text
        if answers["dependency_manager"] == "uv":
            # Resolved for the build's container platforms only, never the host's.
            platforms = template_rules.build_spec(TABLE, answers["framework"], answers["cuda_version"])[
                "lock_platforms"
            ]
            normalised = {" and ".join(sorted(marker.split(" and "))) for marker in platforms}
            assert set(tomllib.loads(text)["supported-markers"]) == normalised
        if answers["dependency_manager"] == "poetry":
            requires = template_rules.derive(answers)["requires_python"]
            assert tomllib.loads(text)["metadata"]["python-versions"] == requires


def test_the_templates_own_code_is_lint_clean():
    from conftest import run, tool

    scripts = [".ci/run", ".ci/install-docker.sh", "tests/docker/make-base-image.sh"]
    for cmd in ([tool("ruff"), "check", "."], [tool("ruff"), "format", "--check", "."], [tool("shellcheck"), *scripts]):
        result = run(cmd, cwd=TEMPLATE)
        assert result.returncode == 0, result.stdout + result.stderr


# Version facts: an image tag, a driver version, a framework pin.
VERSION_FACT = re.compile(
    r"nvidia/cuda:[\w.-]+\d|\b\d{3}\.\d{2,3}(?:\.\d{2})?\b|\b(?:torch|torchvision|tensorflow)(?:\[[\w-]+\])?==[\w.+]+"
)
# Generated from the table, or locks: the only other places versions may appear.
GENERATED = ("compat.yaml", "cookiecutter.json", "templates/locks/", "requirements.txt", "requirements-dev.")


def test_version_facts_are_written_only_in_the_table():
    sources = [TEMPLATE / name for name in working_tree_files() if not name.startswith("tests/")]
    for path in sources:
        relative = str(path.relative_to(TEMPLATE))
        if relative.startswith(GENERATED) or relative.endswith(GENERATED) or "__pycache__" in relative:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not VERSION_FACT.findall(text), f"{relative}: {VERSION_FACT.findall(text)}"


@pytest.mark.parametrize("key", sorted(path.name for path in template_rules.LOCKS_DIR.iterdir()))
def test_rendered_files_name_only_versions_from_the_table(bake, key):
    sys.path.insert(0, str(TEMPLATE / "scripts"))
    import relock

    answers = relock.parse_key(key)
    project = bake(**answers).project_path
    derived = template_rules.derive({**DEFAULT_ANSWERS, **answers})
    # The README's table names every build's driver floor.
    floors = {spec["min_driver"] for spec in TABLE["cuda_majors"].values()}
    allowed = {derived["base_image"], derived["toolkit_driver"], *floors, *template_rules.requirements(answers)}
    for path in project.rglob("*"):
        if path.is_file() and path.name not in ("uv.lock", "poetry.lock", "requirements.txt") and path.suffix != ".txt":
            for fact in VERSION_FACT.findall(path.read_text()):
                assert fact in allowed, f"{path.name} names {fact}, which compat.yaml does not"
