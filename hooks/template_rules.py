"""The template's rules: the compatibility table, values derived from the answers,
validation of the answers, and defaults read from the host.

Shared by the hooks, the Jinja extension (``template_jinja.py``), the maintenance
scripts and the tests, so each rule is written once. Needs only the standard library
and PyYAML, which cookiecutter itself depends on, so it runs wherever cookiecutter does.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

REPO_DIR = Path(__file__).resolve().parent.parent
TABLE_PATH = REPO_DIR / "compat.yaml"
# The project template: the tree a generated project is rendered from.
PROJECT_TEMPLATE = REPO_DIR / "{{cookiecutter.project_slug}}"
# Pre-resolved locks, one folder per combination; included into the project by Jinja.
LOCKS_DIR = REPO_DIR / "templates" / "locks"

# The files each dependency manager owns in a generated project: its input, its lock,
# and the hash-pinned requirements of the tools the image installs (uv installs the
# environment for every manager).
MANAGER_FILES = {
    "uv": ("pyproject.toml", "uv.lock", "docker/uv-requirements.txt"),
    "pip": ("requirements.in", "requirements.txt", "docker/uv-requirements.txt"),
    "poetry": ("pyproject.toml", "poetry.lock", "docker/poetry-requirements.txt", "docker/uv-requirements.txt"),
}

# The generated README's languages: the answer, and its label (the first is the default).
README_LANGUAGES = {
    "en": "English (README.md)",
    "ko": "한국어 / Korean (README.md)",
    "en+ko": "Both (README.md in English, README.ko.md in Korean)",
}

# What `cruft update` never patches in a project: the user's settings, code, data and
# caches, the lock (re-resolved by `make lock` when the inputs change), and cruft's own
# record. Written into each project's .cruft.json.
UPDATE_SKIP = [".cruft.json", ".env", "src", "data", "cache", *sorted({files[1] for files in MANAGER_FILES.values()})]

# Ids that exist in every base image and must not be renamed to the project's user.
RESERVED_IDS = {0: "root", 65534: "nobody / nogroup"}
MAX_ID = 4294967294  # 2**32 - 2: (uid_t)-1 means "no change" to chown
SLUG_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
INT_RE = re.compile(r"[0-9]+\Z")


@cache
def load_table(path: Path = TABLE_PATH) -> dict:
    """The compatibility table (compat.yaml) as plain data."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# ---------------------------------------------------------------------------------------
# Labels for the prompts
# ---------------------------------------------------------------------------------------


def cuda_prompt(table: dict) -> str:
    """The cuda_version question: each framework's CUDA builds, newest first, with the
    driver they need and the GPU generations they have kernels for.

    cuda_version is a text question, not a menu, because its default depends on the
    framework answered before it and on the host's driver and GPUs (``default_cuda``),
    and cookiecutter cannot render a menu's entries without breaking `cuda_version=...`
    passed on the command line.
    """
    offers = []
    for name, framework in table["frameworks"].items():
        builds = []
        for cuda in sorted(framework["cuda"], key=_version_tuple, reverse=True):
            spec = build_spec(table, name, cuda)
            where = ", from PyTorch's index" if spec["source"] == "index" else ""
            builds.append(f"{cuda} (driver >= {min_driver(table, cuda)}, {spec['gpus']}{where})")
        offers.append(f"{framework['label']}: {', '.join(builds)}")
    return (
        f"CUDA build [{' | '.join(offers)}]. "
        "Default: the newest build that this host's NVIDIA driver runs and that has kernels for its GPUs (read from nvidia-smi)"
    )


def framework_label(table: dict, framework: str) -> str:
    """ "PyTorch 2.14.1 (2.10.0 for CUDA 12.8)": the framework's versions across its builds."""
    spec = table["frameworks"][framework]
    main = framework_version(spec)
    others = [
        f"{framework_version(build_spec(table, framework, cuda))} for CUDA {cuda}"
        for cuda in spec["cuda"]
        if framework_version(build_spec(table, framework, cuda)) != main
    ]
    return f"{spec['label']} {main}" + (f" ({'; '.join(others)})" if others else "")


