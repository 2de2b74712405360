"""gpu_test.py's timing and reporting logic, without a GPU: a fake asynchronous device
stands in for CUDA streams (work queued, the call returning at once)."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import BENCHMARKS, TEMPLATE, template_rules
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


def test_a_failed_torch_compile_fails_the_run_and_the_verdict_says_why(monkeypatch, capsys):
    failed = {"ok": False, "seconds": None, "error": "InvalidCxxCompiler: No working C++ compiler found"}
    report = {**dict.fromkeys(gpu_test.REPORT_FIELDS), "gpu_available": False, "no_gpu_reason": "none here", "gpus": [],
              "compile_cpu": failed}  # fmt: skip
    monkeypatch.setattr(gpu_test, "collect", lambda args: report)
    assert gpu_test.main([]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-2:]
    assert last == [
        "Verdict: NO GPU: none here.",
        "Verdict: FAIL: torch.compile failed on the CPU: InvalidCxxCompiler: No working C++ compiler found.",
    ]


def test_a_gpu_triton_cannot_compile_for_is_noted_not_failed(monkeypatch, capsys):
    """The CUDA 12.6 build serves Maxwell and Pascal, which Triton (torch.compile's GPU
    backend) does not: the check says so and the run still passes."""
    skipped = {"ok": None, "seconds": None, "error": None, "skipped": "Triton needs compute capability 7.0"}
    passed = {"ok": True, "seconds": 3.0, "error": None, "skipped": None}
    report = {**dict.fromkeys(gpu_test.REPORT_FIELDS), "gpu_available": True, "results_match": True, "gpus": [],
              "compile_cpu": passed, "compile_gpu": skipped, "cpu_fp32_gflops": 10.0, "matmul_n": 512,
              "cpu_threads": 2, "gpu_fp32_seconds": 0.01, "speedup_fp32": 20.0, "matmul_big_n": 1024,
              "half_precision": "bfloat16", "gpu_fp32_tflops": 1.0, "gpu_tf32_tflops": 2.0,
              "gpu_half_tflops": 4.0}  # fmt: skip
    monkeypatch.setattr(gpu_test, "collect", lambda args: report)
    assert gpu_test.main([]) == 0
    out = capsys.readouterr().out
    assert "torch.compile, GPU           not checked: Triton needs compute capability 7.0" in out
    assert "torch.compile, CPU           OK, result checked (3.0 s" in out
    assert "FAIL" not in out


def project_gpu_test(tmp_path: Path) -> Path:
    """The template's gpu_test.py, rendered (it has no Jinja of its own), in a folder."""
    path = tmp_path / "gpu_test.py"
    path.write_text((TEMPLATE / "{{cookiecutter.project_slug}}" / "gpu_test.py").read_text())
    return path


