"""GPU self-test: which GPU, driver and CUDA the framework really uses, and how fast the
GPU is, against the CPU, on the same work, measured correctly.

    python gpu_test.py                 # report and benchmark, readable table
    python gpu_test.py --quick         # small sizes, a few seconds (CI, first check)
    python gpu_test.py --json          # the same as JSON, for scripts
    python gpu_test.py --require-gpu   # exit 1 when no GPU is usable
    python gpu_test.py --verbose       # also the framework's own log (CUDA, cuDNN, XLA notes)
    python gpu_test.py --no-compile    # without the torch.compile check (seconds the first time)
    torchrun --nproc-per-node 2 gpu_test.py --allreduce   # all-reduce check (NCCL or gloo)

GPU work is asynchronous: a timer around a kernel launch measures the launch, not the
work (about 0.2 ms for a product that takes 22 ms). Every timing here runs the work
once to warm up, synchronises the device before the clock starts and after the work
ends, repeats, and reports the median. Matrix products are timed in batches long
enough that launch overhead does not count.

The framework's own log (TensorFlow's C++ notes and errors, PyTorch's warnings) is kept
aside while it runs and shown only when the GPU check fails, or with --verbose; the
verdict is always the last thing printed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# Triton, torch.compile's GPU backend, compiles for Volta (7.0) and newer only.
TRITON_MIN_CAPABILITY = (7, 0)
# /dev/shm below this makes DataLoader workers die with "Bus error" on real datasets.
MIN_SHM_BYTES = 1 << 30
# A timed batch of GPU work lasts at least this long, so launch overhead is negligible.
MIN_BATCH_SECONDS = 0.05
# A driver version as nvidia-smi prints it; anything else is no answer.
DRIVER_VERSION = re.compile(r"[0-9]+(\.[0-9]+)+")

# Every key of the JSON report, always present, so scripts can rely on its shape: null
# where nothing was measured (no GPU: `no_gpu_reason` says why; or a measurement the
# framework does not offer, e.g. pinned copies in TensorFlow).
REPORT_FIELDS = (
    "python", "machine", "shm_bytes", "shm_ok",
    "framework", "framework_version", "cuda_build", "cudnn", "driver",
    "visible_devices", "gpus", "gpu_available", "no_gpu_reason",
    "matmul_n", "cpu_threads", "cpu_fp32_seconds", "cpu_fp32_gflops",
    "gpu_fp32_seconds", "speedup_fp32", "results_match",
    "matmul_big_n", "half_precision", "gpu_fp32_tflops", "gpu_tf32_tflops", "gpu_half_tflops",
    "h2d_pinned_gbps", "d2d_copy_tbps",
    "train_cpu_samples_per_s", "train_gpu_samples_per_s", "train_speedup",
    "allreduce", "compile_cpu", "compile_gpu",
)  # fmt: skip

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
    parser.add_argument("--size", type=int, help="n for the CPU/GPU n x n product (default 4096, quick 512)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per measurement (median reported)")
    parser.add_argument("--allreduce", action="store_true", help="all-reduce check; run it under torchrun")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile check (PyTorch; seconds the first time)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the framework's own log (CUDA, cuDNN and XLA notes), kept aside unless the GPU check fails",
    )
    return parser.parse_args(argv)


def decoded(data: bytes) -> str:
    """Output of a program or library as text: bytes that are not UTF-8 (a GPU name in
    Latin-1, a garbled answer) become U+FFFD instead of an exception."""
    return data.decode("utf-8", errors="replace")


def run_text(cmd: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    """cmd's outcome with its output as text, or None when it cannot run or hangs."""
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return subprocess.CompletedProcess(cmd, result.returncode, decoded(result.stdout), decoded(result.stderr))