def python_label(table: dict, python: str) -> str:
    return f"Python {python} (Ubuntu {table['python'][python]['ubuntu']} base image)"


# ---------------------------------------------------------------------------------------
# Derived values
# ---------------------------------------------------------------------------------------


def lock_key(framework: str, cuda: str, python: str, manager: str) -> str:
    """Name of the folder holding the shipped lock for one combination."""
    return f"{framework}-cu{cuda.replace('.', '')}-py{python}-{manager}"


def next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def build_spec(table: dict, framework: str, cuda: str) -> dict:
    """One CUDA build of a framework: the build's own settings over the framework's
    (packages, Python range, lock platforms), plus the build's CUDA version."""
    settings = table["frameworks"][framework]
    spec = {key: value for key, value in settings.items() if key != "cuda"}
    spec["lock_platforms"] = table["lock_platforms"]
    spec.update(settings["cuda"][cuda])
    spec["cuda_version"] = cuda
    return spec


def cuda_major(table: dict, cuda: str) -> dict:
    """The driver rule of a CUDA version's major release (compat.yaml: cuda_majors)."""
    return table["cuda_majors"][cuda.split(".")[0]]


def min_driver(table: dict, cuda: str) -> str:
    """The oldest driver a build of this CUDA runs on (minor version compatibility)."""
    return cuda_major(table, cuda)["min_driver"]


def derive(answers: dict, table: dict | None = None) -> dict:
    """Values computed once from the answers; empty strings where an answer is invalid
    (the pre-generation hook then refuses it with a message, see ``validate``)."""
    table = table or load_table()
    framework_name, cuda_version = answers.get("framework"), answers.get("cuda_version")
    framework = table["frameworks"].get(framework_name, {})
    cuda = table["cuda"].get(cuda_version, {})
    python = table["python"].get(answers.get("python_version"), {})
    build = (
        build_spec(table, framework_name, cuda_version) if cuda and cuda_version in framework.get("cuda", {}) else {}
    )
    slug = str(answers.get("project_slug", ""))
    derived = {
        "dist_name": slug.replace("_", "-"),
        "image_name": f"{slug}:dev" if slug else "",
        "min_driver": min_driver(table, cuda_version) if cuda else "",
        "toolkit_driver": cuda.get("toolkit_driver", ""),
        "require_cuda": cuda_major(table, cuda_version)["require_cuda"] if cuda else "",
        "base_image": "",
        "requires_python": "",
        "lock_key": "",
        "wheel_index": build.get("index_url", ""),
        # The name the project's config gives that index.
        "wheel_index_name": f"pytorch-cu{cuda_version.replace('.', '')}" if build.get("index_url") else "",
    }
    if cuda and python:
        derived["base_image"] = f"nvidia/cuda:{cuda['image_version']}-{table['image_flavour']}-ubuntu{python['ubuntu']}"
    if build and python:
        excludes = "".join(f",!={version}" for version in build.get("python_excludes", []))
        derived["requires_python"] = f">={answers['python_version']},<{next_minor(build['python_max'])}{excludes}"
    if build and python and answers.get("dependency_manager") in MANAGER_FILES:
        derived["lock_key"] = lock_key(
            answers["framework"],
            answers["cuda_version"],
            answers["python_version"],
            answers["dependency_manager"],
        )
    return derived


def requirements(answers: dict, table: dict | None = None) -> list[str]:
    """The project's direct dependencies (PEP 508), the same for every manager."""
    table = table or load_table()
    build = build_spec(table, answers["framework"], answers["cuda_version"])
    extras = build.get("extras", {})
    pinned = [
        f"{name}[{extras[name]}]=={version}" if name in extras else f"{name}=={version}"
        for name, version in build["packages"].items()
    ]
    return [*pinned, f"numpy{build['numpy']}", *table["common_requirements"]]


def env_layers(answers: dict, table: dict | None = None) -> list[tuple[str, list[str]]]:
    """The image's environment layers below the project's own packages, lowest first,
    each named with the packages whose dependency closure it holds (docker/env_layers.py):
    the framework, which changes least and weighs most, then NumPy and the tools every
    project installs. What a project adds goes in a last layer of its own."""
    table = table or load_table()
    build = build_spec(table, answers["framework"], answers["cuda_version"])
    common = [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in table["common_requirements"]]
    return [("framework", list(build["packages"])), ("common", ["numpy", *common])]


