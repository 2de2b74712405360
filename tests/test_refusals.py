"""Every refused answer: non-zero exit, a message that names the field, and nothing left
on disk. Mirrors the table in hooks/template_rules.py (validate)."""

from __future__ import annotations

import pytest
from conftest import template_rules

# (answers, field the message must name)
BAD_VALUES = [
    ({"jupyter_host_port": 0}, "jupyter_host_port"),
    ({"jupyter_host_port": 65536}, "jupyter_host_port"),
    ({"jupyter_host_port": "8888a"}, "jupyter_host_port"),
    ({"jupyter_host_port": -1}, "jupyter_host_port"),
    ({"jupyter_host_port": ""}, "jupyter_host_port"),
    ({"jupyter_host_port": " 8888"}, "jupyter_host_port"),
    ({"jupyter_host_port": "1e3"}, "jupyter_host_port"),
    ({"jupyter_container_port": 80}, "jupyter_container_port"),
    ({"jupyter_container_port": 0}, "jupyter_container_port"),
    ({"jupyter_container_port": 70000}, "jupyter_container_port"),
    ({"jupyter_container_port": "http"}, "jupyter_container_port"),
    ({"uid": 0}, "uid"),
    ({"uid": -5}, "uid"),
    ({"uid": "abc"}, "uid"),
    ({"uid": 65534}, "uid"),
    ({"uid": 4294967295}, "uid"),
    ({"uid": "1.5"}, "uid"),
    ({"gid": 0}, "gid"),
    ({"gid": "staff"}, "gid"),
    ({"gid": 65534}, "gid"),
    ({"project_slug": "my lab"}, "project_slug"),
    ({"project_slug": "3dlab"}, "project_slug"),
    ({"project_slug": "My_Lab"}, "project_slug"),
    ({"project_slug": "lab-1"}, "project_slug"),
    ({"project_slug": "class"}, "project_slug"),
    ({"project_slug": "json"}, "project_slug"),
    ({"project_slug": "a" * 61}, "project_slug"),
    ({"project_name": "3D Lab"}, "project_slug"),  # the derived slug starts with a digit
    ({"project_name": "  "}, "project_name"),
    ({"project_name": "Lab\nTwo"}, "project_name"),
    ({"project_slug": "_lab"}, "project_slug"),
    ({"project_slug": "typing"}, "project_slug"),  # shadows the standard library
    ({"jupyter_host_port": "８８８８"}, "jupyter_host_port"),  # full-width digits
    ({"jupyter_host_port": "+8080"}, "jupyter_host_port"),
    ({"uid": " 1000"}, "uid"),
    ({"uid": "0x10"}, "uid"),
    ({"gid": -1}, "gid"),
    # Zero-padded: `install -o` reads 0501 as octal (321).
    ({"uid": "0501"}, "uid"),
    ({"gid": "020"}, "gid"),
    ({"jupyter_host_port": "08888"}, "jupyter_host_port"),
    # System accounts of every Debian/Ubuntu base image (daemon, www-data, backup).
    ({"uid": 1}, "uid"),
    ({"uid": 33}, "uid"),
    ({"uid": 99}, "uid"),
    ({"uid": 100, "python_version": "3.10"}, "uid"),  # Ubuntu 22.04's _apt
    # Not a Docker image name: a trailing '_' or three in a row.
    ({"project_slug": "lab_"}, "project_slug"),
    ({"project_slug": "my___lab"}, "project_slug"),
    # Shadows a module the environment imports (src/ is first on PYTHONPATH).
    ({"project_slug": "numpy"}, "project_slug"),
    ({"project_slug": "torch"}, "project_slug"),
    ({"project_slug": "yaml"}, "project_slug"),  # package pyyaml
    ({"project_slug": "jupyter"}, "project_slug"),  # a module of jupyter-core
    ({"project_slug": "matplotlib"}, "project_slug"),
    ({"framework": "tensorflow", "cuda_version": "12.5", "project_slug": "keras"}, "project_slug"),
    # Jinja in an answer: cookiecutter would evaluate it.
    ({"project_name": "Lab {{ 7 * 7 }}"}, "project_name"),
    ({"project_name": "Lab {% if 1 %}x{% endif %}"}, "project_name"),
    ({"project_name": "Lab {# note #}"}, "project_name"),
    ({"project_name": "Lab {{ unclosed"}, "project_name"),
]