@contextlib.contextmanager
def stderr_kept_aside():
    """File descriptor 2 goes to a temporary file for the duration; yields the list that
    receives its lines at the end. The C++ libraries under a framework (TensorFlow's
    logging, absl, cuInit errors) write to fd 2 directly, past sys.stderr. When the
    block raises, the lines go back to stderr first: a traceback keeps its context."""
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep out of the way
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        raised = True
        try:
            yield lines
            raised = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(decoded(sink.read()).splitlines())
            if raised and lines:
                print("\n".join(lines), file=sys.stderr, flush=True)


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


def batched_seconds(step, sync, repeats: int) -> float:
    """Seconds per step(): steps run back to back in batches of at least MIN_BATCH_SECONDS,
    timed with synchronisation, median over the batches."""
    single = median_seconds(step, sync, 1)
    batch = max(1, math.ceil(MIN_BATCH_SECONDS / max(single, 1e-9)))

    def run_batch():
        for _ in range(batch):
            step()

    return median_seconds(run_batch, sync, repeats) / batch


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
    result = run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=20)
    lines = result.stdout.strip().splitlines() if result is not None and result.returncode == 0 else []
    return lines[0].strip() if lines and DRIVER_VERSION.fullmatch(lines[0].strip()) else None


# An entry of torch.cuda.get_arch_list() or TensorFlow's cuda_compute_capabilities: sm_XY
# native code, compute_XY PTX; an `a` or `f` suffix marks code for exactly one GPU.
ARCH_RE = re.compile(r"(sm|compute)_(\d+)([af]?)\Z")


def kernels_for(arch_list: list[str], capability: str) -> str | None:
    """How a build compiled for arch_list runs on a GPU of this compute capability:
    "native", "ptx" (the driver compiles the build's PTX on first use of each kernel:
    slow once, then cached) or None (no kernels: the first GPU operation fails).

    CUDA's rule, the one torch.cuda applies: native code for X.y runs on X.z for z >= y;
    PTX for a capability up to the GPU's is compiled by the driver; code for an
    `a`/`f`-suffixed architecture runs only on that exact GPU. (The template's default
    build and its notes, and docker/doctor.py, apply this same function.)
    """
    parts = str(capability).strip().split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    gpu = (int(parts[0]), int(parts[1]))
    found = None
    for arch in arch_list:
        match = ARCH_RE.match(str(arch).strip())
        if not match:
            continue
        kind, number, suffix = match.groups()
        built = divmod(int(number), 10)
        if suffix:
            fits = built == gpu
        elif kind == "sm":
            fits = built[0] == gpu[0] and built[1] <= gpu[1]
        else:
            fits = built <= gpu
        if fits and kind == "sm":
            return "native"
        if fits:
            found = "ptx"
    return found


# ---------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------


