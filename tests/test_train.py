"""The generated project's training entry point, src/<slug>/train.py started by
docker/train, on this machine's CPU: two gloo processes learn the synthetic data, write a
checkpoint and resume from it; two nodes meet on localhost; a node that cannot reach the
first one fails within RDZV_TIMEOUT naming the address. They need a Python with torch
on the host (TORCH_PYTHON, or the one running the tests; .ci/run makes one with a CPU
torch) and skip without one, except under REQUIRE_DOCKER=1 (CI), where they fail. The
TensorFlow launcher's tests need no TensorFlow; the Docker tier trains both frameworks
in their images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BENCHMARKS, TEMPLATE, run, tool
from cookiecutter.main import cookiecutter

DONE = re.compile(r"^train: done epochs=(\d+) loss_first=(\S+) loss_last=(\S+) resumed_from=(\d+)$", re.MULTILINE)
# A few seconds each on a laptop's CPU.
SMALL = ["--samples", "8192", "--batch-size", "128"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher_env(python: str, **settings: str) -> dict:
    """docker/train's settings, on the CPU whatever GPU the host has."""
    env = {key: value for key, value in os.environ.items() if key not in ("NNODES", "NODE_RANK", "NPROC_PER_NODE")}
    env.update(PYTHON=python, CUDA_VISIBLE_DEVICES="", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    env.setdefault("RDZV_ENDPOINT", f"127.0.0.1:{free_port()}")
    env.update(settings)
    return env


def train(project: Path, env: dict, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = run(["docker/train", *args], cwd=project, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, done_line(result.stdout)


def done_line(output: str) -> dict:
    [(epochs, first, last, resumed)] = DONE.findall(output)
    return {"epochs": int(epochs), "loss_first": float(first), "loss_last": float(last), "resumed_from": int(resumed)}


@pytest.fixture
def project(bake) -> Path:
    baked = bake()
    assert baked.exit_code == 0, baked.output
    return baked.project_path


def test_two_cpu_processes_learn_write_a_checkpoint_and_resume(project, torch_python):
    env = launcher_env(torch_python)
    start = time.monotonic()
    first, outcome = train(project, env, "--epochs", "3", *SMALL)
    seconds = time.monotonic() - start
    assert "docker/train: no GPU: training on the CPU with 2 processes (gloo)" in first.stdout
    assert "train: 2 process(es), gloo, on cpu" in first.stdout
    assert outcome["epochs"] == 3 and outcome["resumed_from"] == 0
    assert outcome["loss_last"] < 0.6 * outcome["loss_first"], outcome
    # One finished checkpoint, in checkpoints/ of the working directory; no temporary left.
    assert sorted(path.name for path in (project / "checkpoints").iterdir()) == ["last.pt"]
    epoch_seconds = [float(s) for s in re.findall(r"^epoch \d+/\d+ .* ([0-9.]+) s$", first.stdout, re.MULTILINE)]
    BENCHMARKS.append(
        f"train.py, 2 CPU processes (gloo), 8192 samples: {seconds:.1f} s in all, epochs "
        f"{', '.join(f'{s:.2f}' for s in epoch_seconds)} s, loss {outcome['loss_first']:.3f} -> {outcome['loss_last']:.3f}"
    )

    # A later run with more epochs picks up after the third: it runs the fourth and fifth only.
    second, resumed = train(project, launcher_env(torch_python), "--epochs", "5", *SMALL)
    assert resumed["resumed_from"] == 3 and resumed["epochs"] == 5
    assert "epoch 4/5" in second.stdout and "epoch 3/5" not in second.stdout
    assert resumed["loss_first"] == outcome["loss_first"]  # the history travels with the checkpoint
    assert resumed["loss_last"] < outcome["loss_last"]

    # One process, no torchrun: the same script, resumed from the same checkpoint.
    alone = run([torch_python, "-m", f"{project.name}.train", "--epochs", "6", *SMALL], cwd=project,
                env={**env, "PYTHONPATH": str(project / "src")}, timeout=300)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert done_line(alone.stdout)["resumed_from"] == 5


def test_two_nodes_meet_on_localhost_and_any_node_resumes(project, torch_python):
    """NNODES=2 on one machine, one CPU process each, with a checkpoint folder each (no
    shared storage): the second run resumes even when the first node's folder is gone."""
    for epochs in (2, 4):
        endpoint = f"127.0.0.1:{free_port()}"
        common = {"NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": endpoint, "RDZV_ID": f"job-{epochs}",
                  "RDZV_TIMEOUT": "60"}  # fmt: skip
        nodes = [
            subprocess.Popen(
                ["docker/train", "--epochs", str(epochs), *SMALL, "--checkpoint-dir", f"checkpoints-node{rank}"],
                cwd=project,
                env=launcher_env(torch_python, NODE_RANK=str(rank), **common),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in (1, 0)  # the other node first: it waits for the first one
        ]
        outputs = [node.communicate(timeout=300) for node in nodes]
        for node, (out, err) in zip(nodes, outputs):
            assert node.returncode == 0, out[-2000:] + err[-2000:]
        [outcome] = [done_line(out) for out, _ in outputs if DONE.search(out)]
        assert "train: 2 process(es), gloo" in "".join(out for out, _ in outputs)
        # Each node's first process keeps a copy.
        for rank in (0, 1):
            assert (project / f"checkpoints-node{rank}" / "last.pt").is_file()
        if epochs == 2:
            assert outcome["resumed_from"] == 0 and outcome["loss_last"] < outcome["loss_first"]
            shutil.rmtree(project / "checkpoints-node0")
        else:
            assert outcome["resumed_from"] == 2, outcome


def test_a_node_that_cannot_reach_the_first_fails_within_the_timeout_naming_it(project, torch_python):
    env = launcher_env(torch_python, NNODES="2", NODE_RANK="1", RDZV_ID="t", RDZV_ENDPOINT="127.0.0.1:1",
                       RDZV_TIMEOUT="5")  # fmt: skip
    start = time.monotonic()
    result = run(["docker/train", "--epochs", "1"], cwd=project, env=env, timeout=120)
    seconds = time.monotonic() - start
    assert result.returncode != 0
    assert "docker/train: no rendezvous at 127.0.0.1:1 after 5s" in result.stderr, result.stderr
    assert 5 <= seconds < 5 + 20, seconds


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"NNODES": "2", "RDZV_ENDPOINT": "node0:29500", "RDZV_ID": "j"}, "NNODES=2: set NODE_RANK"),
        ({"NNODES": "2", "NODE_RANK": "1", "RDZV_ID": "j", "RDZV_ENDPOINT": ""}, "NNODES=2: set RDZV_ENDPOINT"),
        (
            {"NNODES": "2", "NODE_RANK": "2", "RDZV_ENDPOINT": "node0:29500", "RDZV_ID": "j"},
            "NODE_RANK=2, but NNODES=2",
        ),
        ({"RDZV_ENDPOINT": "node0"}, "RDZV_ENDPOINT must be host:port"),
        ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE must be a whole number"),
        ({"PYTHON": "/nonexistent/python"}, "cannot import torch"),
    ],
)
def test_launcher_refuses_settings_it_cannot_use(project, settings, message):
    env = launcher_env(sys.executable, **settings)
    result = run(["docker/train"], cwd=project, env=env, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.fixture(scope="module")
def tf_project(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tf")
    cookiecutter(
        str(TEMPLATE), no_input=True, output_dir=str(output),
        extra_context={"framework": "tensorflow", "cuda_version": "12.5"},
    )  # fmt: skip
    [project] = output.iterdir()
    return project


def tf_launch(project: Path, **settings: str) -> subprocess.CompletedProcess:
    """docker/train of a TensorFlow project, its interpreter replaced by one that prints
    the TF_CONFIG it was given (the rendezvous check still runs in real Python)."""
    printer = project / "print-tf-config"
    printer.write_text(
        f'#!/bin/sh\ncase "$1" in -m) printf "%s" "$TF_CONFIG" ;; *) exec {sys.executable} "$@" ;; esac\n'
    )
    printer.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("NNODES", "NODE_RANK", "TF_CONFIG")}
    return run(["docker/train"], cwd=project, env={**env, "PYTHON": str(printer), **settings}, timeout=60)


def test_tensorflow_launcher_writes_tf_config_from_workers(tf_project):
    with socket.socket() as first:  # worker 0, answering the others' check
        first.bind(("127.0.0.1", 0))
        first.listen()
        worker_0 = f"127.0.0.1:{first.getsockname()[1]}"
        launched = tf_launch(tf_project, NNODES="3", NODE_RANK="2", WORKERS=f"{worker_0},node1:2222,node2:2222")
    assert launched.returncode == 0, launched.stderr
    waiting, printed = launched.stdout.splitlines()
    assert waiting.endswith(f"for the first node (NODE_RANK=0) at {worker_0}")
    config = json.loads(printed)
    assert config == {
        "cluster": {"worker": [worker_0, "node1:2222", "node2:2222"]},
        "task": {"type": "worker", "index": 2},
    }
    # One node: no cluster, MirroredStrategy; a TF_CONFIG set by hand is left as it is.
    assert tf_launch(tf_project).stdout == ""
    assert tf_launch(tf_project, NNODES="2", NODE_RANK="1", TF_CONFIG='{"mine": 1}').stdout == '{"mine": 1}'


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"NNODES": "2", "NODE_RANK": "0"}, "NNODES=2: set WORKERS to host:port of every node's worker"),
        ({"NNODES": "2", "NODE_RANK": "0", "WORKERS": "a:1"}, "WORKERS lists 1 worker(s), but NNODES=2"),
        ({"NNODES": "2", "NODE_RANK": "0", "WORKERS": "a:1,b"}, "WORKERS must be host:port, not 'b'"),
        ({"NNODES": "2", "WORKERS": "a:1,b:1"}, "NNODES=2: set NODE_RANK"),
        ({"NNODES": "2", "NODE_RANK": "1", "WORKERS": "127.0.0.1:1,b:1", "RDZV_TIMEOUT": "1"},
         "no rendezvous at 127.0.0.1:1 after 1s"),
    ],
)  # fmt: skip
def test_tensorflow_launcher_refuses_settings_it_cannot_use(tf_project, settings, message):
    launched = tf_launch(tf_project, **settings)
    assert launched.returncode != 0 and f"docker/train: {message}" in launched.stderr, launched.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "torchrun's environment is incomplete: RANK, WORLD_SIZE set"),
        (
            {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": "29500"},
            "torchrun's environment is inconsistent: RANK=2 WORLD_SIZE=2",
        ),
    ],
)  # fmt: skip
def test_train_refuses_an_inconsistent_torchrun_environment(project, torch_python, variables, message):
    env = {**launcher_env(torch_python), **variables, "PYTHONPATH": str(project / "src")}
    result = run([torch_python, "-m", f"{project.name}.train", "--epochs", "1"], cwd=project, env=env, timeout=120)
    assert result.returncode == 2 and f"train: {message}" in result.stderr, result.stderr


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_launcher_is_executable_shellcheck_clean_and_used_by_make_train(bake, framework):
    answers = {"framework": framework, "cuda_version": "12.5"} if framework == "tensorflow" else {}
    baked = bake(**answers)
    assert baked.exit_code == 0, baked.output
    project = baked.project_path
    assert os.access(project / "docker" / "train", os.X_OK)
    lint = run([tool("shellcheck"), "docker/train"], cwd=project)
    assert lint.returncode == 0, lint.stdout
    # make -n: the command, not run (no Docker needed). The extra arguments reach the script.
    dry = run(["make", "-n", "train", "ARGS=--epochs 7"], cwd=project)
    assert "docker compose exec lab docker/train --epochs 7" in dry.stdout, dry.stdout + dry.stderr
    assert "checkpoints/" in (project / ".gitignore").read_text().splitlines()
