"""The project's settings file under the conditions a shared server brings: .env made
readable by others, several setup runs at once on a fresh clone (the dev container's
initializeCommand beside `make up`), a .env that is a folder or another user's file,
values quoted and commented as Compose allows, and a hung nvidia-smi. Each test failed
before the hardening it checks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import env_values, fake_bin, run
from test_push import DIGEST, REGISTRY, committed, docker_calls, make_push, tag_of, user_env

SETUP = [sys.executable, "docker/setup_env.py"]


@pytest.fixture
def project(bake) -> Path:
    baked = bake()
    assert baked.exit_code == 0, baked.output
    return baked.project_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(project: Path) -> list[str]:
    """Temporary files of setup's writes (.env, compose.gpu.yaml) left in the project."""
    return sorted(path.name for path in project.iterdir() if path.name.endswith(".tmp"))


def set_line(project: Path, key: str, line: str) -> None:
    lines = [text for text in (project / ".env").read_text().splitlines() if text.partition("=")[0] != key]
    (project / ".env").write_text("\n".join([*lines, line]) + "\n")


# ---------------------------------------------------------------------------------------
# Who may read .env
# ---------------------------------------------------------------------------------------


def test_an_env_others_may_read_is_made_private_with_a_note(project):
    env = project / ".env"
    env.chmod(0o644)  # `cp` from a world-readable copy, or a chmod
    result = run(SETUP, cwd=project)
    assert result.returncode == 0, result.stderr
    assert mode(env) == 0o600
    assert "note: .env was readable by others (mode 644) and holds the Jupyter token: set to 600" in result.stderr


def test_doctor_fails_on_an_env_others_may_read(project):
    env = project / ".env"
    env.chmod(0o640)
    result = run([sys.executable, "docker/doctor.py"], cwd=project)
    assert "FAIL  .env is readable by other users of this host (mode 640), and it holds the Jupyter token" in (
        result.stdout
    )
    assert result.returncode == 1
    env.chmod(0o600)
    assert "readable by other users" not in run([sys.executable, "docker/doctor.py"], cwd=project).stdout


# ---------------------------------------------------------------------------------------
# Setup runs at once
# ---------------------------------------------------------------------------------------