def test_torch_compile_is_checked_and_the_second_run_loads_it_from_the_cache(tmp_path, torch_python):
    """The real torch.compile on the CPU (Inductor compiles C++ with the host's g++), the
    result checked against eager mode; the second run, a new process, is served from the
    cache folder (Inductor's own hit counter), its compiled files reused unchanged. The
    timings are printed, not asserted: on a shared machine they say little."""
    script = project_gpu_test(tmp_path)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "CUDA_VISIBLE_DEVICES": ""}
    checks, compiled = [], []
    for _ in range(2):
        result = subprocess.run([torch_python, str(script), "--quick", "--json"], capture_output=True, text=True,
                                env=env, timeout=600, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        checks.append(json.loads(result.stdout)["compile_cpu"])
        compiled.append({path: path.stat().st_mtime_ns for path in (tmp_path / "inductor").rglob("*.so")})
    first, second = checks
    assert first["ok"] and second["ok"], checks
    assert compiled[0], "no compiled kernel in the cache folder"
    assert (first["from_cache"], second["from_cache"]) == (False, True), checks
    assert compiled[1] == compiled[0]  # the same files, not compiled again
    BENCHMARKS.append(
        f"gpu_test torch.compile check, CPU: {first['seconds']:.1f} s cold, {second['seconds']:.1f} s cached"
    )


def test_torch_compile_without_a_compiler_fails_naming_it(tmp_path, torch_python):
    script = project_gpu_test(tmp_path)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "CXX": "/nonexistent/g++",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    result = subprocess.run([torch_python, str(script), "--quick"], capture_output=True, text=True, env=env,
                            timeout=600, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "torch.compile, CPU           FAILED: " in result.stdout
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(
            "Verdict: FAIL: torch.compile failed on the CPU: InductorError: InvalidCxxCompiler: No working C++ compiler"
        )
    ), result.stdout[-2000:]
    skipped = subprocess.run([torch_python, str(script), "--quick", "--json", "--no-compile"], capture_output=True,
                             text=True, env=env, timeout=600, check=False)  # fmt: skip
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["compile_cpu"] is None


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


# ---------------------------------------------------------------------------------------
# The framework's own log: kept aside, shown when it may explain a failure
# ---------------------------------------------------------------------------------------


def test_stderr_kept_aside_takes_what_c_code_and_child_processes_write(capfd):
    """Written to file descriptor 2 itself, as TensorFlow's C++ logging and absl do (and
    the programs it starts), not through sys.stderr: kept out of stderr, into the lines."""
    capfd.readouterr()
    with gpu_test.stderr_kept_aside() as log:
        os.write(2, b"E0000 cuda_executor.cc:1309] failed call to cuInit: UNKNOWN ERROR (303)\n")
        child = "import os; os.write(2, b'child: oneDNN custom operations are on\\n')"
        subprocess.run([sys.executable, "-c", child], check=True)
        os.write(2, b"not UTF-8: \xff\xfe\n")
    assert capfd.readouterr().err == ""
    assert log == [
        "E0000 cuda_executor.cc:1309] failed call to cuInit: UNKNOWN ERROR (303)",
        "child: oneDNN custom operations are on",
        "not UTF-8: \ufffd\ufffd",
    ]
    os.write(2, b"after\n")  # stderr is back
    assert capfd.readouterr().err == "after\n"


def test_stderr_kept_aside_gives_the_lines_back_when_the_block_fails(capfd):
    """A traceback keeps what the libraries said before it."""
    capfd.readouterr()
    with pytest.raises(RuntimeError), gpu_test.stderr_kept_aside():
        os.write(2, b"W0000 Cannot dlopen some GPU libraries\n")
        raise RuntimeError("no kernel image is available")
    assert capfd.readouterr().err == "W0000 Cannot dlopen some GPU libraries\n"


# A TensorFlow stand-in: records the environment it is imported with, writes to fd 2 what
# the real one writes while loading and looking for GPUs, and answers the calls
# gpu_test.py makes (instantly; FAKE_TF_GPUS=1 gives it a GPU).
FAKE_TENSORFLOW = r"""
import contextlib
import json
import os

with open(os.environ["FAKE_TF_RECORD"], "w") as record:
    json.dump({"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL")}, record)
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"E0000 cuda_dnn.cc:8310] Unable to register cuDNN factory: one has already been registered\n")
os.write(2, b"I0000 oneDNN custom operations are on. You may see slightly different numerical results\n")

__version__ = "2.99.0"
float32, bfloat16, int32 = "float32", "bfloat16", "int32"


class PhysicalDevice:
    name = "/physical_device:GPU:0"


GPUS = [PhysicalDevice()] if os.environ.get("FAKE_TF_GPUS") else []


class Tensor:
    def numpy(self):
        return 0.0


def tensor(*args, **kwargs):
    return Tensor()


matmul = reduce_sum = identity = tensor


def device(name):
    return contextlib.nullcontext()


class random:
    normal = uniform = staticmethod(tensor)


class config:
    @staticmethod
    def list_physical_devices(kind):
        if not GPUS:
            os.write(2, b"E0000 cuda_executor.cc:1309] failed call to cuInit: CUDA_ERROR_NO_DEVICE\n")
        return GPUS

    class threading:
        get_intra_op_parallelism_threads = staticmethod(lambda: 2)

    class experimental:
        set_memory_growth = staticmethod(lambda gpu, on: None)
        get_device_details = staticmethod(lambda gpu: {"device_name": "Fake GPU", "compute_capability": (8, 0)})
        enable_tensor_float_32_execution = staticmethod(lambda on: None)


class sysconfig:
    get_build_info = staticmethod(
        lambda: {"is_cuda_build": True, "cuda_version": "12.5", "cudnn_version": "9", "cuda_compute_capabilities": ["sm_80"]}
    )


class Model:
    def compile(self, **kwargs):
        pass

    def train_on_batch(self, inputs, targets):
        return 0.0


class keras:
    Input = staticmethod(tensor)
    Sequential = staticmethod(lambda layers: Model())

    class utils:
        set_random_seed = staticmethod(lambda seed: None)

    class layers:
        Dense = staticmethod(tensor)

    class optimizers:
        Adam = staticmethod(tensor)

    class losses:
        SparseCategoricalCrossentropy = staticmethod(tensor)
"""
NOISE = ("absl::InitializeLog()", "Unable to register cuDNN factory", "oneDNN custom operations", "cuInit")


def run_with_fake_tensorflow(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str, dict]:
    """gpu_test.py on the TensorFlow stand-in: exit status, stdout and stderr together (in
    the order written), stdout alone, and the environment the import saw."""
    fake = tmp_path / "fake-site"
    (fake / "tensorflow").mkdir(parents=True, exist_ok=True)
    (fake / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    (fake / "numpy.py").write_text("def allclose(a, b, rtol=0.0, atol=0.0):\n    return True\n")
    record = tmp_path / "record.json"
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    script = str(TEMPLATE / "{{cookiecutter.project_slug}}" / "gpu_test.py")
    cmd = [sys.executable, script, "--quick", "--size", "8", *args]
    full_env = {**base, "PYTHONPATH": str(fake), "FAKE_TF_RECORD": str(record), **env}
    both = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    alone = subprocess.run(cmd, env=full_env, capture_output=True, text=True, check=False)
    assert alone.returncode == both.returncode
    return both.returncode, both.stdout, alone.stdout, json.loads(record.read_text())


def test_tensorflow_noise_stays_out_of_a_passing_run(tmp_path):
    code, output, _, seen = run_with_fake_tensorflow(tmp_path, FAKE_TF_GPUS="1")
    assert code == 0, output
    assert seen["TF_CPP_MIN_LOG_LEVEL"] == "1"  # set before the import: no INFO notes
    assert not [noise for noise in NOISE if noise in output], output
    assert output.rstrip().splitlines()[-1].startswith("Verdict: OK: Fake GPU computes correctly, "), output


def test_verbose_shows_the_tensorflow_log_above_the_verdict(tmp_path):
    code, output, _, seen = run_with_fake_tensorflow(tmp_path, "--verbose", FAKE_TF_GPUS="1")
    assert code == 0, output
    assert seen["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert "TensorFlow's own log, kept aside while it ran (--verbose):" in output
    assert "  | E0000 cuda_dnn.cc:8310] Unable to register cuDNN factory" in output
    assert output.index("Unable to register cuDNN factory") < output.index("\nEnvironment\n")
    assert output.rstrip().splitlines()[-1].startswith("Verdict: OK: "), output


def test_a_failed_gpu_check_shows_the_tensorflow_log_and_ends_with_the_verdict(tmp_path):
    code, output, _, _ = run_with_fake_tensorflow(tmp_path, "--require-gpu")
    assert code == 1
    assert "TensorFlow's own log, kept aside while it ran (the GPU check failed):" in output
    assert "  | E0000 cuda_executor.cc:1309] failed call to cuInit: CUDA_ERROR_NO_DEVICE" in output
    assert "gpu_test: no usable GPU (--require-gpu)" in output
    assert output.rstrip().splitlines()[-1] == (
        "Verdict: NO GPU: TensorFlow found no GPU (its log says which CUDA library it could not load); "
        "the benchmark ran on the CPU only."
    )


def test_a_users_tf_log_level_wins(tmp_path):
    _, _, _, seen = run_with_fake_tensorflow(tmp_path, FAKE_TF_GPUS="1", TF_CPP_MIN_LOG_LEVEL="3")
    assert seen["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_json_stays_json_and_the_log_goes_to_stderr_on_failure(tmp_path):
    _, output, stdout, _ = run_with_fake_tensorflow(tmp_path, "--json")
    assert json.loads(stdout)["gpu_available"] is False
    assert "failed call to cuInit" in output  # on stderr, where no JSON reader looks
    _, output, stdout, _ = run_with_fake_tensorflow(tmp_path, "--json", FAKE_TF_GPUS="1")
    assert json.loads(stdout)["gpu_available"] is True
    assert json.loads(output)["gpu_available"] is True  # JSON alone, on both streams together