def shipped_lock(key: str, manager: str) -> Path:
    return LOCKS_DIR / key / MANAGER_FILES[manager][1]


def lock_is_shipped(answers: dict, table: dict | None = None) -> bool:
    """Whether the template ships the lock of these answers (index builds may have none:
    the project's first `make lock` writes it)."""
    key = derive(answers, table)["lock_key"]
    return bool(key) and shipped_lock(key, answers["dependency_manager"]).is_file()


def built_cuda(table: dict, framework: str) -> list[str]:
    """The framework's CUDA builds that have at least one shipped lock, in table order."""
    shipped = {path.name for path in LOCKS_DIR.iterdir()} if LOCKS_DIR.is_dir() else set()
    prefix = f"{framework}-cu"
    return [
        cuda
        for cuda in table["frameworks"].get(framework, {}).get("cuda", {})
        if any(key.startswith(f"{prefix}{cuda.replace('.', '')}-") for key in shipped)
    ]


# ---------------------------------------------------------------------------------------
# GPUs: which builds have kernels for which GPU
# ---------------------------------------------------------------------------------------


def _capability(text: str) -> tuple[int, int] | None:
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def load_module(path: Path, name: str):
    """A Python file as a module, executed afresh (no import cache, no sys.path change)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def gpu_generation(table: dict, capability: str) -> str:
    """A GPU generation's name (Pascal, Hopper, ...) for a compute capability."""
    names = table["gpu_generations"]
    major = str(capability).split(".")[0]
    return names.get(str(capability)) or names.get(major) or f"compute capability {capability}"


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


