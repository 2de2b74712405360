"""CUDA builds from PyTorch's own wheel index, exercised against a local index.

PyTorch's index (download.pytorch.org) is not reachable from these machines, so a PEP 503
index on 127.0.0.1 stands in for it, serving a real torch wheel (the CPU build of
torch 2.13.0 this machine keeps on disk) and a decoy: a `filelock` 99.0 that only the
local index offers. The project's own files are rendered for an index build whose URL
points at the local index, and locked by the project's own docker/lock script. Other
packages come from PyPI, so the test needs the network.
"""

from __future__ import annotations

import copy
import json
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import TEMPLATE, serve_index, template_rules

sys.path.insert(0, str(TEMPLATE / "scripts"))

import relock

import template_jinja

pytestmark = pytest.mark.network

LOCAL_WHEELS = sorted(Path("/opt/wheels").glob("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"))


def decoy_wheel(directory: Path) -> Path:
    """filelock 99.0: a real, installable wheel that must never be chosen."""
    path = directory / "filelock-99.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("filelock/__init__.py", "raise ImportError('decoy from the wrong index')\n")
        info = "filelock-99.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: filelock\nVersion: 99.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def local_index(tmp_path_factory):
    if not LOCAL_WHEELS:
        pytest.skip("no local torch wheel in /opt/wheels to serve")
    root = tmp_path_factory.mktemp("index")
    decoy = decoy_wheel(tmp_path_factory.mktemp("decoy"))
    index = serve_index(root, [LOCAL_WHEELS[0], decoy])
    yield {"url": index.url, "torch_sha256": index.digests[LOCAL_WHEELS[0].name]}
    index.close()


@pytest.fixture
def index_build(local_index, monkeypatch, tmp_path_factory):
    """The table as for a CUDA 12.6 build from an index, pointed at the local index and
    cut down to what the local wheel can satisfy (torch 2.13.0+cpu, Python 3.11, x86_64)."""
    table = copy.deepcopy(template_rules.load_table())
    pytorch = table["frameworks"]["pytorch"]
    pytorch["packages"] = {"torch": "2.13.0+cpu"}
    pytorch["python_excludes"] = []
    pytorch["cuda"]["12.6"]["index_url"] = local_index["url"]
    table["python"]["3.11"] = {"ubuntu": "24.04"}
    table["common_requirements"] = ["filelock"]  # the decoy's name, asked for directly
    table["lock_platforms"] = ["sys_platform == 'linux' and platform_machine == 'x86_64'"]
    monkeypatch.setattr(template_rules.table, "load_table", lambda path=None: table)
    # Rendering reads the rules through the Jinja extension, which loads them afresh from
    # disk: make it use this (patched) module instead.
    monkeypatch.setattr(template_jinja, "load_rules", lambda: template_rules)
    context = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    context["python_version"].append("3.11")
    context_file = tmp_path_factory.mktemp("context") / "cookiecutter.json"
    context_file.write_text(json.dumps(context))
    monkeypatch.setattr(relock, "CONTEXT_FILE", context_file)
    return local_index


def lock(manager: str, tmp_path: Path) -> Path:
    key = f"pytorch-cu126-py3.11-{manager}"
    answers = relock.parse_key(key)
    input_name, lock_name, *_ = template_rules.MANAGER_FILES[manager]
    relock.render(answers, tmp_path, [input_name, "docker/lock"])
    env = relock.tool_env(relock.find_python("3.11"))
    result = relock.subprocess.run(
        ["sh", "docker/lock"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path / lock_name


def test_uv_takes_only_torch_from_the_explicit_index(index_build, tmp_path):
    packages = {p["name"]: p for p in tomllib.loads(lock("uv", tmp_path).read_text())["package"]}
    assert packages["torch"]["version"] == "2.13.0+cpu"
    assert packages["torch"]["source"] == {"registry": index_build["url"]}
    [wheel] = packages["torch"]["wheels"]
    assert wheel["hash"] == f"sha256:{index_build['torch_sha256']}"
    assert packages["filelock"]["version"] != "99.0"
    others = {name: p["source"] for name, p in packages.items() if name != "torch" and "registry" in p["source"]}
    assert others and set(map(str, others.values())) == {str({"registry": "https://pypi.org/simple"})}


def test_poetry_takes_only_torch_from_the_explicit_source(index_build, tmp_path):
    packages = {p["name"]: p for p in tomllib.loads(lock("poetry", tmp_path).read_text())["package"]}
    assert packages["torch"]["version"] == "2.13.0+cpu"
    assert packages["torch"]["source"]["url"] == index_build["url"]
    assert packages["filelock"]["version"] != "99.0"
    assert packages["filelock"]["source"]["url"] == "https://pypi.org/simple"


def test_pip_pins_the_index_wheel_by_hash(index_build, tmp_path):
    """pip has no per-package index: the extra index is consulted for every name at
    resolution, and every file is pinned by hash, so installs cannot be swapped later."""
    text = lock("pip", tmp_path).read_text()
    assert "torch==2.13.0+cpu" in text
    assert f"--hash=sha256:{index_build['torch_sha256']}" in text
    assert f"--extra-index-url {index_build['url']}" in (tmp_path / "requirements.in").read_text()
    # The lock names the index too: the image's `pip install -r requirements.txt` needs it.
    assert f"--extra-index-url {index_build['url']}" in text.splitlines()
