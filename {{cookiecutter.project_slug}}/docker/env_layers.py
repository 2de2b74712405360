"""Splits the lock into the image's environment layers. The Dockerfile runs it.

    python3 docker/env_layers.py LOCK OUTDIR NAME=ROOTS[:KEEP]... REST

LOCK is hash-pinned requirements text (requirements.txt, or `uv export` of uv.lock) or
poetry.lock (beside its pyproject.toml: the versions poetry installs on this machine;
exit status 3 if the lock is stale). For each NAME=ROOT,ROOT..., in order, OUTDIR/NAME.txt gets the locked
packages the roots need that no earlier layer holds; with :KEEP,KEEP... (names or globs
such as nvidia-*) only the roots and those of their dependencies that KEEP names.
OUTDIR/REST.txt gets all others. Each file is hash-pinned requirements with the lock's
index options and markers, and no comments, so it changes only when its own packages do.

Why: the image installs each file in a layer of its own (without dependencies: the
layers together are exactly the lock, package for package), and BuildKit keys a layer by
the content of what it installs. The lowest layer holds the framework's big binary
wheels alone (about 5 GB): a new release of one of its small dependencies (filelock,
fsspec) changes a later, cheap layer, and adding a package changes the last one.

Standard library only, except for poetry.lock: that is read in poetry's environment.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11: poetry's environment has tomli
    import tomli as tomllib

PYPI = "https://pypi.org/simple"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Lock:
    """The lock as requirement blocks (one package version each, hash-pinned), its
    dependency graph by name, and the index options every layer needs."""

    def __init__(self) -> None:
        self.options: list[str] = []
        self.blocks: dict[str, list[tuple[str, str]]] = {}  # name -> [(version, block)]
        self.needs: dict[str, set[str]] = {}  # name -> names it depends on

    def add(self, name: str, version: str, block: str) -> None:
        self.blocks.setdefault(canonical(name), []).append((version, block))

    def depends(self, parent: str, child: str) -> None:
        self.needs.setdefault(canonical(parent), set()).add(canonical(child))

    def closure(self, roots: list[str], keep: list[str] | None = None) -> set[str]:
        """The roots and every locked package they need; with `keep`, only the roots and
        the needed packages whose names match one of its globs (all are walked through)."""
        seen: set[str] = set()
        todo = [canonical(root) for root in roots]
        while todo:
            name = todo.pop()
            if name in seen or name not in self.blocks:
                continue
            seen.add(name)
            todo.extend(self.needs.get(name, ()))
        if keep is None:
            return seen
        roots = {canonical(root) for root in roots}
        return {name for name in seen if name in roots or any(fnmatch.fnmatchcase(name, canonical(k)) for k in keep)}


def read_requirements(text: str) -> Lock:
    """requirements.txt as `uv pip compile` and `uv export` write it: a package line, its
    `--hash` lines, and `# via` lines naming the packages that need it."""
    lock = Lock()
    name = None
    block: list[str] = []
    via_open = False

    def finish() -> None:
        if name:
            version = re.match(r"^[^=\s;]+==([^\s;\\]+)", block[0]).group(1)
            # The last hash line of a block must not continue the line.
            lock.add(name, version, "\n".join(block).rstrip().rstrip("\\").rstrip())

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if line.startswith(("--index-url", "--extra-index-url", "-i ", "--find-links", "-f ")):
            lock.options.append(stripped)
        elif not line[0].isspace() and not line.startswith(("#", "-")):
            finish()
            name = canonical(re.split(r"[=\[\s;]", stripped, maxsplit=1)[0])
            block = [line]
            via_open = False
        elif stripped.startswith("--hash") and name:
            block.append(line)
        elif stripped.startswith("# via") and name:
            parents = stripped[len("# via") :].strip()
            via_open = not parents
            if parents:
                lock.depends(parents, name)
        elif stripped.startswith("#   ") and via_open and name:
            lock.depends(stripped[1:].strip(), name)
        else:
            via_open = False
    finish()
    return lock


# poetry.lock is read in poetry's own environment (the Dockerfile runs this script with
# its Python), with poetry's libraries: its content-hash, markers and constraints mean
# what poetry says they mean.


def poetry_fresh(project: Path) -> bool:
    """poetry.lock was written for pyproject.toml as it is (its content-hash, the check
    `poetry check --lock` makes), without starting poetry (a second)."""
    from poetry.packages.locker import Locker

    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    return Locker(project / "poetry.lock", pyproject).is_fresh()


def poetry_choice(project: Path, packages: list[dict]) -> dict[str, str] | None:
    """The version of each locked package that poetry installs on this machine (the build
    runs on the image's platform and Python) when it re-resolves the lock, as the image
    has it do (POETRY_INSTALLER_RE_RESOLVE): poetry.lock can lock a package twice under
    overlapping markers (torch's nvidia-* libraries are), and its markers alone would
    install both. Like poetry's resolver: the requirements of the groups sync installs,
    followed through the lock with their markers and extras, and of each package the
    newest locked version that fits every constraint on it and this Python. None where
    that does not settle (some package has no such version): then poetry decides."""
    from packaging.markers import default_environment
    from poetry.core.constraints.version import Version, parse_constraint
    from poetry.core.factory import Factory
    from poetry.core.version.markers import parse_marker

    environment = default_environment()
    python = Version.parse(environment["python_full_version"])

    def applies(marker: str | None, extras: frozenset[str] = frozenset()) -> bool:
        return not marker or parse_marker(marker).validate({**environment, "extra": set(extras)})

    locked: dict[str, list[dict]] = {}  # newest first
    for package in packages:
        if parse_constraint(package.get("python-versions", "*")).allows(python):
            locked.setdefault(canonical(package["name"]), []).append(package)
    for versions in locked.values():
        versions.sort(key=lambda package: Version.parse(package["version"]), reverse=True)

    root = Factory().create_poetry(project).package
    wanted_by_project = [
        (canonical(dependency.name), dependency.constraint, frozenset(dependency.extras))
        for group in root.dependency_group_names()  # sync's default: the non-optional groups
        for dependency in root.dependency_group(group).dependencies
        if not dependency.is_optional() and dependency.marker.validate({**environment, "extra": set()})
    ]

    def requirements(package: dict, extras: frozenset[str]):
        """What a locked package needs here, given the extras asked of it."""
        in_extras = {
            canonical(re.match(r"[A-Za-z0-9._-]+", line)[0])
            for extra in extras
            for line in package.get("extras", {}).get(extra, [])
        }
        for name, specs in package.get("dependencies", {}).items():
            for spec in specs if isinstance(specs, list) else [specs]:
                spec = {"version": spec} if isinstance(spec, str) else spec
                if set(spec) - {"version", "markers", "extras", "optional"}:
                    raise LookupError(f"{package['name']} needs {name} as {spec}")
                if spec.get("optional") and canonical(name) not in in_extras:
                    continue
                if applies(spec.get("markers"), extras):
                    yield canonical(name), parse_constraint(spec.get("version", "*")), frozenset(spec.get("extras", ()))

    def fits(version: str, constraints: list) -> bool:
        return all(constraint.allows(Version.parse(version)) for constraint in constraints)

    def walk(chosen: dict[str, dict]) -> dict[str, tuple[list, set[str]]]:
        """Each package the project needs here: the constraints on it, the extras asked."""
        wants: dict[str, tuple[list, set[str]]] = {}
        expanded: dict[str, frozenset[str]] = {}
        todo: list[tuple[str, object, frozenset[str]]] = list(wanted_by_project)
        while todo:
            name, constraint, extras = todo.pop()
            constraints, asked = wants.setdefault(name, ([], set()))
            constraints.append(constraint)
            asked.update(extras)
            if name in chosen and expanded.get(name) != asked:
                expanded[name] = frozenset(asked)
                todo.extend(requirements(chosen[name], expanded[name]))
        return wants

    chosen: dict[str, dict] = {}
    try:
        for _ in range(len(packages) + 1):
            wants = walk(chosen)
            now = {}
            for name, (constraints, _asked) in wants.items():
                version = next((p for p in locked.get(name, []) if fits(p["version"], constraints)), None)
                if version:
                    now[name] = version
            if now == chosen:
                break
            chosen = now
        else:
            return None  # no fixed point: poetry's backtracking would be needed
    except LookupError:
        return None  # a dependency written in a form this reader does not know
    if set(wants) != set(chosen):
        return None
    return {name: package["version"] for name, package in chosen.items()}


def poetry_dry_run(project: Path) -> dict[str, str]:
    """poetry's resolver's own choice: `poetry sync --dry-run` into an empty environment,
    with the locked packages re-resolved for it (nothing is downloaded; a few seconds)."""
    with tempfile.TemporaryDirectory() as empty:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", empty], check=True)
        env = {**os.environ, "VIRTUAL_ENV": empty, "POETRY_INSTALLER_RE_RESOLVE": "true"}
        command = ["sync", "--directory", str(project), "--no-root", "--dry-run", "--no-interaction", "--no-ansi"]
        result = subprocess.run([str(Path(sys.executable).with_name("poetry")), *command],
                                env=env, capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"poetry {' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return {canonical(m[1]): m[2] for m in re.finditer(r"Installing (\S+) \(([^\s)]+)", result.stdout)}


def read_poetry(packages: list[dict], installs: dict[str, str]) -> Lock:
    """poetry.lock, narrowed to the versions poetry installs on this machine."""
    lock = Lock()
    sources: list[str] = []
    for package in packages:
        name, version = package["name"], package["version"]
        for child in package.get("dependencies", {}):
            lock.depends(name, child)
        source = package.get("source", {})
        hashes = [entry["hash"] for entry in package.get("files", []) if entry.get("hash")]
        if installs.get(canonical(name)) != version or not hashes or source.get("type", "legacy") != "legacy":
            continue  # not for this machine, or a path, URL or git package poetry installs itself
        url = source.get("url", PYPI).rstrip("/")
        if url not in sources:
            sources.append(url)
        lock.add(name, version, " \\\n".join([f"{name}=={version}", *(f"    --hash={h}" for h in hashes)]))
    if sources:
        lock.options = [f"--index-url {sources[0]}", *(f"--extra-index-url {url}" for url in sources[1:])]
    return lock


Layer = tuple[str, list[str], "list[str] | None"]  # name, roots, globs of what to keep


def parse_layer(arg: str) -> Layer:
    """NAME=ROOT,ROOT...[:KEEP,KEEP...]"""
    name, spec = arg.split("=", 1)
    roots, colon, keep = spec.partition(":")
    return name, [r for r in roots.split(",") if r], [k for k in keep.split(",") if k] if colon else None


def split(lock: Lock, layers: list[Layer]) -> dict[str, list[str]]:
    """Each layer's package names: its roots' closure (what it keeps of it) less the
    earlier layers'."""
    taken: set[str] = set()
    result = {}
    for layer, roots, keep in layers:
        names = sorted(lock.closure(roots, keep) - taken)
        taken.update(names)
        result[layer] = names
    return result


def render(lock: Lock, names: list[str]) -> str:
    blocks = [block for name in names for _version, block in lock.blocks[name]]
    return "\n".join([*lock.options, *blocks]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not all("=" in arg for arg in argv[2:-1]) or "=" in argv[-1]:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    lock_path, out = Path(argv[0]), Path(argv[1])
    text = lock_path.read_text(encoding="utf-8")
    if lock_path.name == "poetry.lock":
        if not poetry_fresh(lock_path.parent):
            print("poetry.lock is stale: its content-hash is not pyproject.toml's.", file=sys.stderr)
            return 3
        packages = tomllib.loads(text)["package"]
        installs = poetry_choice(lock_path.parent, packages)
        if installs is None:
            print("versions: the lock does not settle them here; poetry's resolver chooses")
            installs = poetry_dry_run(lock_path.parent)
        else:
            print("versions: the newest locked that fit every constraint here")
        lock = read_poetry(packages, installs)
    else:
        lock = read_requirements(text)
    layers = [parse_layer(arg) for arg in argv[2:-1]]
    names = split(lock, layers)
    names[argv[-1]] = sorted(set(lock.blocks) - {n for layer in names.values() for n in layer})
    out.mkdir(parents=True, exist_ok=True)
    for layer, members in names.items():
        (out / f"{layer}.txt").write_text(render(lock, members), encoding="utf-8")
        print(f"{layer}: {len(members)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
