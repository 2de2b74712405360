"""The CUDA build a project gets: the default read from the host's driver and GPUs, the
notes for an answer this host cannot run well, and the builds from PyTorch's index
that are generated without a lock. Every expected build is written out below."""

from __future__ import annotations

import socket
import subprocess

import pytest
from conftest import fake_nvidia_smi, template_rules

TABLE = template_rules.load_table()


def fake_gpus(tmp_path, monkeypatch, driver: str, capabilities: list[str]) -> None:
    """nvidia-smi as a host with this driver and these GPUs answers the two queries the
    template asks. A driver before R510 has no compute_cap field (nvidia-smi says so and
    exits 2); `capabilities=[]` stands for that."""
    rows = "\\n".join(f"{driver}, {capability}" for capability in capabilities)
    body = f"""case "$1" in
  --query-gpu=driver_version,compute_cap)
    if [ -z "{rows}" ]; then echo 'Field "compute_cap" is not a valid field to query.'; exit 2; fi
    printf '{rows}\\n' ;;
  --query-gpu=driver_version) printf '{driver}\\n' ;;
  *) exit 2 ;;
esac"""
    fake_nvidia_smi(tmp_path, monkeypatch, body)


# (driver, each GPU's compute capability, the PyTorch build the default must be)
PYTORCH_DEFAULTS = [
    ("470.256.02", [], "13.0"),  # below every floor: the static default (and a NOTE)
    ("525.60.13", ["7.5"], "12.8"),  # T4 on the oldest CUDA 12 driver: minor version compatibility
    ("525.60.13", ["6.1"], "12.6"),  # GTX 1080: only the index build has Pascal kernels
    ("535.288.01", ["7.0"], "12.8"),  # V100 on the 535 LTS branch: 12.8 still has Volta
    ("535.288.01", ["8.0"], "12.8"),  # A100 on 535
    ("535.288.01", ["6.1"], "12.6"),
    ("550.163.01", ["8.6"], "12.8"),  # A10, RTX 30
    ("550.163.01", ["8.9"], "12.8"),  # L4, RTX 40: sm_86 code runs on 8.9
    ("550.163.01", ["9.0"], "12.8"),  # H100 on 550
    ("570.195.03", ["10.0"], "12.8"),  # B200 on 570: Blackwell needs 12.8 or newer
    ("570.195.03", ["12.0"], "12.8"),  # RTX 5090 on 570
    ("570.195.03", ["9.0"], "12.8"),
    ("570.195.03", [], "12.8"),  # driver known, GPUs not: the newest locked build it runs
    ("580.95.05", ["9.0"], "13.0"),  # H100/H200 on R580
    ("580.95.05", ["7.0"], "12.8"),  # Volta on R580, its last branch: no CUDA 13 kernels
    ("580.95.05", ["6.1"], "12.6"),
    ("580.95.05", ["5.2"], "12.6"),  # Maxwell
    ("580.95.05", ["10.3"], "13.0"),  # B300: sm_100 code runs on 10.3
    ("580.95.05", ["12.1"], "13.0"),  # GB10: sm_120 code runs on 12.1
    ("580.95.05", ["6.1", "8.6"], "12.6"),  # two different GPUs: the build with kernels for both
    ("580.95.05", ["7.0", "9.0"], "12.8"),
    ("595.58.03", ["12.0"], "13.0"),  # 13.2 runs too, but 13.0 ships a lock
    ("595.58.03", ["8.9"], "13.0"),
    ("595.58.03", ["10.0"], "13.0"),
    ("595.58.03", ["8.0", "12.0"], "13.0"),
    ("595.58.03", [], "13.0"),
    ("595.58.03", ["11.0"], "13.0"),  # no build covers Thor: the static default (and a NOTE)
]


@pytest.mark.parametrize(("driver", "capabilities", "expected"), PYTORCH_DEFAULTS)
def test_pytorch_default_build_for_a_host(tmp_path, monkeypatch, driver, capabilities, expected):
    fake_gpus(tmp_path, monkeypatch, driver, capabilities)
    host = template_rules.host_gpus()
    assert host == template_rules.HostGPUs(driver, tuple(capabilities))
    assert template_rules.default_cuda("pytorch", host) == expected


@pytest.mark.parametrize(
    ("driver", "capabilities"), [("470.256.02", []), ("535.288.01", ["9.0"]), ("595.58.03", ["6.1"])]
)
def test_tensorflow_has_one_build(tmp_path, monkeypatch, driver, capabilities):
    fake_gpus(tmp_path, monkeypatch, driver, capabilities)
    assert template_rules.default_cuda("tensorflow", template_rules.host_gpus()) == "12.5"


