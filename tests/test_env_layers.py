"""docker/env_layers.py: the lock split into the image's environment layers, for every
shipped lock. The layers are exactly the lock between them (each locked package once, at
its locked version, with its hashes); the framework's big wheels alone are the lowest
layer, its small dependencies a later one, so a new version of one of those leaves the
big wheels cached; a package the project adds changes the last layer only. The Docker
tier builds images from these files; here the split itself is checked."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest
from conftest import TEMPLATE, template_rules, tool

SCRIPT = TEMPLATE / "{{cookiecutter.project_slug}}" / "docker" / "env_layers.py"
KEYS = sorted(path.name for path in template_rules.LOCKS_DIR.iterdir())
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.MULTILINE)


LAYERS = ("framework", "common", "framework-large-deps", "framework-deps", "project")


def split(tmp_path, lock, *extra: str, framework="pytorch") -> dict[str, str]:
    """The layers as the Dockerfile asks for them (template_rules.env_layers)."""
    out = tmp_path / "layers"
    cuda = template_rules.load_table()["defaults"]["cuda_version"][framework]
    layers = template_rules.env_layers({"framework": framework, "cuda_version": cuda})
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(lock), str(out), *extra, *layers, "project"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {name: (out / f"{name}.txt").read_text() for name in LAYERS}


def names(text: str) -> set[str]:
    return {name for name, _ in pins(text)}


def pins(text: str) -> list[tuple[str, str]]:
    return [(re.sub(r"[-_.]+", "-", name).lower(), version) for name, version in PIN.findall(text)]


def export(bake, key: str) -> str:
    """The lock of a shipped key's generated project, as requirements text."""
    framework, cuda, python, manager = re.match(r"(\w+)-cu(\d+)-py([\d.]+)-(\w+)", key).groups()
    baked = bake(framework=framework, cuda_version=f"{cuda[:-1]}.{cuda[-1]}", python_version=python,
                 dependency_manager=manager)  # fmt: skip
    assert baked.exit_code == 0, baked.output
    if manager == "uv":
        text = subprocess.run(
            [tool("uv"), "export", "--frozen", "--no-emit-project", "--emit-index-url", "--no-header", "--quiet"],
            cwd=baked.project_path, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return text
    return (baked.project_path / "requirements.txt").read_text()


@pytest.mark.parametrize("key", [key for key in KEYS if not key.endswith("-poetry")])
def test_the_layers_hold_the_lock_exactly_once_with_the_big_wheels_lowest(bake, tmp_path, key):
    text = export(bake, key)
    framework = key.split("-")[0]
    (tmp_path / "lock.txt").write_text(text)
    layers = split(tmp_path, tmp_path / "lock.txt", framework=framework)
    # Every locked package version exactly once, and nothing else.
    assert sorted(pins("".join(layers.values()))) == sorted(pins(text))
    # Each package with every hash the lock gives it.
    for block in re.split(r"\n(?=\S)", text):
        if PIN.match(block):
            hashes = re.findall(r"--hash=\S+", block)
            assert all(h in "".join(layers.values()) for h in hashes)
    # The lowest layer: the framework and its CUDA libraries (and Triton), nothing small.
    roots = set(template_rules.load_table()["frameworks"][framework]["packages"])
    big = {"torch", "torchvision", "triton"} if framework == "pytorch" else {"tensorflow"}
    cuda_libraries = {name for name, _ in pins(text) if name.startswith("nvidia-")}
    assert names(layers["framework"]) == (big & names(text)) | roots | cuda_libraries
    # The framework's large dependencies, then its small ones, above NumPy and Jupyter.
    large = set(template_rules.load_table()["frameworks"][framework]["large_dependencies"]) & names(text)
    small = {"filelock", "fsspec"} if framework == "pytorch" else {"keras", "absl-py", "termcolor"}
    assert large >= ({"sympy", "networkx"} if framework == "pytorch" else {"libclang", "h5py"})
    assert names(layers["framework-large-deps"]) == large
    assert small <= names(layers["framework-deps"])
    assert {"numpy", "jupyterlab"} <= names(layers["common"])
    # A project as generated adds nothing of its own.
    assert pins(layers["project"]) == []
    # No comments: only the packages of a layer make its content.
    assert "#" not in "".join(layers.values())


def poetry_dry_run(project, tmp_path) -> list[tuple[str, str]]:
    """What `poetry sync` installs here: a dry run into an empty environment, the locked
    packages re-resolved for it (poetry's own choice where the lock has two versions)."""
    empty = tmp_path / "empty"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(empty)], check=True)
    env = {"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": str(empty), "POETRY_VIRTUALENVS_CREATE": "false",
           "POETRY_INSTALLER_RE_RESOLVE": "true", "HOME": str(tmp_path)}  # fmt: skip
    dry_run = subprocess.run(
        [tool("poetry"), "sync", "--no-root", "--dry-run", "--no-interaction", "--no-ansi"],
        cwd=project, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(
        (re.sub(r"[-_.]+", "-", n).lower(), v) for n, v in re.findall(r"Installing (\S+) \(([^\s)]+)\)", dry_run)
    )


def split_poetry(tmp_path, project, framework) -> tuple[dict[str, str], str]:
    out = tmp_path / "layers"
    cuda = template_rules.load_table()["defaults"]["cuda_version"][framework]
    layers = template_rules.env_layers({"framework": framework, "cuda_version": cuda})
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(project / "poetry.lock"), str(out), *layers, "project"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {name: (out / f"{name}.txt").read_text() for name in LAYERS}, result.stdout


@pytest.mark.parametrize("key", [key for key in KEYS if key.endswith("py3.10-poetry")])
def test_poetry_layers_hold_exactly_what_poetry_installs(bake, tmp_path, key):
    """The versions poetry installs for this Python when it re-resolves the lock, as the
    image has it do, decided from the lock itself without starting poetry (a second of
    each rebuild after a lock change): CUDA 13's lock holds some nvidia-* libraries twice
    under overlapping markers (one pinned by cuda-toolkit's extra, one that cudnn's "*"
    would take), CUDA 12.8's lock two cuda-pathfinder versions by Python. This machine's
    Python 3.11 is in the 3.10 locks' range."""
    framework, cuda, python, manager = re.match(r"(\w+)-cu(\d+)-py([\d.]+)-(\w+)", key).groups()
    baked = bake(framework=framework, cuda_version=f"{cuda[:-1]}.{cuda[-1]}", python_version=python,
                 dependency_manager=manager)  # fmt: skip
    layers, said = split_poetry(tmp_path, baked.project_path, framework)
    assert "the newest locked that fit every constraint here" in said
    installs = poetry_dry_run(baked.project_path, tmp_path)
    assert len(installs) > 100
    layered = pins("".join(layers.values()))
    assert sorted(layered) == installs
    assert len({name for name, _ in layered}) == len(layered)  # one version of each
    assert layers["framework"].startswith("--index-url https://pypi.org/simple\n")
    if key.startswith("pytorch-cu130"):
        lock = (baked.project_path / "poetry.lock").read_text()
        doubles = re.findall(r'^name = "(nvidia-[\w-]+)"', lock, re.MULTILINE)
        assert len(doubles) > len(set(doubles))  # the case this test is about is in the lock


def test_where_the_lock_does_not_settle_a_version_poetry_chooses(bake, tmp_path):
    """A dependency in a form the reader does not follow (a URL): no choice of its own,
    and poetry's dry run, the way out then, gives poetry's versions."""
    env_layers = SimpleNamespace(**runpy.run_path(str(SCRIPT)))  # no bytecode written into the template
    baked = bake(framework="pytorch", cuda_version="13.0", python_version="3.10", dependency_manager="poetry")
    packages = tomllib.loads((baked.project_path / "poetry.lock").read_text())["package"]
    assert env_layers.poetry_choice(baked.project_path, packages) is not None
    toolkit = next(package for package in packages if package["name"] == "cuda-toolkit")
    toolkit["dependencies"]["nvidia-cublas"] = {"url": "https://example.org/nvidia_cublas.whl", "optional": True}
    assert env_layers.poetry_choice(baked.project_path, packages) is None
    chosen = env_layers.poetry_dry_run(baked.project_path)
    assert sorted(chosen.items()) == poetry_dry_run(baked.project_path, tmp_path)


def test_a_stale_poetry_lock_stops_the_split(bake, tmp_path):
    """A dependency added to pyproject.toml without `make lock`: no layers (the
    Dockerfile then lets docker/lock say what to run)."""
    baked = bake(framework="pytorch", cuda_version="13.0", python_version="3.10", dependency_manager="poetry")
    pyproject = baked.project_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "tqdm",\n', 1))
    out = tmp_path / "layers"
    result = subprocess.run([sys.executable, str(SCRIPT), str(baked.project_path / "poetry.lock"), str(out),
                             "framework=torch", "project"], capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 3
    assert "poetry.lock is stale" in result.stderr
    assert not out.exists()


def test_a_package_the_project_adds_changes_the_last_layer_only(tmp_path):
    """The layers below keep their exact bytes (BuildKit's cache key), even though the
    lock's annotations of a shared dependency change too."""
    lock = (template_rules.LOCKS_DIR / "pytorch-cu130-py3.12-pip" / "requirements.txt").read_text()
    before = split(tmp_path / "a", _write(tmp_path / "a.txt", lock))
    added = lock.replace("    # via\n    #   jupyter-server\n", "    # via\n    #   jupyter-server\n    #   tqdm\n", 1)
    added += "tqdm==4.67.1 \\\n    --hash=sha256:26445eca388f82e72884e0d580d5464cd801a3ea01e63e5601bdff9ba6a48de2\n"
    added += "    # via -r requirements.in\n"
    assert "#   tqdm" in added
    after = split(tmp_path / "b", _write(tmp_path / "b.txt", added))
    assert [after[layer] == before[layer] for layer in LAYERS] == [True, True, True, True, False]
    assert pins(after["project"]) == [("tqdm", "4.67.1")]


def test_a_new_version_of_a_small_dependency_of_the_framework_leaves_its_big_wheels_alone(tmp_path):
    """filelock (torch needs it) moves: only the layer of the framework's small
    dependencies changes; the big wheels' layer (5 GB), Jupyter's and sympy's keep their
    bytes."""
    lock = (template_rules.LOCKS_DIR / "pytorch-cu130-py3.12-pip" / "requirements.txt").read_text()
    version = re.search(r"^filelock==(\S+) ", lock, re.MULTILINE).group(1)
    block = re.search(r"^filelock==.*?(?=^\S)", lock, re.MULTILINE | re.DOTALL).group(0)
    bumped = lock.replace(block, "filelock==99.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via torch\n")
    before = split(tmp_path / "a", _write(tmp_path / "a.txt", lock))
    after = split(tmp_path / "b", _write(tmp_path / "b.txt", bumped))
    assert ("filelock", version) in pins(before["framework-deps"])
    assert ("filelock", "99.0") in pins(after["framework-deps"])
    assert [after[layer] == before[layer] for layer in LAYERS] == [True, True, True, False, True]


def test_index_options_lead_every_layer(tmp_path):
    """A build from PyTorch's index: each layer's install finds torch there, and the rest
    on PyPI, whichever layer it is in."""
    text = (
        "--index-url https://pypi.org/simple\n--extra-index-url https://download.pytorch.org/whl/cu126\n\n"
        "torch==2.14.1+cu126 \\\n    --hash=sha256:aa\n    # via -r requirements.in\n"
        "filelock==3.20.0 \\\n    --hash=sha256:bb\n    # via torch\n"
        "numpy==2.3.4 \\\n    --hash=sha256:cc\n    # via -r requirements.in\n"
    )
    layers = split(tmp_path, _write(tmp_path / "lock.txt", text))
    for content in layers.values():
        assert content.startswith(
            "--index-url https://pypi.org/simple\n--extra-index-url https://download.pytorch.org/whl/cu126\n"
        )
    assert pins(layers["framework"]) == [("torch", "2.14.1+cu126")]
    assert pins(layers["common"]) == [("numpy", "2.3.4")]
    assert pins(layers["framework-deps"]) == [("filelock", "3.20.0")]
    assert layers["framework"].endswith("--hash=sha256:aa\n")  # the last hash ends the line


def test_a_call_without_layers_prints_its_usage(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "lock.txt"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "env_layers.py LOCK OUTDIR" in result.stderr


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_the_layer_roots_come_from_the_table(framework):
    table = template_rules.load_table()
    cuda = table["defaults"]["cuda_version"][framework]
    layers = template_rules.env_layers({"framework": framework, "cuda_version": cuda})
    roots = ",".join(table["frameworks"][framework]["packages"])
    heavy = ",".join(table["frameworks"][framework]["heavy_dependencies"])
    large = ",".join(table["frameworks"][framework]["large_dependencies"])
    assert layers == [
        f"framework={roots}:{heavy}",
        "common=numpy,jupyterlab,ipykernel,ipywidgets,matplotlib",
        f"framework-large-deps={roots}:{large}",
        f"framework-deps={roots}",
    ]


def test_a_layer_keeps_only_the_dependencies_its_globs_name(tmp_path):
    """KEEP filters what a layer takes of its roots' closure; the walk still goes through
    the others (torch -> cuda-toolkit -> nvidia-*)."""
    text = (
        "torch==2.14.1 \\\n    --hash=sha256:aa\n    # via -r requirements.in\n"
        "cuda-toolkit==13.0.2 \\\n    --hash=sha256:bb\n    # via torch\n"
        "nvidia-cublas==13.1.0 \\\n    --hash=sha256:cc\n    # via cuda-toolkit\n"
        "nvidia-ml-py==13.580.0 \\\n    --hash=sha256:dd\n    # via -r requirements.in\n"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(_write(tmp_path / "lock.txt", text)), str(out), "big=torch:nvidia-*",
         "small=torch", "rest"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert names((out / "big.txt").read_text()) == {"torch", "nvidia-cublas"}
    assert names((out / "small.txt").read_text()) == {"cuda-toolkit"}
    assert names((out / "rest.txt").read_text()) == {"nvidia-ml-py"}  # added by the project, not torch's


def _write(path, text: str):
    path.write_text(text)
    return path