def test_setup_runs_at_once_on_a_fresh_clone_write_one_env(project):
    """Four runs at once (the dev container's start and `make up`), in many rounds: none
    crashes, exactly one writes .env (one token), and no temporary file is left."""
    for round_number in range(12):
        (project / ".env").unlink()
        runs = [
            subprocess.Popen(SETUP, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        outputs = [(process.wait(), *process.communicate()) for process in runs]
        for code, out, err in outputs:
            assert code == 0 and "Traceback" not in err, f"round {round_number}: {err}"
        writers = [out for _, out, _ in outputs if ".env written for this clone" in out]
        assert len(writers) == 1, f"round {round_number}: {len(writers)} runs wrote .env"
        assert env_values(project / ".env")["JUPYTER_TOKEN"]
        assert leftovers(project) == []


# ---------------------------------------------------------------------------------------
# A .env that cannot be read
# ---------------------------------------------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(("ERROR", "WARNING"))]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_env_that_is_a_folder_is_named_with_the_fix(project):
    env = project / ".env"
    env.unlink()
    env.mkdir()  # what Docker makes where a bind mount names a missing file
    up = run([*SETUP, "--preflight"], cwd=project)  # `make up`
    assert up.returncode == 1
    message = "`.env` is a folder, not a settings file; remove it (rm -r .env), then run make up again"
    assert one_line_error(up) == f"ERROR: {message}"
    down = run(SETUP, cwd=project)  # `make down`: stopping must still be possible
    assert down.returncode == 0 and one_line_error(down) == f"WARNING: {message}"
    jupyter = run(["make", "-s", "jupyter"], cwd=project)
    assert jupyter.returncode != 0 and f"ERROR: {message}" in jupyter.stderr and "Traceback" not in jupyter.stderr
    doctor = run([sys.executable, "docker/doctor.py"], cwd=project)
    assert "FAIL  `.env` is a folder, not a settings file" in doctor.stdout and "Traceback" not in doctor.stderr
    assert env.is_dir() and not any(env.iterdir()) and leftovers(project) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make the file another user's")
def test_another_users_env_is_named_with_the_fix(project):
    """As a user who cannot read .env (root made it, or a teammate's clone was copied)."""
    shared = Path(tempfile.mkdtemp(prefix="env-owner-"))
    try:
        shared.chmod(0o755)
        clone = shared / "clone"
        shutil.copytree(project, clone)
        subprocess.run(["chown", "-R", "65534:65534", str(clone)], check=True)
        os.chown(clone / ".env", 4242, 4242)
        (clone / ".env").chmod(0o600)
        env = {"PATH": os.environ["PATH"], "HOME": str(clone)}
        up = subprocess.run(["python3", "docker/setup_env.py", "--preflight"], cwd=clone, env=env, user=65534,
                            group=65534, capture_output=True, text=True, check=False)  # fmt: skip
        assert up.returncode == 1
        assert one_line_error(up) == (
            "ERROR: `.env` cannot be read by you (it belongs to uid 4242); "
            "sudo chown $(id -u):$(id -g) .env && chmod 600 .env"
        )
        doctor = subprocess.run(["python3", "docker/doctor.py"], cwd=clone, env=env, user=65534, group=65534,
                                capture_output=True, text=True, check=False)  # fmt: skip
        assert "FAIL  `.env` cannot be read by you (it belongs to uid 4242)" in doctor.stdout
        assert "Traceback" not in doctor.stderr and leftovers(clone) == []
    finally:
        shutil.rmtree(shared)


# ---------------------------------------------------------------------------------------
# Values as Compose reads them, everywhere
# ---------------------------------------------------------------------------------------


def test_make_jupyter_reads_a_quoted_token_with_a_comment_and_encodes_it(bake):
    project = bake(jupyter_host_port=28888).project_path
    set_line(project, "JUPYTER_TOKEN", 'JUPYTER_TOKEN="tok=en#1 &x"  # mine')
    result = run(["make", "-s", "jupyter"], cwd=project)
    assert result.stdout.strip() == "http://127.0.0.1:28888/lab?token=tok%3Den%231%20%26x", result.stderr


def test_push_reads_a_quoted_registry_with_a_comment(project, tmp_path):
    commit = committed(project)
    set_line(project, "REGISTRY", f'REGISTRY="{REGISTRY}"  # ours')
    result = make_push(project, user_env(tmp_path, project))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Image: {REGISTRY}/{project.name}@{DIGEST}" in result.stdout
    assert f"push {REGISTRY}/{project.name}:{tag_of(project, commit)}" in docker_calls(tmp_path)


def test_the_shell_scripts_read_env_through_setup_env_only(project):
    """One reader of .env: no script of the project parses it with sed or awk."""
    for path in [project / "Makefile", *(project / "docker").iterdir(), *(project / ".devcontainer").iterdir()]:
        if path.is_file() and path.suffix != ".py":
            text = path.read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                if ".env" in line and ("sed " in line or "awk " in line or "grep " in line):
                    pytest.fail(f"{path.relative_to(project)} reads .env itself: {line.strip()}")


# ---------------------------------------------------------------------------------------
# A hung nvidia-smi
# ---------------------------------------------------------------------------------------

HUNG_SMI = "#!/bin/sh\nsleep 60\n"  # a child that keeps the pipes open, as a stuck driver call would


@pytest.fixture
def hung_smi(project, tmp_path) -> dict:
    """A shell where nvidia-smi never answers, and GPU_DEVICES naming a GPU (so each make
    target asks nvidia-smi for the host's GPUs)."""
    set_line(project, "GPU_DEVICES", "GPU_DEVICES=0")
    set_line(project, "COMPOSE_FILE", "COMPOSE_FILE=compose.yaml:compose.gpu.yaml")
    return {**os.environ, "PATH": f"{fake_bin(tmp_path, **{'nvidia-smi': HUNG_SMI})}{os.pathsep}{os.environ['PATH']}"}


def test_a_hung_nvidia_smi_costs_setup_seconds_and_is_named(project, hung_smi):
    start = time.monotonic()
    result = run(SETUP, cwd=project, env=hung_smi, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode == 0
    assert "WARNING: nvidia-smi did not answer within 5 s: the NVIDIA driver or a GPU hangs" in result.stderr
    assert elapsed < 15, f"setup waited {elapsed:.0f} s on nvidia-smi"  # 31 s before; the limit is 5 s


def test_doctor_names_a_hung_nvidia_smi_within_seconds(project, hung_smi):
    start = time.monotonic()
    result = run([sys.executable, "docker/doctor.py"], cwd=project, env=hung_smi, timeout=120)
    elapsed = time.monotonic() - start
    assert "FAIL  nvidia-smi did not answer within 5 s: the NVIDIA driver or a GPU hangs" in result.stdout
    assert "driver is not loaded" not in result.stdout and "WARNING: nvidia-smi" not in result.stderr
    assert elapsed < 20, f"doctor waited {elapsed:.0f} s on nvidia-smi"  # 60 s before


def test_make_jupyter_in_an_ssh_session_prints_the_tunnel_for_this_clones_port(project):
    """On a lab server reached over SSH, Jupyter listens on the server's 127.0.0.1: `make
    jupyter` prints the `ssh -L` line for this clone's port (issue #27)."""
    port = env_values(project / ".env")["JUPYTER_HOST_PORT"]
    shell = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    over_ssh = run(
        ["make", "-s", "jupyter"], cwd=project, env={**shell, "SSH_CONNECTION": "10.0.0.9 51234 10.0.0.5 2222"}
    )
    assert over_ssh.returncode == 0, over_ssh.stderr
    [tunnel] = [line.strip() for line in over_ssh.stdout.splitlines() if line.strip().startswith("ssh ")]
    assert tunnel.startswith(f"ssh -N -L {port}:127.0.0.1:{port} -p 2222 ") and tunnel.endswith("@10.0.0.5")
    on_22 = run(["make", "-s", "jupyter"], cwd=project, env={**shell, "SSH_CONNECTION": "10.0.0.9 51234 10.0.0.5 22"})
    assert " -p " not in on_22.stdout and f"-L {port}:127.0.0.1:{port} " in on_22.stdout
    local = run(["make", "-s", "jupyter"], cwd=project, env={k: v for k, v in shell.items() if k != "SSH_CONNECTION"})
    assert local.stdout.strip().splitlines() == [
        f"http://127.0.0.1:{port}/lab?token={env_values(project / '.env')['JUPYTER_TOKEN']}"
    ]
