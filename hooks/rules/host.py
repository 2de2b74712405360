"""The host and its GPUs: which builds have kernels for which GPU, what nvidia-smi
says, and the defaults read from the host (ids, CUDA build), with notes on answers this
host cannot run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

from . import table as compat
from .answers import RESERVED_IDS
from .table import PROJECT_TEMPLATE, _version_tuple, build_spec, built_cuda, framework_version, load_module, min_driver
from .words import GUIDE


def _capability(text: str) -> tuple[int, int] | None:
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


@cache
def _project_gpu_test():
    """The project's gpu_test.py (plain Python, no Jinja, standard library at import),
    whose kernels_for is CUDA's GPU-code rule: one implementation for the template's
    default and notes, and for the project's self-test and doctor."""
    return load_module(PROJECT_TEMPLATE / "gpu_test.py", "_template_gpu_test")


def arch_support(arch_list: list[str], capability: str) -> str | None:
    """How a build compiled for arch_list (torch.cuda.get_arch_list() names) runs on a GPU
    of this compute capability: "native", "ptx" (the driver compiles the build's PTX on
    first use: slow once, then cached) or None (no kernels). See gpu_test.kernels_for."""
    return _project_gpu_test().kernels_for(arch_list, capability)


def gpu_generation(table: dict, capability: str, language: str = "en") -> str:
    """A GPU generation's name (Pascal, Hopper, ...) for a compute capability."""
    names = table["gpu_generations"]
    major = str(capability).split(".")[0]
    return names.get(str(capability)) or names.get(major) or GUIDE[language]["capability"].format(capability=capability)


@dataclass(frozen=True)
class HostGPUs:
    """What nvidia-smi says about this host: the driver, and each GPU's compute
    capability (empty where the driver is too old to report it)."""

    driver: str
    capabilities: tuple[str, ...] = ()


def build_on_host(table: dict, framework: str, cuda: str, host: HostGPUs) -> str | None:
    """How a build runs on this host: "native", "ptx", "driver" (the driver is below
    the build's floor) or "gpu" (no kernels for one of its GPUs)."""
    have = _driver_tuple(host.driver)
    if not have or have < _driver_tuple(min_driver(table, cuda)):
        return "driver"
    arch_list = table["frameworks"][framework]["cuda"][cuda].get("architectures", [])
    levels = {arch_support(arch_list, capability) for capability in host.capabilities}
    if None in levels:
        return "gpu"
    if "ptx" in levels:
        # PTX JIT is what minor version compatibility leaves out: it needs the toolkit's driver.
        return "ptx" if have >= _driver_tuple(table["cuda"][cuda]["toolkit_driver"]) else "gpu"
    return "native"


@dataclass(frozen=True)
class GuideRow:
    """One row of the README's table: drivers from..below, GPUs, the build to choose."""

    drivers: str
    gpus: str
    choose: str
    also: str


def build_guide(table: dict, framework: str, language: str = "en") -> list[GuideRow]:
    """The project README's "your nvidia-smi shows ... -> choose ..." table, worked out
    with ``default_cuda`` itself for one GPU of each generation (compat.yaml:
    gpu_examples) at every driver threshold the framework's builds have. Thresholds and
    generations with the same answer share a row. Its words in ``language`` (en, ko)."""
    say = GUIDE[language]
    builds = table["frameworks"][framework]["cuda"]
    thresholds = sorted(
        {min_driver(table, cuda) for cuda in builds} | {table["cuda"][cuda]["toolkit_driver"] for cuda in builds},
        key=_driver_tuple,
    )
    examples = list(table["gpu_examples"].items())

    def answers_at(driver: str) -> list[tuple[str, str, str]]:
        rows = []
        for capability, _ in examples:
            host = HostGPUs(driver, (capability,))
            fits = {cuda: build_on_host(table, framework, cuda, host) for cuda in builds}
            if not any(how in ("native", "ptx") for how in fits.values()):
                rows.append((capability, "", ""))
                continue
            choice = default_cuda(framework, host, table)
            others = sorted(
                (cuda for cuda, how in fits.items() if cuda != choice and how == fits[choice]),
                key=_version_tuple,
                reverse=True,
            )
            note = say["ptx"] if fits[choice] == "ptx" else ""
            rows.append((capability, f"`{choice}`{note}", ", ".join(f"`{cuda}`" for cuda in others)))
        return rows

    # (lowest driver, answers) per band of thresholds that answer alike.
    bands: list[tuple[str, list]] = []
    for driver in thresholds:
        answered = [(choose, also) for _, choose, also in answers_at(driver)]
        if not bands or bands[-1][1] != answered:
            bands.append((driver, answered))
    guide = [GuideRow(say["below"].format(driver=thresholds[0]), say["any"], say["update"], "")]
    for index, (driver, answered) in enumerate(bands):
        upper = bands[index + 1][0] if index + 1 < len(bands) else None
        drivers = say["between"].format(low=driver, high=upper) if upper else say["from"].format(driver=driver)
        start = 0
        while start < len(examples):
            end = start
            while end + 1 < len(examples) and answered[end + 1] == answered[start]:
                end += 1
            first, last = examples[start][0], examples[end][0]
            names = gpu_generation(table, first, language)
            if last != first and gpu_generation(table, last, language) != names:
                names = say["generations"].format(first=names, last=gpu_generation(table, last, language))
            span = first if first == last else say["capabilities"].format(first=first, last=last)
            gpus = f"{names}, {span}: " + "; ".join(example for _, example in examples[start : end + 1])
            choose, also = answered[start]
            guide.append(GuideRow(drivers, gpus, choose or say["no_build"], also))
            start = end + 1
    return guide