def build_guide(table: dict, framework: str) -> list[GuideRow]:
    """The project README's "your nvidia-smi shows ... -> choose ..." table, worked out
    with ``default_cuda`` itself for one GPU of each generation (compat.yaml:
    gpu_examples) at every driver threshold the framework's builds have. Thresholds and
    generations with the same answer share a row."""
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
            note = " (PTX, compiled on first use)" if fits[choice] == "ptx" else ""
            rows.append((capability, f"`{choice}`{note}", ", ".join(f"`{cuda}`" for cuda in others)))
        return rows

    # (lowest driver, answers) per band of thresholds that answer alike.
    bands: list[tuple[str, list]] = []
    for driver in thresholds:
        answered = [(choose, also) for _, choose, also in answers_at(driver)]
        if not bands or bands[-1][1] != answered:
            bands.append((driver, answered))
    guide = [GuideRow(f"below {thresholds[0]}", "any", "none: update the driver", "")]
    for index, (driver, answered) in enumerate(bands):
        upper = bands[index + 1][0] if index + 1 < len(bands) else None
        drivers = f"{driver} to below {upper}" if upper else f"{driver} or newer"
        start = 0
        while start < len(examples):
            end = start
            while end + 1 < len(examples) and answered[end + 1] == answered[start]:
                end += 1
            first, last = examples[start][0], examples[end][0]
            names = gpu_generation(table, first)
            if last != first and gpu_generation(table, last) != names:
                names += f" to {gpu_generation(table, last)}"
            span = first if first == last else f"{first} to {last}"
            gpus = f"{names}, {span}: " + "; ".join(example for _, example in examples[start : end + 1])
            choose, also = answered[start]
            guide.append(GuideRow(drivers, gpus, choose or "none of this framework's builds", also))
            start = end + 1
    return guide


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One refused answer: which field, the value given, why, and what would work."""

    field: str
    value: object
    why: str
    fix: str

    def __str__(self) -> str:
        return f"ERROR: {self.field} = {self.value!r}: {self.why}\n  Fix: {self.fix}"


def _parse_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and INT_RE.match(value):
        return int(value)
    return None


def _check_port(field: str, value: object, low: int, why_low: str) -> list[Problem]:
    port = _parse_int(value)
    if port is None or not 1 <= port <= 65535:
        return [
            Problem(
                field,
                value,
                "a port is a whole number from 1 to 65535",
                f"answer e.g. {load_table()['defaults'][field]}",
            )
        ]
    if port < low:
        return [
            Problem(field, value, why_low, f"use a port from {low} to 65535, e.g. {load_table()['defaults'][field]}")
        ]
    return []


def _check_id(field: str, value: object) -> list[Problem]:
    number = _parse_int(value)
    what = "user" if field == "uid" else "group"
    host_cmd = "id -u" if field == "uid" else "id -g"
    if number is None or number > MAX_ID:
        return [
            Problem(
                field,
                value,
                f"a {what} id is a whole number from 1 to {MAX_ID}",
                f"answer the output of `{host_cmd}` on the host",
            )
        ]
    if number in RESERVED_IDS:
        return [
            Problem(
                field,
                value,
                f"{number} is {RESERVED_IDS[number]} in every base image; the container user must be an ordinary {what}",
                f"answer the output of `{host_cmd}` as your normal user, or 1000",
            )
        ]
    return []


def _check_names(answers: dict) -> list[Problem]:
    problems = []
    name = answers.get("project_name")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        problems.append(
            Problem("project_name", name, "the name must be non-empty printable text", "answer e.g. 'GPU Lab'")
        )
    slug = answers.get("project_slug")
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        problems.append(
            Problem(
                "project_slug",
                slug,
                "the slug names the directory, the Python package, the compose project and the image, "
                "so it must start with a lowercase letter and hold only lowercase letters, digits and '_'",
                "answer e.g. 'gpu_lab'",
            )
        )
    elif keyword.iskeyword(slug) or slug in sys.stdlib_module_names:
        problems.append(
            Problem(
                "project_slug",
                slug,
                "it is a Python keyword or a standard-library module, so `import` would pick the wrong one",
                f"answer e.g. '{slug}_project'",
            )
        )
    elif len(slug) > 60:
        problems.append(Problem("project_slug", slug, "it is longer than 60 characters", "answer a shorter slug"))
    return problems


def _check_choice(table: dict, field: str, section: dict, value: object) -> list[Problem]:
    if value in section:
        return []
    return [Problem(field, value, "not a choice this template offers", f"answer one of: {', '.join(section)}")]


def framework_builds(table: dict) -> str:
    """Every framework/CUDA pair there is, for messages: "PyTorch 13.2, 13.0, ...; TensorFlow 12.5"."""
    return "; ".join(
        f"{spec['label']} {', '.join(sorted(spec['cuda'], key=_version_tuple, reverse=True))}"
        for spec in table["frameworks"].values()
    )


def _check_cuda(table: dict, value: object) -> list[Problem]:
    if value in table["cuda"]:
        return []
    return [
        Problem(
            "cuda_version",
            value,
            "no framework here has a build for it",
            f"answer one of the builds there are: {framework_builds(table)}",
        )
    ]


def _check_combination(table: dict, answers: dict) -> list[Problem]:
    framework_name = answers["framework"]
    framework = table["frameworks"][framework_name]
    cuda, python = answers["cuda_version"], answers["python_version"]
    if cuda not in framework["cuda"]:
        return [
            Problem(
                "cuda_version",
                cuda,
                f"{framework['label']} has no CUDA {cuda} build",
                f"answer one of the builds there are: {framework_builds(table)}",
            )
        ]
    build = build_spec(table, framework_name, cuda)
    label = f"{framework['label']} {framework_version(build)} (CUDA {cuda})"
    low, high = _version_tuple(build["python_min"]), _version_tuple(build["python_max"])
    problems = []
    if not low <= _version_tuple(python) <= high:
        problems.append(
            Problem(
                "python_version",
                python,
                f"{label} supports Python {build['python_min']} to {build['python_max']}",
                f"answer one of: {', '.join(p for p in table['python'] if low <= _version_tuple(p) <= high)}",
            )
        )
    ubuntu = table["python"][python]["ubuntu"]
    if ubuntu not in table["cuda"][cuda]["ubuntu"]:
        problems.append(
            Problem(
                "python_version",
                python,
                f"nvidia/cuda publishes no CUDA {cuda} image for Ubuntu {ubuntu}",
                f"answer a Python whose Ubuntu is one of: {', '.join(table['cuda'][cuda]['ubuntu'])}",
            )
        )
    if problems:
        return problems
    manager = answers["dependency_manager"]
    key = lock_key(framework_name, cuda, python, manager)
    # A build from PyTorch's index may come without a lock: the index is not reachable
    # where the template is maintained, and the project's first `make lock` writes it.
    if build["source"] != "index" and not shipped_lock(key, manager).is_file():
        offered = sorted(path.name for path in LOCKS_DIR.iterdir()) if LOCKS_DIR.is_dir() else []
        problems.append(
            Problem(
                "framework / cuda_version / python_version / dependency_manager",
                f"{framework_name}, {cuda}, {python}, {manager}",
                "this combination is not built yet in this version of the template (no lock is shipped for it)",
                f"choose one of the combinations that are: {', '.join(offered) or 'none'}",
            )
        )
    return problems


def framework_version(framework: dict) -> str:
    """The framework's own version: the first pinned package (torch, tensorflow)."""
    return next(iter(framework["packages"].values()))


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _driver_tuple(version: str) -> tuple[int, ...] | None:
    """A driver version (three dot-separated numbers, as nvidia-smi prints it) as a tuple; None for anything else."""
    parts = version.strip().split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else None