def torch_report(args: argparse.Namespace) -> dict:
    import torch

    n = args.size or (512 if args.quick else 4096)
    big = 1024 if args.quick else 8192  # GPU throughput per precision
    repeats = args.repeats or (3 if args.quick else 7)
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

    # The fp32 product on the CPU: the baseline of the speedup.
    a_cpu, b_cpu = torch.randn(n, n), torch.randn(n, n)
    cpu_seconds = median_seconds(lambda: a_cpu @ b_cpu, lambda: None, max(1, repeats // 2))
    report["cpu_fp32_seconds"] = cpu_seconds
    report["cpu_fp32_gflops"] = 2 * n**3 / cpu_seconds / 1e9
    report["train_cpu_samples_per_s"] = train_samples_per_second(torch, "cpu", args.quick, repeats)
    if not args.no_compile:
        report["compile_cpu"] = compile_check(torch, "cpu")

    if not report["gpu_available"]:
        report["no_gpu_reason"] = (
            "this PyTorch build has no CUDA support"
            if torch.version.cuda is None
            else "torch.cuda.is_available() is False"
        )
        return report

    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        report["gpus"].append(
            {
                "index": index,
                "name": props.name,
                # The UUID nvidia-smi -L and GPU_DEVICES use (torch prints it without "GPU-").
                "uuid": f"GPU-{props.uuid}" if getattr(props, "uuid", None) else None,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "kernels": kernels_for(arch_list, f"{props.major}.{props.minor}"),
            }
        )

    device = torch.device("cuda:0")
    sync = torch.cuda.synchronize
    set_tf32(torch, False)  # fp32 means fp32: TF32 is another product

    # The same fp32 product as on the CPU, for the speedup; the GPU must agree with the CPU.
    a_gpu, b_gpu = a_cpu.to(device), b_cpu.to(device)
    gpu_seconds = batched_seconds(lambda: a_gpu @ b_gpu, sync, repeats)
    report["gpu_fp32_seconds"] = gpu_seconds
    report["speedup_fp32"] = cpu_seconds / gpu_seconds
    report["results_match"] = bool(torch.allclose((a_gpu @ b_gpu).cpu(), a_cpu @ b_cpu, rtol=1e-3, atol=1e-2 * n**0.5))

    # Throughput per precision at a size that fills the GPU.
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    report["matmul_big_n"] = big
    report["half_precision"] = str(half).removeprefix("torch.")
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("half", half, False)):
        set_tf32(torch, tf32)
        a = torch.randn(big, big, device=device, dtype=dtype)
        b = torch.randn(big, big, device=device, dtype=dtype)
        seconds = batched_seconds(lambda a=a, b=b: a @ b, sync, repeats)
        report[f"gpu_{label}_tflops"] = 2 * big**3 / seconds / 1e12
        del a, b
    set_tf32(torch, False)

    # Memory bandwidth: pinned host-to-device, and device-to-device copies (read + write).
    size = (64 if args.quick else 1024) << 20
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(size, dtype=torch.uint8, device=device)
    h2d = batched_seconds(lambda: dst.copy_(host, non_blocking=True), sync, repeats)
    report["h2d_pinned_gbps"] = size / h2d / 1e9
    src = torch.empty(size, dtype=torch.uint8, device=device)
    d2d = batched_seconds(lambda: dst.copy_(src), sync, repeats)
    report["d2d_copy_tbps"] = 2 * size / d2d / 1e12

    report["train_gpu_samples_per_s"] = train_samples_per_second(torch, "cuda", args.quick, repeats)
    report["train_speedup"] = report["train_gpu_samples_per_s"] / report["train_cpu_samples_per_s"]
    if not args.no_compile:
        capability = torch.cuda.get_device_capability(0)
        if capability >= TRITON_MIN_CAPABILITY:
            report["compile_gpu"] = compile_check(torch, "cuda")
        else:  # a GPU this build serves, but Triton (torch.compile's GPU backend) does not
            report["compile_gpu"] = {
                "ok": None, "seconds": None, "error": None,
                "skipped": f"Triton, torch.compile's GPU backend, needs compute capability 7.0 or newer "
                f"(this GPU: {capability[0]}.{capability[1]}); eager mode is unaffected",
            }  # fmt: skip
    if torch.cuda.device_count() > 1:
        report["allreduce"] = launch_allreduce(torch.cuda.device_count(), args.quick)
    return report


def compile_check(torch, device: str) -> dict:
    """torch.compile of a small function on `device`, its result checked against the same
    function run eagerly: {"ok", "seconds" (compiling and the first call), "from_cache"
    (Inductor served the compiled code from its cache: no compiling), "error",
    "skipped" (why it was not run: null here)}.
    Inductor compiles C++ for the CPU and Triton kernels for a GPU (Triton builds a C
    helper the first time): it needs the compiler and Python's headers the image holds.
    Compiled code is cached (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR: cache/), so a
    second run, in a new process or container, loads it instead of compiling again."""

    def function(x, y):
        return torch.nn.functional.gelu(x @ y) + torch.sin(x).sum(dim=1, keepdim=True)

    x = torch.randn(64, 64, device=device)
    y = torch.randn(64, 64, device=device)
    hits, misses = inductor_cache_counts()
    start = time.perf_counter()
    try:
        result = torch.compile(function)(x, y)
        if device != "cpu":
            torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - any failure is the report's answer
        return {"ok": False, "seconds": None, "from_cache": None, "error": first_line(error), "skipped": None}
    seconds = time.perf_counter() - start
    now_hits, now_misses = inductor_cache_counts()
    from_cache = now_hits > hits and now_misses == misses
    if not torch.allclose(result, function(x, y), rtol=1e-4, atol=1e-4):
        error = "the compiled function's result differs from eager mode"
        return {"ok": False, "seconds": seconds, "from_cache": from_cache, "error": error, "skipped": None}
    return {"ok": True, "seconds": seconds, "from_cache": from_cache, "error": None, "skipped": None}


def inductor_cache_counts() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses so far in this process (torch counts
    them in torch._dynamo.utils.counters; zeros where a torch has no such counters)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0, 0
    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def first_line(error: BaseException, limit: int = 240) -> str:
    """An exception as one line: its type and its message's first line (torch's compile
    errors name their cause there, e.g. "InvalidCxxCompiler: No working C++ compiler")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def set_tf32(torch, enabled: bool) -> None:
    """TF32 for float32 matrix products on or off, with the API the installed torch has
    (torch >= 2.9: fp32_precision; mixing it with the older allow_tf32 is an error there)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled


def train_samples_per_second(torch, device: str, quick: bool, repeats: int) -> float:
    """A real training step on random data: a small MLP, forward, backward and Adam."""
    width, batch = (256, 256) if quick else (2048, 1024)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = torch.randn(batch, width, device=device)
    targets = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return batch / batched_seconds(step, sync, max(1, repeats // 2))


def launch_allreduce(processes: int, quick: bool) -> dict:
    """The all-reduce check on every GPU, launched the way multi-GPU training is: torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd += [__file__, "--allreduce", "--json", *(["--quick"] if quick else [])]
    result = run_text(cmd, timeout=600)
    if result is None:
        return {"ok": False, "error": "torchrun did not start, or ran past 10 minutes"}
    lines = result.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if result.returncode == 0 and lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"ok": False, "error": (result.stderr or result.stdout)[-2000:] or f"exit status {result.returncode}"}
    return answer


def allreduce_check(args: argparse.Namespace) -> dict:
    """One process per GPU (NCCL) or per CPU process (gloo): all-reduce a buffer, check
    the sum, and report the bus bandwidth as NCCL's tests define it."""
    import torch
    import torch.distributed as dist

    use_gpu = torch.cuda.is_available()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_gpu else "gloo", device_id=device if use_gpu else None)
    try:
        elements = (1 << 20 if args.quick else 64 << 20) // 4  # float32
        buffer = torch.full((elements,), float(rank + 1), device=device)
        dist.all_reduce(buffer)
        expected = world * (world + 1) / 2
        correct = bool(torch.all(buffer == expected))
        sync = torch.cuda.synchronize if use_gpu else (lambda: None)
        seconds = median_seconds(lambda: dist.all_reduce(buffer), sync, args.repeats or (3 if args.quick else 10))
        algbw = elements * 4 / seconds / 1e9
        report = {
            "ok": correct,
            "backend": dist.get_backend(),
            "world_size": world,
            "bytes": elements * 4,
            "seconds": seconds,
            "algbw_gbps": algbw,
            "busbw_gbps": algbw * 2 * (world - 1) / world,
        }
    finally:
        dist.destroy_process_group()
    return report if rank == 0 else {}


# ---------------------------------------------------------------------------------------
# TensorFlow
# ---------------------------------------------------------------------------------------


def tensorflow_report(args: argparse.Namespace) -> dict:
    # Before the import, which reads it: no INFO notes (oneDNN, CPU features) unless asked
    # for; warnings and errors stay, for the log shown when the GPU check fails. A level
    # the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.verbose else "1")
    import numpy as np
    import tensorflow as tf

    n = args.size or (512 if args.quick else 4096)
    big = 1024 if args.quick else 8192
    repeats = args.repeats or (3 if args.quick else 7)
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
                "kernels": kernels_for(arch_list, f"{major}.{minor}"),
            }
        )

    def product(device: str, size: int, dtype=tf.float32):
        with tf.device(device):
            a = tf.random.normal((size, size), seed=1, dtype=dtype)
            b = tf.random.normal((size, size), seed=2, dtype=dtype)
        # Reducing to a scalar and reading it waits for the result: the clock stops when
        # the work is done, and only 4 bytes cross back to the host.
        return a, b, lambda: tf.reduce_sum(tf.matmul(a, b)).numpy()

    a_cpu, b_cpu, run_cpu = product("/CPU:0", n)
    cpu_seconds = median_seconds(run_cpu, lambda: None, max(1, repeats // 2))
    report["cpu_fp32_seconds"] = cpu_seconds
    report["cpu_fp32_gflops"] = 2 * n**3 / cpu_seconds / 1e9
    report["train_cpu_samples_per_s"] = keras_samples_per_second(tf, "/CPU:0", args.quick, repeats)
    if not gpus:
        report["no_gpu_reason"] = (
            "this TensorFlow build has no CUDA support"
            if not build.get("is_cuda_build")
            else "TensorFlow found no GPU (its log says which CUDA library it could not load)"
        )
        return report
    tf.config.experimental.enable_tensor_float_32_execution(False)  # fp32 means fp32
    with tf.device("/GPU:0"):
        a_gpu, b_gpu = tf.identity(a_cpu), tf.identity(b_cpu)
        gpu_seconds = batched_seconds(lambda: tf.reduce_sum(tf.matmul(a_gpu, b_gpu)).numpy(), lambda: None, repeats)
        gpu_result = tf.matmul(a_gpu, b_gpu).numpy()
    report["gpu_fp32_seconds"] = gpu_seconds
    report["speedup_fp32"] = cpu_seconds / gpu_seconds
    with tf.device("/CPU:0"):
        cpu_result = tf.matmul(a_cpu, b_cpu).numpy()
    report["results_match"] = bool(np.allclose(gpu_result, cpu_result, rtol=1e-3, atol=1e-2 * n**0.5))
    report["matmul_big_n"] = big
    report["half_precision"] = "bfloat16"
    for label, dtype, tf32 in (("fp32", tf.float32, False), ("tf32", tf.float32, True), ("half", tf.bfloat16, False)):
        tf.config.experimental.enable_tensor_float_32_execution(tf32)
        _, _, run_gpu = product("/GPU:0", big, dtype)
        report[f"gpu_{label}_tflops"] = 2 * big**3 / batched_seconds(run_gpu, lambda: None, repeats) / 1e12
    tf.config.experimental.enable_tensor_float_32_execution(False)
    report["train_gpu_samples_per_s"] = keras_samples_per_second(tf, "/GPU:0", args.quick, repeats)
    report["train_speedup"] = report["train_gpu_samples_per_s"] / report["train_cpu_samples_per_s"]
    return report


def keras_samples_per_second(tf, device: str, quick: bool, repeats: int) -> float:
    """The PyTorch training step's twin: the same MLP, forward, backward and Adam, in Keras."""
    width, batch = (256, 256) if quick else (2048, 1024)
    with tf.device(device):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential(
            [
                tf.keras.Input((width,)),
                tf.keras.layers.Dense(width, activation="relu"),
                tf.keras.layers.Dense(width, activation="relu"),
                tf.keras.layers.Dense(10),
            ]
        )
        model.compile(
            optimizer=tf.keras.optimizers.Adam(1e-3),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        inputs = tf.random.normal((batch, width))
        targets = tf.random.uniform((batch,), maxval=10, dtype=tf.int32)
        # train_on_batch returns the loss as a host number: it waits for the step.
        return batch / batched_seconds(
            lambda: model.train_on_batch(inputs, targets), lambda: None, max(1, repeats // 2)
        )


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def collect(args: argparse.Namespace) -> dict:
    report = dict.fromkeys(REPORT_FIELDS)
    report.update(python=platform.python_version(), machine=platform.machine(), gpus=[], **shm_report())
    # The GPUs this container was given (GPU_DEVICES in .env becomes Docker's device request,
    # which the NVIDIA runtime passes on as NVIDIA_VISIBLE_DEVICES), and CUDA's own filter.
    report["visible_devices"] = {
        name: os.environ[name] for name in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES") if name in os.environ
    }
    if installed("torch"):
        report.update(torch_report(args))
    elif installed("tensorflow"):
        report.update(tensorflow_report(args))
    else:
        report.update({"framework": None, "gpu_available": False, "no_gpu_reason": "neither PyTorch nor TensorFlow"})
    return report


def print_table(report: dict) -> None:
    def row(label: str, value: object) -> None:
        print(f"  {label:<28} {value}")

    print("Environment")
    row("Python", f"{report['python']} ({report['machine']})")
    row("Framework", f"{report.get('framework')} {report.get('framework_version', '')}")
    row("CUDA build", report.get("cuda_build") or "none (CPU-only build)")
    row("cuDNN", report.get("cudnn") or "-")
    row("NVIDIA driver", report.get("driver") or "not found (nvidia-smi is missing or fails here)")
    visible = report.get("visible_devices") or {}
    row("Devices given", ", ".join(f"{name}={value}" for name, value in visible.items()) or "not restricted")
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
        if gpu["kernels"] is None:
            print(
                f"  WARNING: this {report['framework']} build has no kernels for compute {gpu['compute_capability']}; "
                "choose a CUDA build that covers this GPU (README: Choosing the CUDA build)."
            )
        elif gpu["kernels"] == "ptx":
            print(
                f"  NOTE: this {report['framework']} build has only PTX for compute {gpu['compute_capability']}: the "
                "driver compiles each kernel on its first use, so the first run is slow (up to tens of minutes). "
                "The compiled kernels are kept in cache/nv-compute (CUDA_CACHE_PATH), so it is slow once, not "
                "after every restart."
            )
    if report.get("framework") == "tensorflow" and report["gpu_available"]:
        print("  GPU memory growth is on: TensorFlow takes GPU memory as it needs it, not all at start.")

    if report["cpu_fp32_gflops"] is None:
        return
    n = report["matmul_n"]
    print("\nBenchmark (median of synchronised repetitions)")
    row(f"CPU fp32 n={n}", f"{report['cpu_fp32_gflops']:10.1f} GFLOP/s  ({report['cpu_threads']} threads)")
    if report["gpu_available"]:
        row(f"GPU fp32 n={n}", f"{2 * n**3 / report['gpu_fp32_seconds'] / 1e9:10.1f} GFLOP/s")
        row("Speedup GPU / CPU", f"{report['speedup_fp32']:10.1f}x")
        big = report["matmul_big_n"]
        for label in ("fp32", "tf32", "half"):
            name = report["half_precision"] if label == "half" else label
            row(f"GPU {name} n={big}", f"{report[f'gpu_{label}_tflops']:10.1f} TFLOP/s")
        if report["h2d_pinned_gbps"] is not None:
            row("Host to GPU (pinned)", f"{report['h2d_pinned_gbps']:10.1f} GB/s")
            row("GPU copy (read + write)", f"{report['d2d_copy_tbps']:10.2f} TB/s")
        if not report["results_match"]:
            print("  WARNING: GPU and CPU results differ: the GPU computes wrongly.")
    if report["train_cpu_samples_per_s"] is not None:
        row("Training step, CPU", f"{report['train_cpu_samples_per_s']:10.0f} samples/s")
    if report["train_gpu_samples_per_s"] is not None:
        row("Training step, GPU", f"{report['train_gpu_samples_per_s']:10.0f} samples/s")
        row("Training speedup", f"{report['train_speedup']:10.1f}x")
    for device in ("cpu", "gpu"):
        check = report.get(f"compile_{device}")
        if check is None:
            continue
        if check.get("skipped"):
            shown = f"not checked: {check['skipped']}"
        elif check["ok"]:
            where = "loaded from cache/" if check.get("from_cache") else "to compile and run; cached in cache/"
            shown = f"OK, result checked ({check['seconds']:.1f} s {where})"
        else:
            shown = f"FAILED: {check['error']}"
        row(f"torch.compile, {device.upper()}", shown)
    if report["allreduce"] is not None:
        reduce = report["allreduce"]
        if reduce.get("ok"):
            row(
                f"All-reduce ({reduce['backend']}, {reduce['world_size']} GPUs)",
                f"{reduce['busbw_gbps']:10.1f} GB/s bus",
            )
        else:
            print(f"  WARNING: the all-reduce check failed: {reduce.get('error', 'wrong sum')}")


def gpu_problems(report: dict) -> list[str]:
    """What went wrong ([] when every check passed, or there was no GPU to run): the
    GPU's results, the all-reduce, torch.compile."""
    found = []
    if report["results_match"] is False:
        found.append("GPU and CPU results differ: the GPU computes wrongly")
    if not (report["allreduce"] or {}).get("ok", True):
        found.append("the all-reduce check failed")
    for device in ("cpu", "gpu"):
        check = report.get(f"compile_{device}")
        if check is not None and check["ok"] is False:
            found.append(f"torch.compile failed on the {device.upper()}: {check['error']}")
    return found


def verdict(report: dict) -> list[str]:
    """The answer in a line or two, printed last: no log or table may bury it."""
    problems = gpu_problems(report)
    if not report["gpu_available"]:
        cpu_only = "; the benchmark ran on the CPU only" if report.get("cpu_fp32_gflops") is not None else ""
        return [f"Verdict: NO GPU: {report.get('no_gpu_reason')}{cpu_only}."] + [
            f"Verdict: FAIL: {problem}." for problem in problems
        ]
    if problems:
        return [f"Verdict: FAIL: {problem}." for problem in problems]
    gpus = report.get("gpus") or []
    name = gpus[0]["name"] if gpus else "the GPU"
    more = f" ({len(gpus)} GPUs visible)" if len(gpus) > 1 else ""
    speedup = f", {report['speedup_fp32']:.1f}x the CPU on an fp32 product" if report.get("speedup_fp32") else ""
    return [f"Verdict: OK: {name}{more} computes correctly{speedup}."]


def print_log(lines: list[str], framework: str | None, why: str) -> None:
    name = {"pytorch": "PyTorch", "tensorflow": "TensorFlow"}.get(framework or "", "The framework")
    print(f"{name}'s own log, kept aside while it ran ({why}):")
    for line in lines:
        print(f"  | {line}")
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.allreduce:
        result = allreduce_check(args)
        if result:  # rank 0 reports
            print(json.dumps(result) if args.json else f"all-reduce: {result}")
        return 0 if result.get("ok", True) else 1
    # The frameworks' C++ libraries write notes and errors to stderr as they load and look
    # for GPUs (TensorFlow: cuInit failures, oneDNN, CUDA factory registration), which
    # would bury the report: kept aside, and shown when they may explain a failure.
    with stderr_kept_aside() as log:
        report = collect(args)
    failed = not report["gpu_available"] or bool(gpu_problems(report))
    shown = log if failed or args.verbose else []
    if args.json:
        if shown:
            print("\n".join(shown), file=sys.stderr)  # stdout stays JSON alone
        print(json.dumps(report, indent=2))
    else:
        if shown:
            print_log(shown, report.get("framework"), "the GPU check failed" if failed else "--verbose")
        print_table(report)
    code = 1 if gpu_problems(report) else 0
    if args.require_gpu and not report["gpu_available"]:
        sys.stdout.flush()  # in order, where stdout and stderr share a terminal
        print("gpu_test: no usable GPU (--require-gpu)", file=sys.stderr, flush=True)
        code = 1
    if not args.json:
        print()
        print("\n".join(verdict(report)))
    return code


if __name__ == "__main__":
    sys.exit(main())