def test_without_a_driver_the_default_is_the_plain_pypi_build():
    """The default installs wherever PyPI is reachable: no extra wheel index."""
    for name, spec in TABLE["frameworks"].items():
        default = TABLE["defaults"]["cuda_version"][name]
        assert spec["cuda"][default]["source"] == "pypi"
        assert template_rules.default_cuda(name, None) == default


def test_the_default_prefers_builds_with_a_shipped_lock(tmp_path, monkeypatch):
    """Without 13.0's locks, an H100 on 595 gets 13.2 (the newest it runs), not 12.8."""
    locks = tmp_path / "locks"
    (locks / "pytorch-cu128-py3.12-uv").mkdir(parents=True)
    monkeypatch.setattr(template_rules.table, "LOCKS_DIR", locks)
    host = template_rules.HostGPUs("595.58.03", ("9.0",))
    assert template_rules.default_cuda("pytorch", host) == "12.8"  # locked beats newer
    (locks / "pytorch-cu128-py3.12-uv").rmdir()
    assert template_rules.default_cuda("pytorch", host) == "13.2"  # none locked: the newest


def test_generation_takes_the_default_from_the_hosts_gpu(bake, tmp_path, monkeypatch):
    fake_gpus(tmp_path, monkeypatch, "535.288.01", ["7.0"])
    baked = bake()
    assert baked.exit_code == 0, baked.output
    assert "NOTE" not in baked.output
    assert "torch==2.10.0" in (baked.project_path / "pyproject.toml").read_text()


def host(driver: str, *capabilities: str) -> template_rules.HostGPUs:
    return template_rules.HostGPUs(driver, capabilities)


def answers(framework: str, cuda: str) -> dict:
    return {"framework": framework, "cuda_version": cuda}


def test_a_driver_below_the_floor_is_noted():
    [note] = template_rules.host_notes(answers("pytorch", "13.0"), host("570.195.03", "9.0"))
    assert "driver 570.195.03 is older than the CUDA 13.0 build of PyTorch 2.14.1 needs (580.65.06)" in note
    assert "COMPOSE_FILE=compose.yaml" in note


def test_a_cuda_12_build_runs_on_a_535_driver_without_a_note():
    assert template_rules.host_notes(answers("pytorch", "12.8"), host("535.288.01", "7.0")) == []
    assert template_rules.host_notes(answers("pytorch", "12.6"), host("525.60.13", "6.1")) == []


def test_a_build_without_kernels_for_the_gpu_names_the_one_that_has_them():
    [note] = template_rules.host_notes(answers("pytorch", "13.0"), host("580.95.05", "6.1"))
    assert "no kernels for this host's GPU (compute capability 6.1 (Pascal))" in note
    assert "cuda_version=12.6 has them (Maxwell to Hopper)" in note
    [note] = template_rules.host_notes(answers("pytorch", "12.6"), host("580.95.05", "10.0"))
    assert "(Blackwell)" in note and "cuda_version=13.0 has them" in note


def test_ptx_only_is_noted_as_slow_first_use_and_needs_the_toolkits_driver():
    [note] = template_rules.host_notes(answers("tensorflow", "12.5"), host("580.95.05", "9.0"))
    assert "no native code" in note and "compiles the build's PTX on first use" in note
    # Below 12.5's own driver there is no PTX JIT (minor version compatibility): no kernels.
    [note] = template_rules.host_notes(answers("tensorflow", "12.5"), host("550.163.01", "9.0"))
    assert "no kernels for this host's GPU" in note


def test_no_host_no_notes():
    assert template_rules.host_notes(answers("pytorch", "13.0"), None) == []


def test_the_driver_rule_comes_from_one_place():
    """Every build's floor is its CUDA major's: 12.x from 525.60.13, 13.x from 580."""
    for framework, spec in TABLE["frameworks"].items():
        for cuda in spec["cuda"]:
            floor = template_rules.derive({"framework": framework, "cuda_version": cuda})["min_driver"]
            assert floor == {"12": "525.60.13", "13": "580.65.06"}[cuda.split(".")[0]]


def test_the_question_lists_every_build_with_its_floor_and_gpus():
    import json

    from conftest import TEMPLATE

    prompt = json.loads((TEMPLATE / "cookiecutter.json").read_text())["__prompts__"]["cuda_version"]
    for cuda, (floor, gpus) in {
        "13.2": ("580.65.06", "Turing to Blackwell, from PyTorch's index"),
        "13.0": ("580.65.06", "Turing to Blackwell"),
        "12.8": ("525.60.13", "Volta to Blackwell"),
        "12.6": ("525.60.13", "Maxwell to Hopper, from PyTorch's index"),
    }.items():
        assert f"{cuda} (driver >= {floor}, {gpus})" in prompt
    assert "TensorFlow: 12.5 (driver >= 525.60.13, Pascal to Ada; Hopper and newer through PTX)" in prompt