def validate(answers: dict, table: dict | None = None) -> list[Problem]:
    """Every problem with the answers; an empty list means generation may go on."""
    table = table or load_table()
    problems = _check_names(answers)
    problems += _check_port(
        "jupyter_host_port",
        answers.get("jupyter_host_port"),
        1,
        "",
    )
    problems += _check_port(
        "jupyter_container_port",
        answers.get("jupyter_container_port"),
        1024,
        "Jupyter runs as a non-root user inside the container, and ports below 1024 need privileges on some engines",
    )
    problems += _check_id("uid", answers.get("uid"))
    problems += _check_id("gid", answers.get("gid"))
    choices = [
        _check_choice(table, "framework", table["frameworks"], answers.get("framework")),
        _check_cuda(table, answers.get("cuda_version")),
        _check_choice(table, "python_version", table["python"], answers.get("python_version")),
        _check_choice(table, "dependency_manager", table["dependency_managers"], answers.get("dependency_manager")),
        _check_choice(table, "readme_language", README_LANGUAGES, answers.get("readme_language")),
    ]
    for found in choices:
        problems += found
    if not any(choices):
        problems += _check_combination(table, answers)
    return problems


# ---------------------------------------------------------------------------------------
# Host defaults
# ---------------------------------------------------------------------------------------


def host_ids() -> tuple[int, int]:
    """The generating user's uid and gid, so bind-mounted files belong to them.

    The table's defaults (1000, the first ordinary user on most Linux systems) where
    the ids are unknown (Windows) or root's: a container user must not be root.
    """
    defaults = load_table()["defaults"]
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return defaults["uid"], defaults["gid"]
    uid, gid = getuid(), os.getgid()
    return (uid if uid not in RESERVED_IDS else defaults["uid"]), (gid if gid not in RESERVED_IDS else defaults["gid"])


# The driver query may hang on a wedged GPU; generation must stay fast.
NVIDIA_SMI_TIMEOUT_S = 5


