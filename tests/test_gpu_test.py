"""gpu_test.py's timing and reporting logic, without a GPU: a fake asynchronous device
stands in for CUDA streams (work queued, the call returning at once)."""

from __future__ import annotations

import importlib.util
import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TEMPLATE, template_rules
from test_readme import readme_block

spec = importlib.util.spec_from_file_location("gpu_test", TEMPLATE / "{{cookiecutter.project_slug}}" / "gpu_test.py")
gpu_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_test)

WORK_SECONDS = 0.03


class FakeAsyncDevice:
    """Like a CUDA stream: launch() queues work and returns at once; synchronize()
    returns when all queued work has run."""

    def __init__(self):
        self.work: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            seconds = self.work.get()
            time.sleep(seconds)
            self.work.task_done()

    def launch(self):
        self.work.put(WORK_SECONDS)

    def synchronize(self):
        self.work.join()


def test_timing_waits_for_asynchronous_work():
    device = FakeAsyncDevice()
    measured = gpu_test.median_seconds(device.launch, device.synchronize, repeats=3)
    assert WORK_SECONDS <= measured < WORK_SECONDS * 3
    # What a timer without synchronisation would report: the launch, not the work.
    unsynced = gpu_test.median_seconds(device.launch, lambda: None, repeats=3)
    device.synchronize()
    assert unsynced < WORK_SECONDS / 10


def test_batched_timing_reports_the_work_per_step():
    device = FakeAsyncDevice()
    per_step = gpu_test.batched_seconds(device.launch, device.synchronize, repeats=3)
    assert WORK_SECONDS * 0.9 <= per_step < WORK_SECONDS * 2


CUDA13 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]  # torch cu130 / cu132
CU128 = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.10 cu128
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
TF = ["sm_60", "sm_70", "sm_80", "sm_89", "compute_90"]  # TensorFlow 2.21
# (arch list, GPU compute capability, expected): CUDA's rule, the one torch.cuda applies.
ARCH_CASES = [
    (CUDA13, "6.1", None),  # Pascal: no CUDA 13 build has it
    (CU126, "6.1", "native"),  # GTX 1080: sm_60 code runs on 6.1
    (CU126, "5.2", "native"),  # Maxwell
    (CU126, "6.0", "native"),  # P100
    (CU128, "7.0", "native"),  # V100
    (CUDA13, "7.0", None),
    (CUDA13, "8.9", "native"),  # L4, RTX 40: sm_86 code runs on 8.9
    (CUDA13, "10.3", "native"),  # B300: sm_100 code runs on 10.3
    (CUDA13, "12.1", "native"),  # GB10: sm_120 code runs on 12.1
    (CU126, "10.0", None),  # Blackwell needs 12.8 or newer
    (CU128, "12.0", "native"),
    (CUDA13, "13.0", "ptx"),  # a newer GPU: the driver compiles compute_120
    (CUDA13, "11.0", None),  # no sm_11x, and compute_120 is newer than the GPU
    (TF, "7.5", "native"),  # T4: sm_70 code
    (TF, "8.6", "native"),  # A10, RTX 30: sm_80 code
    (TF, "9.0", "ptx"),  # H100: PTX only
    (TF, "10.0", "ptx"),
    (["sm_80", "sm_90a"], "9.0", "native"),  # `a` code runs on exactly its GPU
    (["sm_80", "sm_90a"], "10.0", None),  # ... and nowhere else
    (["sm_80", "compute_90a"], "10.0", None),
    (["sm_100f"], "10.3", None),  # `f` code, taken as exact (conservative)
    (["sm_100f"], "10.0", "native"),
    (["sm_80", "sm_90"], "10.0", None),
    (["sm_86"], "8.0", None),  # code for 8.6 does not run on 8.0
    (["garbage", "sm_", "compute_x"], "8.0", None),
    (CUDA13, "N/A", None),
]


@pytest.mark.parametrize(("arch_list", "capability", "expected"), ARCH_CASES)
def test_kernels_for_follows_cudas_rule(arch_list, capability, expected):
    assert gpu_test.kernels_for(arch_list, capability) == expected


