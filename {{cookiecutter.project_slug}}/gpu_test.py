"""GPU self-test: which GPU and CUDA the framework really uses, and how much faster the
GPU is than the CPU on the same work, measured correctly.

    python gpu_test.py                 # report and benchmark, readable table
    python gpu_test.py --quick         # small sizes, a few seconds (CI, first check)
    python gpu_test.py --json          # the same as JSON, for scripts
    python gpu_test.py --require-gpu   # exit 1 when no GPU is usable

GPU work is asynchronous: a timer around a kernel launch measures the launch, not the
work. Every GPU timing here synchronises the device before the clock starts and after
the work ends, after a warm-up run, and reports the median of several repetitions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

# /dev/shm below this makes DataLoader workers die with "Bus error" on real datasets.
MIN_SHM_BYTES = 1 << 30

NO_GPU_HINTS = [
    "started without compose.gpu.yaml? (COMPOSE_FILE in .env must list it)",
    (
        "host: does `nvidia-smi` work? Is the NVIDIA Container Toolkit installed "
        "(`docker info | grep -i nvidia` lists the runtime)?"
    ),
    "driver too old for this CUDA build? Compare `nvidia-smi` (CUDA Version) with 'CUDA build' above",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GPU self-test and CPU/GPU benchmark.")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 when no GPU is usable")
    parser.add_argument("--size", type=int, help="matrix size n for the n x n product (default 4096, quick 1024)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per measurement (median reported)")
    return parser.parse_args(argv)


def median_seconds(run, sync, repeats: int, warmup: int = 1) -> float:
    """Median wall time of run(), with sync() before the clock starts and before it stops."""
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shm_report() -> dict:
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return {"shm_bytes": None, "shm_ok": None}
    size = stats.f_frsize * stats.f_blocks
    return {"shm_bytes": size, "shm_ok": size >= MIN_SHM_BYTES}


def driver_version() -> str | None:
    """The host driver as nvidia-smi reports it (present in GPU containers)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def torch_report(args: argparse.Namespace) -> dict:
    import torch

    n = args.size or (1024 if args.quick else 4096)
    repeats = args.repeats or (3 if args.quick else 10)
    report = {
        "framework": "pytorch",
        "framework_version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": driver_version(),
        "gpus": [],
        "gpu_available": torch.cuda.is_available(),
        "matmul_n": n,
        "cpu_threads": torch.get_num_threads(),
    }

    # The same fp32 product on the CPU, the baseline for the speedup.
    a_cpu = torch.randn(n, n)
    b_cpu = torch.randn(n, n)
    cpu_seconds = median_seconds(lambda: a_cpu @ b_cpu, lambda: None, max(1, repeats // 3))
    report["cpu_fp32_seconds"] = cpu_seconds
    report["cpu_fp32_gflops"] = 2 * n**3 / cpu_seconds / 1e9

    if not report["gpu_available"]:
        report["no_gpu_reason"] = "torch.cuda.is_available() is False"
        return report

    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        capability = f"sm_{props.major}{props.minor}"
        report["gpus"].append(
            {
                "index": index,
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                # Either native code for this GPU or PTX the driver can compile for it.
                "supported_by_build": capability in arch_list
                or any(
                    arch.startswith("compute_") and int(arch[8:]) <= props.major * 10 + props.minor
                    for arch in arch_list
                ),
            }
        )

    device = torch.device("cuda:0")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 is not the same product
    a_gpu = a_cpu.to(device)
    b_gpu = b_cpu.to(device)
    gpu_seconds = median_seconds(lambda: a_gpu @ b_gpu, torch.cuda.synchronize, repeats)
    report["gpu_fp32_seconds"] = gpu_seconds
    report["gpu_fp32_tflops"] = 2 * n**3 / gpu_seconds / 1e12
    report["speedup_fp32"] = cpu_seconds / gpu_seconds
    # The GPU must compute what the CPU computes.
    report["results_match"] = bool(torch.allclose((a_gpu @ b_gpu).cpu(), a_cpu @ b_cpu, rtol=1e-3, atol=1e-2 * n**0.5))
    return report


def tensorflow_report(args: argparse.Namespace) -> dict:
    # Before the import: TensorFlow's C++ INFO lines would bury the report.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    n = args.size or (1024 if args.quick else 4096)
    repeats = args.repeats or (3 if args.quick else 10)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Take GPU memory as needed instead of all of it at start (TensorFlow's default),
        # so notebooks and scripts can share the GPU. Must precede any GPU use.
        tf.config.experimental.set_memory_growth(gpu, True)
    build = tf.sysconfig.get_build_info()
    arch_list = build.get("cuda_compute_capabilities", [])
    report = {
        "framework": "tensorflow",
        "framework_version": tf.__version__,
        "cuda_build": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "driver": driver_version(),
        "gpus": [],
        "gpu_available": bool(gpus),
        "matmul_n": n,
        "cpu_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
    }
    for index, gpu in enumerate(gpus):
        details = tf.config.experimental.get_device_details(gpu)
        major, minor = details.get("compute_capability", (0, 0))
        report["gpus"].append(
            {
                "index": index,
                "name": details.get("device_name", gpu.name),
                "compute_capability": f"{major}.{minor}",
                "memory_gib": None,  # TensorFlow reports it only after allocating
                "supported_by_build": f"sm_{major}{minor}" in arch_list
                or any(arch.startswith("compute_") and int(arch[8:]) <= major * 10 + minor for arch in arch_list),
            }
        )

    def product_on(device: str):
        with tf.device(device):
            a = tf.random.normal((n, n), seed=1)
            b = tf.random.normal((n, n), seed=2)
            # .numpy() waits for the result: the clock stops when the work is done.
            return a, b, lambda: tf.reduce_sum(tf.matmul(a, b)).numpy()

    a_cpu, b_cpu, run_cpu = product_on("/CPU:0")
    cpu_seconds = median_seconds(run_cpu, lambda: None, max(1, repeats // 3))
    report["cpu_fp32_seconds"] = cpu_seconds
    report["cpu_fp32_gflops"] = 2 * n**3 / cpu_seconds / 1e9
    if not gpus:
        report["no_gpu_reason"] = (
            "this TensorFlow build has no CUDA support"
            if not build.get("is_cuda_build")
            else "TensorFlow found no GPU (TF_CPP_MIN_LOG_LEVEL=0 shows which CUDA library it could not load)"
        )
        return report
    tf.config.experimental.enable_tensor_float_32_execution(False)  # fp32 means fp32
    with tf.device("/GPU:0"):
        a_gpu, b_gpu = tf.identity(a_cpu), tf.identity(b_cpu)
        gpu_seconds = median_seconds(lambda: tf.reduce_sum(tf.matmul(a_gpu, b_gpu)).numpy(), lambda: None, repeats)
        gpu_result = tf.matmul(a_gpu, b_gpu).numpy()
    report["gpu_fp32_seconds"] = gpu_seconds
    report["gpu_fp32_tflops"] = 2 * n**3 / gpu_seconds / 1e12
    report["speedup_fp32"] = cpu_seconds / gpu_seconds
    with tf.device("/CPU:0"):
        cpu_result = tf.matmul(a_cpu, b_cpu).numpy()
    report["results_match"] = bool(np.allclose(gpu_result, cpu_result, rtol=1e-3, atol=1e-2 * n**0.5))
    return report


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def collect(args: argparse.Namespace) -> dict:
    report = {"python": platform.python_version(), "machine": platform.machine(), **shm_report()}
    if installed("torch"):
        report.update(torch_report(args))
    elif installed("tensorflow"):
        report.update(tensorflow_report(args))
    else:
        report.update({"framework": None, "gpu_available": False, "no_gpu_reason": "neither PyTorch nor TensorFlow"})
    return report


def print_table(report: dict) -> None:
    def row(label: str, value: object) -> None:
        print(f"  {label:<26} {value}")

    print("Environment")
    row("Python", f"{report['python']} ({report['machine']})")
    row("Framework", f"{report.get('framework')} {report.get('framework_version', '')}")
    row("CUDA build", report.get("cuda_build") or "none (CPU-only build)")
    row("cuDNN", report.get("cudnn") or "-")
    row("NVIDIA driver", report.get("driver") or "not visible (no GPU in this container)")
    shm = report.get("shm_bytes")
    row("/dev/shm", f"{shm / 2**30:.1f} GiB" if shm else "unknown")
    if report.get("shm_ok") is False:
        print("  WARNING: /dev/shm is small; DataLoader workers may die with 'Bus error'. Raise SHM_SIZE in .env.")

    print("\nGPUs")
    if not report["gpu_available"]:
        print(f"  No GPU is usable: {report.get('no_gpu_reason')}.")
        print("  If this machine has an NVIDIA GPU, check:")
        for hint in NO_GPU_HINTS:
            print(f"   - {hint}")
    for gpu in report.get("gpus", []):
        memory = f", {gpu['memory_gib']} GiB" if gpu["memory_gib"] else ""
        row(f"[{gpu['index']}] {gpu['name']}", f"compute {gpu['compute_capability']}{memory}")
        if not gpu["supported_by_build"]:
            print(
                f"  WARNING: this {report['framework']} build has no kernels for compute {gpu['compute_capability']}; "
                "choose a CUDA build that supports this GPU."
            )

    if report.get("framework") == "tensorflow" and report["gpu_available"]:
        print("  GPU memory growth is on: TensorFlow takes GPU memory as it needs it, not all at start.")

    if "cpu_fp32_gflops" in report:
        n = report["matmul_n"]
        print(f"\nBenchmark: fp32 matrix product, n = {n} (median, synchronised)")
        row(
            f"CPU ({report['cpu_threads']} threads)",
            f"{report['cpu_fp32_seconds'] * 1e3:9.2f} ms  {report['cpu_fp32_gflops']:10.1f} GFLOP/s",
        )
        if report["gpu_available"]:
            row("GPU 0", f"{report['gpu_fp32_seconds'] * 1e3:9.2f} ms  {report['gpu_fp32_tflops'] * 1e3:10.1f} GFLOP/s")
            row("Speedup GPU / CPU", f"{report['speedup_fp32']:.1f}x")
            if not report["results_match"]:
                print("  WARNING: GPU and CPU results differ: the GPU computes wrongly.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = collect(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    if args.require_gpu and not report["gpu_available"]:
        print("gpu_test: no usable GPU (--require-gpu)", file=sys.stderr)
        return 1
    if report["gpu_available"] and not report.get("results_match", True):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