# Values that are not among cookiecutter.json's choices: cookiecutter itself refuses them
# before the hook runs, naming the variable.
NOT_A_CHOICE = [
    ({"cuda_version": "11.8"}, "cuda_version"),
    ({"framework": "jax"}, "framework"),
    ({"python_version": "3.9"}, "python_version"),
    ({"dependency_manager": "conda"}, "dependency_manager"),
    ({"readme_language": "fr"}, "readme_language"),
]


def assert_refused(baked, field: str) -> None:
    assert baked.exit_code != 0, f"{baked.answers} was accepted"
    assert field in baked.output, f"the message does not name {field}:\n{baked.output}"
    assert list(baked.output_dir.iterdir()) == [], "a refused generation left files behind"


@pytest.mark.parametrize(("answers", "field"), BAD_VALUES, ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None)
def test_bad_value_is_refused(bake, answers, field):
    baked = bake(**answers)
    assert_refused(baked, field)
    assert "Fix:" in baked.output


@pytest.mark.parametrize(("answers", "field"), NOT_A_CHOICE, ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_value_outside_the_choices_is_refused(bake, answers, field):
    assert_refused(bake(**answers), field)


ALL_BUILDS = "answer one of the builds there are: PyTorch 13.2, 13.0, 12.8, 12.6; TensorFlow 12.5"


@pytest.mark.parametrize(("framework", "cuda"), [("tensorflow", "13.0"), ("tensorflow", "12.6"), ("tensorflow", "12.8"),
                                                 ("tensorflow", "13.2"), ("pytorch", "12.5")])  # fmt: skip
def test_framework_with_a_cuda_it_has_no_build_for_is_refused(bake, framework, cuda):
    baked = bake(framework=framework, cuda_version=cuda)
    assert_refused(baked, "cuda_version")
    label = {"tensorflow": "TensorFlow", "pytorch": "PyTorch"}[framework]
    assert f"{label} has no CUDA {cuda} build" in baked.output
    assert ALL_BUILDS in baked.output  # the pairs that do exist


def test_a_cuda_no_framework_has_is_refused_naming_the_pairs(bake):
    baked = bake(cuda_version="11.8")
    assert_refused(baked, "cuda_version")
    assert ALL_BUILDS in baked.output


def test_combination_not_built_yet_is_refused(tmp_path, monkeypatch):
    """A PyPI build whose lock the template does not ship is refused, saying what is built;
    a build from PyTorch's index is not: its project's first `make lock` writes the lock."""
    locks = tmp_path / "locks"
    (locks / "pytorch-cu128-py3.12-uv").mkdir(parents=True)
    (locks / "pytorch-cu128-py3.12-uv" / "uv.lock").write_text("")
    monkeypatch.setattr(template_rules.table, "LOCKS_DIR", locks)
    answers = {
        "project_name": "GPU Lab", "project_slug": "gpu_lab", "framework": "pytorch", "cuda_version": "13.0",
        "python_version": "3.12", "jupyter_host_port": "18888", "jupyter_container_port": "8888",
        "uid": "1000", "gid": "1000", "dependency_manager": "uv", "readme_language": "en",
    }  # fmt: skip
    [problem] = template_rules.validate(answers)
    assert "dependency_manager" in problem.field and "not built yet" in problem.why
    assert "pytorch-cu128-py3.12-uv" in problem.fix
    assert template_rules.validate({**answers, "cuda_version": "12.6"}) == []


def test_every_problem_is_reported_at_once(bake):
    baked = bake(uid=0, gid=0, jupyter_host_port=0)
    assert_refused(baked, "uid")
    for field in ("gid", "jupyter_host_port"):
        assert field in baked.output


def test_unknown_question_is_caught_by_the_bake_fixture(bake):
    """cookiecutter ignores unknown keys silently; the fixture must not."""
    with pytest.raises(AssertionError, match="not questions"):
        bake(cuda="13.0")