@pytest.mark.parametrize(("arch_list", "capability", "expected"), ARCH_CASES[:4])
def test_template_rules_apply_the_same_rule(arch_list, capability, expected):
    """The default's choice and gpu_test.py's warning agree: the template uses the
    project's own function."""
    assert template_rules.arch_support(arch_list, capability) == expected


def test_require_gpu_fails_without_a_gpu(monkeypatch, capsys):
    no_gpu = {**dict.fromkeys(gpu_test.REPORT_FIELDS), "gpu_available": False, "no_gpu_reason": "none here"}
    monkeypatch.setattr(gpu_test, "collect", lambda args: no_gpu)
    assert gpu_test.main(["--json", "--require-gpu"]) == 1
    assert gpu_test.main(["--json"]) == 0
    assert "no usable GPU" in capsys.readouterr().err


def test_a_gpu_computing_wrongly_fails_the_run(monkeypatch):
    wrong = {**dict.fromkeys(gpu_test.REPORT_FIELDS), "gpu_available": True, "results_match": False}
    monkeypatch.setattr(gpu_test, "collect", lambda args: wrong)
    monkeypatch.setattr(gpu_test, "print_table", lambda report: None)
    assert gpu_test.main(["--require-gpu"]) == 1


def test_report_has_every_field_even_without_a_framework(capsys):
    """This venv has neither PyTorch nor TensorFlow: the report still has its full shape."""
    assert gpu_test.main(["--json", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == list(gpu_test.REPORT_FIELDS)
    assert report["gpu_available"] is False and report["no_gpu_reason"] == "neither PyTorch nor TensorFlow"


@pytest.mark.network
def test_the_readme_host_check_runs_in_a_fresh_venv(bake):
    """The project README's check without Docker: a throw-away venv with pip's torch (on
    Linux a CUDA build; here, with no GPU, gpu_test.py must say so and still time the CPU)."""
    project = bake().project_path
    *setup, check, cleanup = readme_block(project / "README.md", "host-gpu-test")
    assert check == ".venv-host/bin/python gpu_test.py --quick" and cleanup == "rm -rf .venv-host"
    try:
        for line in setup:
            done = shell(line, project)
            assert done.returncode == 0, f"{line}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        table = shell(check, project)
        assert table.returncode == 0, table.stderr
        assert "No GPU is usable" in table.stdout and "GFLOP/s" in table.stdout
        result = shell(f"{check} --json", project)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert list(report) == list(gpu_test.REPORT_FIELDS)
        assert report["framework"] == "pytorch" and report["gpu_available"] is False and report["gpus"] == []
        assert report["no_gpu_reason"] in (
            "torch.cuda.is_available() is False",
            "this PyTorch build has no CUDA support",
        )
        assert report["cpu_fp32_gflops"] > 0 and report["train_cpu_samples_per_s"] > 0
        assert report["speedup_fp32"] is None and report["gpu_fp32_tflops"] is None
        strict = shell(f"{check} --require-gpu", project)
        assert strict.returncode == 1 and "no usable GPU" in strict.stderr
    finally:
        assert shell(cleanup, project).returncode == 0  # a CUDA torch is 5 GB
    assert not (project / ".venv-host").exists()


def shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(line, shell=True, cwd=cwd, capture_output=True, text=True, timeout=1800, check=False)


def test_tf32_switch_uses_the_api_the_installed_torch_has():
    """torch >= 2.9 has fp32_precision, and reading allow_tf32 after mixing the two APIs
    is an error there; older torch has only allow_tf32."""

    class NewMatmul:
        fp32_precision = "ieee"

    class LegacyMatmul:
        allow_tf32 = False

    for matmul, attribute, on, off in (
        (NewMatmul(), "fp32_precision", "tf32", "ieee"),
        (LegacyMatmul(), "allow_tf32", True, False),
    ):
        torch = SimpleNamespace(backends=SimpleNamespace(cuda=SimpleNamespace(matmul=matmul)))
        gpu_test.set_tf32(torch, True)
        assert getattr(matmul, attribute) == on
        gpu_test.set_tf32(torch, False)
        assert getattr(matmul, attribute) == off
    assert not hasattr(LegacyMatmul(), "fp32_precision")
