"""Hosts that answer in bytes that are not UTF-8: an nvidia-smi with a GPU name in
Latin-1 or a garbled reply, a .env saved in Latin-1. docker/doctor.py,
docker/setup_env.py and gpu_test.py take such an answer as no usable answer (or show
U+FFFD in a name), never with a traceback; and setup_env reads every .env exactly as
Compose does (the real `docker compose` is the reference)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import TEMPLATE, fake_bin, run, template_rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_doctor import FAKE_DOCKER, GPU_FILES, NVIDIA_RUNTIMES, doctor, set_env_line

PROJECT_TEMPLATE = TEMPLATE / "{{cookiecutter.project_slug}}"
setup_env = template_rules.load_module(PROJECT_TEMPLATE / "docker" / "setup_env.py", "_odd_hosts_setup_env")
gpu_test = template_rules.load_module(PROJECT_TEMPLATE / "gpu_test.py", "_odd_hosts_gpu_test")

# A driver version with bytes around it that no encoding agrees on.
GARBLED = b"\xff\xfe535.86\x80, 8.6\n"


def smi_bin(tmp_path: Path, output: bytes) -> str:
    """A folder with an nvidia-smi that writes `output`, whatever it is asked."""
    answer = tmp_path / "smi-answer"
    answer.write_bytes(output)
    return fake_bin(tmp_path, **{"nvidia-smi": f"#!/bin/sh\ncat '{answer}'\n"})


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """smi(output): that nvidia-smi first on PATH, for the code under test in this process."""

    def put_first(output: bytes) -> None:
        monkeypatch.setenv("PATH", f"{smi_bin(tmp_path, output)}{os.pathsep}{os.environ['PATH']}")

    return put_first


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------
# nvidia-smi answering bytes that are not UTF-8
# ---------------------------------------------------------------------------------------


def test_setup_env_reads_a_latin1_gpu_name(smi):
    smi(b"GPU 0: Quadro \xe9dition (UUID: GPU-12345678-90ab-cdef-1234-567890abcdef)\n")
    assert setup_env.host_gpus() == [
        {"index": "0", "name": "Quadro \ufffddition", "uuid": "GPU-12345678-90ab-cdef-1234-567890abcdef", "mig": []}
    ]
    smi(GARBLED)
    assert setup_env.run(["nvidia-smi", "-L"]).stdout == "\ufffd\ufffd535.86\ufffd, 8.6\n"
    assert setup_env.host_gpus() == []


@pytest.mark.parametrize(
    ("output", "driver"),
    [(GARBLED, None), (b"535.86.05 \xe9\n", None), (b"\x80\n", None), (b"535.86.05\n", "535.86.05")],
)
def test_gpu_test_takes_a_garbled_driver_version_as_none(smi, output, driver):
    smi(output)
    assert gpu_test.driver_version() == driver


def test_gpu_test_takes_garbled_torchrun_output_as_a_failed_allreduce(tmp_path, monkeypatch):
    for status in (0, 1):
        torchrun = Path(
            fake_bin(tmp_path, python=f"#!/bin/sh\nprintf '\\377\\376{{\\n' >&2\nprintf '\\200\\n'\nexit {status}\n")
        )
        monkeypatch.setattr(sys, "executable", str(torchrun / "python"))
        result = gpu_test.launch_allreduce(2, quick=True)
        assert result["ok"] is False and "\ufffd" in result["error"]


def gpu_doctor(bake, tmp_path: Path, answer: bytes, **env: str) -> tuple[int, str]:
    """doctor.py in a CUDA 13.0 project on a GPU host whose nvidia-smi answers `answer`."""
    project = bake(jupyter_host_port=free_port()).project_path
    smi_bin(tmp_path, answer)
    path = fake_bin(tmp_path, docker=FAKE_DOCKER)  # the same folder
    return doctor(project, path, FAKE_RUNTIMES=NVIDIA_RUNTIMES, COMPOSE_FILE=GPU_FILES, **env)


@pytest.mark.parametrize(
    "answer",
    [GARBLED, b"\xff\xfe\n", b"580.95.05\x80, H100, 9.0\n", b"580.95.05, H100\n\xff\n"],
    ids=["garbled", "bytes only", "driver with a stray byte", "a garbled second GPU"],
)
def test_doctor_takes_a_garbled_driver_answer_as_no_driver(bake, tmp_path, answer):
    code, out = gpu_doctor(bake, tmp_path, answer)
    assert code == 1 and "Traceback" not in out, out
    assert "FAIL  nvidia-smi gives no driver version: the driver is not loaded, or broken" in out
    assert "blocker(s)" in out


def test_doctor_shows_a_latin1_gpu_name_on_any_terminal(bake, tmp_path):
    """A name in Latin-1 is the driver's fault, not the GPU's: the checks go on, and the
    U+FFFD in it is printed even where stdout cannot encode it (an ASCII terminal)."""
    code, out = gpu_doctor(bake, tmp_path, b"580.95.05, NVIDIA H100 \xe9dition, 9.0\n", PYTHONIOENCODING="ascii")
    assert code == 0 and "Traceback" not in out, out
    assert "ok    driver 580.95.05 (NVIDIA H100 \\ufffddition) runs CUDA 13.0" in out
    assert "ok    GPU 0 (NVIDIA H100 \\ufffddition, compute 9.0): native kernels" in out


def test_doctor_takes_a_garbled_compute_capability_as_unknown(bake, tmp_path):
    code, out = gpu_doctor(bake, tmp_path, b"580.95.05, NVIDIA H100, \xff9.0\n")
    assert code == 0 and "Traceback" not in out, out
    assert "ok    driver 580.95.05 (NVIDIA H100) runs CUDA 13.0" in out
    assert "kernels" not in out  # unknown: nothing to tell, rather than "no kernels"


# ---------------------------------------------------------------------------------------
# .env: bytes that are not UTF-8, values that are not what their key needs
# ---------------------------------------------------------------------------------------


def setup(project: Path, *args: str) -> tuple[int, str]:
    result = run(
        [sys.executable, "docker/setup_env.py", *args], cwd=project, env={**os.environ, "PATH": "/usr/bin:/bin"}
    )
    return result.returncode, result.stdout + result.stderr


def test_make_up_refuses_an_env_that_is_not_utf8_and_leaves_it_alone(bake):
    project = bake(jupyter_host_port=free_port()).project_path
    number = set_env_line(project, "SHM_SIZE", b"8gb  # gr\xf6\xdfer")
    before = (project / ".env").read_bytes()
    code, out = setup(project, "--preflight")  # `make up`
    assert code == 1 and "Traceback" not in out, out
    assert f"ERROR: `.env` line {number} is not UTF-8; save .env as UTF-8" in out
    code, out = setup(project)  # `make down`, `make shell`: stopping must still work
    assert code == 0 and f"WARNING: `.env` line {number} is not UTF-8" in out and "Traceback" not in out
    assert (project / ".env").read_bytes() == before


@pytest.mark.parametrize("port", ["8²", "８８８８", "0", "70000", ""])
def test_make_up_refuses_a_port_that_is_not_one(bake, port):
    """str.isdigit() says yes to '8²' and full-width digits; int() or Compose then fail."""
    project = bake().project_path
    set_env_line(project, "JUPYTER_HOST_PORT", port.encode())
    code, out = setup(project, "--preflight")
    assert code == 1 and "Traceback" not in out, out
    assert f"ERROR: JUPYTER_HOST_PORT={port!r} in .env is not a port (1 to 65535)" in out


# .env as Compose reads it. The reference is the real `docker compose` (compose-go's dotenv
# package): every value, and whether the file is refused, must agree.
ENV_KEYS = ["A", "B", "C", "D"]


def compose_reads(tmp_path: Path, text: str) -> dict[str, str] | None:
    """The values `docker compose` takes from .env text (None when it refuses the file)."""
    docker = os.environ.get("DOCKER") or shutil.which("docker")
    if not docker or run([docker, "compose", "version"]).returncode != 0:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("docker compose is required (REQUIRE_DOCKER=1)")
        pytest.skip("docker compose is not installed")
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / ".env").write_text(text, encoding="utf-8", newline="")
    # ${KEY-<unset>} tells a key .env does not set from one it sets empty.
    environment = {f"V_{key}": f"${{{key}-<unset>}}" for key in ENV_KEYS}
    (folder / "compose.yaml").write_text(json.dumps({"services": {"s": {"image": "x", "environment": environment}}}))
    result = run([docker, "compose", "config", "--format", "json"], cwd=folder,
                 env={"PATH": os.environ["PATH"], "HOME": str(folder)})  # fmt: skip
    if result.returncode != 0:
        return None
    # `config` writes each literal $ as $$, so that its output reads back the same.
    values = {
        name: value.replace("$$", "$")
        for name, value in json.loads(result.stdout)["services"]["s"]["environment"].items()
    }
    return {key: values[f"V_{key}"] for key in ENV_KEYS if values[f"V_{key}"] != "<unset>"}


def setup_env_reads(text: str) -> dict[str, str] | None:
    try:
        values = setup_env.parse_env(text, environ={})
    except setup_env.EnvError:
        return None
    return {key: value for key, value in values.items() if key in ENV_KEYS}


ENV_TEXTS = [
    "A=1\nB=2\n",
    "# comment\n\nexport A = 'quoted # not a comment'\r\nB=x # comment\r\nA=again\n",
    '\ufeffA=bom\nC="double"\n  # indented comment\nD=\nB==\n',
    "A=1\x0cB=2\nC=é ünïcode\u2028D=4\n",
    "A=\"tok=en#1\"  # mine\nB='it\\'s' # c\nC=x#y\nD=  spaced  value  ",
    'A="a\\nb\\t\\"q\\" \\\\ \\$B \\0101 \\x41"\nB=${A}!\nC=\'${A}\'\nD="$$ $A ${A}"',
    "A=1\nB=${A:-d}${NONE:-d}${NONE-e}${A:+p}${NONE:+q}${A+r}\nC=$A$\nD=${A}}",
    'A="multi\nline"\nB:yaml style\n  C = 3\nexport D=4',
    "A=1\nB B=2\n",
    'A="open\nB=2\n',
    "A=${NONE:?is needed}\n",
    "A=x${\n",
    "A+B=1\n",
    "",
]


@pytest.mark.parametrize("text", ENV_TEXTS)
def test_env_reads_as_compose_reads_it(tmp_path, text):
    assert setup_env_reads(text) == compose_reads(tmp_path, text)


ENV_PIECES = st.sampled_from(["a", " ", "  ", "\t", "#", " #", "=", "'", '"', "\\", "$", "$A", "${B}", "{", "}",
                              "${A:-x}", "$$", "\\n", "\\$", "é"])  # fmt: skip
ENV_LINES = st.tuples(
    st.sampled_from(["", "export ", " "]),
    st.sampled_from(ENV_KEYS),
    st.sampled_from(["=", " = ", ": "]),
    st.sampled_from(["", "'", '"']),
    st.lists(ENV_PIECES, max_size=6).map("".join),
    st.sampled_from(["", " # note", "#x"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(ENV_LINES, min_size=1, max_size=4))
def test_any_env_reads_as_compose_reads_it(tmp_path, lines):
    text = "".join(f"{lead}{key}{sep}{quote}{value}{quote}{tail}\n" for lead, key, sep, quote, value, tail in lines)
    assert setup_env_reads(text) == compose_reads(tmp_path, text), text


def test_env_lines_are_numbered_as_an_editor_numbers_them():
    text, not_utf8 = setup_env.decode_env(b"A=1\r\n# c\r\nB=2\nC=\xff\nD=4\rE=5\n")
    assert not_utf8 == [4]
    assert setup_env.env_line_numbers(text) == {"A": 1, "B": 3, "C": 4, "D": 5, "E": 6}
    assert setup_env.parse_env(text)["C"] == "\ufffd"
