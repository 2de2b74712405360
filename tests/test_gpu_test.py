"""gpu_test.py's timing and reporting logic, without a GPU: a fake asynchronous device
stands in for CUDA streams (work queued, the call returning at once)."""

from __future__ import annotations

import importlib.util
import queue
import threading
import time

import pytest
from conftest import TEMPLATE

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


@pytest.mark.parametrize(
    ("arch_list", "capability", "supported"),
    [
        (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"], (6, 1), False),  # Pascal, CUDA 13
        (["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], (6, 0), True),  # P100, CUDA 12.6
        (["sm_80", "sm_90", "compute_90"], (10, 0), True),  # newer GPU: PTX the driver compiles
        (["sm_80", "sm_90"], (10, 0), False),
    ],
)
def test_architecture_support(arch_list, capability, supported):
    assert gpu_test.supported_by(arch_list, *capability) is supported


def test_require_gpu_fails_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(gpu_test, "collect", lambda args: {"gpu_available": False, "no_gpu_reason": "none here"})
    assert gpu_test.main(["--json", "--require-gpu"]) == 1
    assert gpu_test.main(["--json"]) == 0
    assert "no usable GPU" in capsys.readouterr().err