def _nvidia_smi(smi: str, fields: str) -> list[list[str]] | None:
    """Rows of `nvidia-smi --query-gpu=<fields>`, one per GPU; None when it fails or hangs."""
    try:
        result = subprocess.run(
            [smi, f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return [[cell.strip() for cell in line.split(",")] for line in result.stdout.strip().splitlines() if line.strip()]


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
    table = table or load_table()
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
    table = table or load_table()
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


# ---------------------------------------------------------------------------------------
# Where the project came from (for `cruft update`)
# ---------------------------------------------------------------------------------------


def template_commit(repo_dir: Path = REPO_DIR) -> str:
    """The template's git commit, or "" where it is not a git checkout (a zip download)."""
    git = shutil.which("git")
    # Only the template's own checkout counts, not a repository it happens to sit in.
    if not git or not (repo_dir / ".git").exists():
        return ""
    try:
        result = subprocess.run(
            [git, "-C", str(repo_dir), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def template_address(given: str, repo_dir: Path = REPO_DIR) -> str:
    """What `cruft update` clones: the URL the user gave, with cookiecutter's gh:/gl:/bb:
    abbreviations expanded, or this checkout's absolute path for a local template."""
    from cookiecutter.config import BUILTIN_ABBREVIATIONS
    from cookiecutter.repository import expand_abbreviations, is_repo_url

    expanded = expand_abbreviations(given, BUILTIN_ABBREVIATIONS)
    return expanded if is_repo_url(expanded) else str(repo_dir)


def cruft_record(answers: dict, repo_dir: Path = REPO_DIR) -> dict:
    """The project's .cruft.json: template address and commit, the answers, the skip list.

    The answers are the questions only: cruft passes them back as answers on update, so
    derived values (the private ``__`` variables) are derived again by the new template.
    """
    questions = {key: value for key, value in answers.items() if not key.startswith("_")}
    address = template_address(str(answers.get("_template", "")), repo_dir)
    commit = template_commit(repo_dir)
    return {
        "template": address,
        "commit": commit,
        "checkout": None,
        "context": {"cookiecutter": {**questions, "_template": address, "_commit": commit}},
        "directory": None,
        "skip": UPDATE_SKIP,
    }


# ---------------------------------------------------------------------------------------
# Jinja: what the templates and cookiecutter.json can call
# ---------------------------------------------------------------------------------------


def install_jinja(environment) -> None:
    """Filters and globals of the template's Jinja environment (template_jinja.py).

    cookiecutter.json computes each private ``__`` variable once with the ``derived``
    filter, e.g. ``"__base_image": "{{ cookiecutter | derived('base_image') }}"``.
    """
    environment.filters["derived"] = lambda answers, key: derive(dict(answers))[key]
    # Defaults for the uid/gid questions: the generating user's ids.
    environment.globals["host_uid"] = lambda: host_ids()[0]
    environment.globals["host_gid"] = lambda: host_ids()[1]
    # Default for cuda_version: the newest build of the chosen framework that the host's
    # driver runs and that has kernels for its GPUs (nvidia-smi), else the table's default.
    environment.globals["host_cuda"] = lambda framework: default_cuda(framework, host_gpus())
    # One CUDA build's settings (packages, lock platforms, index), for the project's files.
    environment.globals["build"] = lambda answers: build_spec(
        load_table(), answers["framework"], answers["cuda_version"]
    )
    # Every CUDA build of the project's framework (driver floor, GPU code), for doctor.py.
    environment.globals["doctor_builds"] = lambda answers: {
        cuda: {
            "min_driver": min_driver(load_table(), cuda),
            "architectures": spec.get("architectures", []),
        }
        for cuda, spec in load_table()["frameworks"][answers["framework"]]["cuda"].items()
    }
    # The README's "your nvidia-smi shows ... -> choose ..." rows for the project's framework.
    environment.globals["build_guide"] = lambda answers: build_guide(load_table(), answers["framework"])
    # Whether the template ships this project's lock (index builds: the first `make lock`).
    environment.globals["lock_shipped"] = lambda answers: lock_is_shipped(dict(answers))
    # Where the hooks import this module from: absolute, because cookiecutter's
    # _repo_dir is relative to a working directory the hooks do not run in.
    environment.globals["template_rules_dir"] = str(Path(__file__).resolve().parent)
    # The project's direct dependencies, for pyproject.toml and requirements.in.
    environment.globals["requirements"] = lambda answers: requirements(dict(answers))
    # The environment's layers below the project's own packages, for the Dockerfile.
    environment.globals["env_layers"] = lambda answers: env_layers(dict(answers))
    # Each manager's (input, lock, tool requirements) file names.
    environment.globals["manager_files"] = MANAGER_FILES
    # .cruft.json's content: where the project came from, for `cruft update`.
    environment.filters["cruft_record"] = lambda answers: cruft_record(dict(answers))
    # The table itself, for blocks that list its facts (pinned packages, platforms).
    environment.globals["compat"] = load_table()