# ---------------------------------------------------------------------------------------
# Builds from PyTorch's index: generated without a lock
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cuda", ["12.6", "13.2"])
@pytest.mark.parametrize("manager", ["uv", "pip", "poetry"])
def test_index_builds_generate_offline_without_a_lock(bake, cuda, manager):
    baked = bake(cuda_version=cuda, dependency_manager=manager)
    assert baked.exit_code == 0, baked.output
    project = baked.project_path
    lock = template_rules.MANAGER_FILES[manager][1]
    index = TABLE["frameworks"]["pytorch"]["cuda"][cuda]["index_url"]
    assert f"make lock         # first: writes {lock}" in baked.output and index in baked.output
    text = (project / lock).read_text()
    assert text.startswith("# No lock yet: the project's first `make lock` writes this file.")
    assert index in text
    readme = (project / "README.md").read_text()
    assert f"`make lock` writes `{lock}` first" in readme
    result = subprocess.run(["make", "up"], cwd=project, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert result.stderr.splitlines()[:2] == [
        f"{lock} is not written yet: CUDA {cuda} builds come from PyTorch's index ({index}).",
        f"Run `make lock` once on a machine that reaches it (it writes {lock}), then `make up`.",
    ]
    assert "docker" not in result.stdout  # stopped before Docker was asked anything


@pytest.mark.parametrize("manager", ["uv", "pip", "poetry"])
@pytest.mark.parametrize("how", ["index down", "offline"])
def test_locking_without_the_index_fails_naming_it_and_changes_nothing(bake, tmp_path, manager, how):
    """The project's own docker/lock, as `make lock` runs it, with PyTorch's index
    unreachable: a closed port on 127.0.0.1 stands for the index, and `unshare -n` (no
    network at all) for a machine offline. The placeholder stays as it was, byte for byte,
    and nothing else is left behind."""
    from test_bake import lock_tools_env

    project = bake(cuda_version="12.6", dependency_manager=manager).project_path
    input_name, lock_name, *_ = template_rules.MANAGER_FILES[manager]
    index = TABLE["frameworks"]["pytorch"]["cuda"]["12.6"]["index_url"]
    if how == "index down":
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}/whl/cu126"
        for name in (input_name, "docker/lock"):
            path = project / name
            path.write_text(path.read_text().replace(index, closed))
        index = closed
        prefix = []
    else:
        if subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode != 0:
            pytest.skip("cannot create a network namespace here (needs root)")
        prefix = ["unshare", "-n"]
    before = {path: path.read_bytes() for path in project.rglob("*") if path.is_file()}
    env = {**lock_tools_env(), "UV_HTTP_RETRIES": "0", "HOME": str(tmp_path)}
    result = subprocess.run(
        [*prefix, "sh", "docker/lock"], cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0
    assert f"It needs PyPI and PyTorch's index {index}:" in result.stderr, result.stderr
    assert f"Locking failed; {lock_name} is unchanged." in result.stderr
    after = {path: path.read_bytes() for path in project.rglob("*") if path.is_file()}
    assert after == before


def test_the_12_8_lock_refuses_an_aarch64_machine_instead_of_installing_a_cpu_torch(bake, tmp_path):
    """PyPI's torch 2.10 for Linux aarch64 is CPU-only: the 12.8 lock is for x86_64, and
    the image build (docker/lock --check-install) stops on another machine with a message
    naming the way out. CUDA 13.0's lock covers aarch64 and goes on."""
    from conftest import fake_bin

    uname = fake_bin(tmp_path, uname="#!/bin/sh\necho aarch64\n")
    env = {"PATH": f"{uname}:/usr/bin:/bin"}
    cu128 = bake(cuda_version="12.8", dependency_manager="pip").project_path
    result = subprocess.run(
        ["sh", "docker/lock", "--check-install"], cwd=cu128, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "requirements.txt is resolved for x86_64 only, and this machine is aarch64." in result.stderr
    assert "on PyPI has no CUDA on aarch64 (its wheel there is CPU-only)" in result.stderr
    assert "uv.lock" not in result.stderr
    pyproject = (bake(cuda_version="12.8").project_path / "pyproject.toml").read_text()
    assert "platform_machine == 'aarch64'" not in pyproject  # uv resolves for x86_64 only
    cu130 = bake(dependency_manager="pip").project_path
    result = subprocess.run(
        ["sh", "docker/lock", "--check-install"], cwd=cu130, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