def _driver_tuple(version: str) -> tuple[int, ...] | None:
    """A driver version (three dot-separated numbers, as nvidia-smi prints it) as a tuple; None for anything else."""
    parts = version.strip().split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else None


def host_ids() -> tuple[int, int]:
    """The generating user's uid and gid, so bind-mounted files belong to them.

    The table's defaults (1000, the first ordinary user on most Linux systems) where
    the ids are unknown (Windows) or root's: a container user must not be root.
    """
    defaults = compat.load_table()["defaults"]
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return defaults["uid"], defaults["gid"]
    uid, gid = getuid(), os.getgid()
    return (uid if uid not in RESERVED_IDS else defaults["uid"]), (gid if gid not in RESERVED_IDS else defaults["gid"])


# The driver query may hang on a wedged GPU; generation must stay fast.
NVIDIA_SMI_TIMEOUT_S = 5


def _nvidia_smi(smi: str, fields: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-gpu=<fields>`, one per GPU; None when it fails or hangs.
    Read as bytes: output that is not UTF-8 (a garbled driver) becomes U+FFFD, which no
    field parses as a version, rather than a crash of generation."""
    try:
        result = subprocess.run(
            [smi, f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    text = result.stdout.decode("utf-8", errors="replace")
    return [[cell.strip() for cell in line.split(",")] for line in text.strip().splitlines() if line.strip()]


def host_gpus() -> HostGPUs | None:
    """The host's NVIDIA driver and its GPUs' compute capabilities, from nvidia-smi
    (offline, local), or None.

    None when nvidia-smi is missing, fails, hangs or prints no version: generating on a
    laptop without a GPU, in CI or in a container is normal and keeps the static default.
    Drivers older than the `compute_cap` field (before R510) give the driver alone.
    """
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    rows = _nvidia_smi(smi, "driver_version,compute_cap")
    if rows and all(len(row) == 2 and _driver_tuple(row[0]) and _capability(row[1]) for row in rows):
        # Every GPU of a host shares the one driver.
        return HostGPUs(rows[0][0], tuple(row[1] for row in rows))
    rows = _nvidia_smi(smi, "driver_version")
    if rows and _driver_tuple(rows[0][0]):
        return HostGPUs(rows[0][0])
    return None


def host_driver() -> str | None:
    """The host's NVIDIA driver version (see ``host_gpus``), or None."""
    host = host_gpus()
    return host.driver if host else None


def default_cuda(framework: str, host: HostGPUs | None, table: dict | None = None) -> str:
    """The cuda_version default: the newest build of the framework that runs on the
    host's driver and has kernels for every GPU present, preferring builds whose lock the
    template ships (they install without PyTorch's index). Native code beats PTX.

    Without a driver (or when no build fits) the table's default for the framework: the
    project may well be meant for another machine, and the pre-generation hook says so
    when this host cannot run it (``host_notes``).
    """
    table = table or compat.load_table()
    builds = list(table["frameworks"].get(framework, {}).get("cuda", {}))
    static = table["defaults"]["cuda_version"].get(framework)
    fallback = static if static in builds else (builds[0] if builds else static or "")
    if not host or not _driver_tuple(host.driver):
        return fallback
    fits = {cuda: build_on_host(table, framework, cuda, host) for cuda in builds}
    candidates = [cuda for cuda, how in fits.items() if how == "native"]
    candidates = candidates or [cuda for cuda, how in fits.items() if how == "ptx"]
    locked = set(built_cuda(table, framework))
    candidates = [cuda for cuda in candidates if cuda in locked] or candidates
    return max(candidates, key=_version_tuple) if candidates else fallback


def host_notes(answers: dict, host: HostGPUs | None, table: dict | None = None) -> list[str]:
    """Warnings (not refusals) about running the answers on this host: the project may
    be meant for another machine."""
    table = table or compat.load_table()
    framework, cuda = answers.get("framework"), answers.get("cuda_version")
    if not host or cuda not in table["frameworks"].get(framework, {}).get("cuda", {}):
        return []
    how = build_on_host(table, framework, cuda, host)
    if how == "native":
        return []
    spec = build_spec(table, framework, cuda)
    label = f"the CUDA {cuda} build of {spec['label']} {framework_version(spec)}"
    if how == "driver":
        note = (
            f"NOTE: this host's NVIDIA driver {host.driver} is older than {label} needs "
            f"({min_driver(table, cuda)}): the container will start here only without the GPU "
            "(COMPOSE_FILE=compose.yaml). Update the driver, or ignore this if the project is for another machine."
        )
        return [note]
    gpus = ", ".join(f"{capability} ({gpu_generation(table, capability)})" for capability in host.capabilities)
    better = default_cuda(framework, host, table)
    instead = (
        f" cuda_version={better} has them ({build_spec(table, framework, better)['gpus']})."
        if better != cuda and build_on_host(table, framework, better, host) in ("native", "ptx")
        else ""
    )
    if how == "ptx":
        note = (
            f"NOTE: {label} has no native code for this host's GPU (compute capability {gpus}): the driver "
            "compiles the build's PTX on first use of each kernel, which is slow the first time (cached "
            f"afterwards).{instead}"
        )
    else:
        note = (
            f"NOTE: {label} has no kernels for this host's GPU (compute capability {gpus}): the GPU would fail "
            f"at the first operation.{instead} Ignore this if the project is for another machine."
        )
    return [note]
