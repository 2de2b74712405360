"""Splits the lock into the image's environment layers. The Dockerfile runs it.

    python3 docker/env_layers.py LOCK OUTDIR [--poetry-installs FILE] NAME=ROOTS[:KEEP]... REST

LOCK is hash-pinned requirements text (requirements.txt, or `uv export` of uv.lock) or
poetry.lock; for poetry.lock, FILE holds the output of `poetry sync --dry-run` into an
empty environment. For each NAME=ROOT,ROOT..., in order, OUTDIR/NAME.txt gets the locked
packages the roots need that no earlier layer holds; with :KEEP,KEEP... (names or globs
such as nvidia-*) only the roots and those of their dependencies that KEEP names.
OUTDIR/REST.txt gets all others. Each file is hash-pinned requirements with the lock's
index options and markers, and no comments, so it changes only when its own packages do.

Why: the image installs each file in a layer of its own (without dependencies: the
layers together are exactly the lock, package for package), and BuildKit keys a layer by
the content of what it installs. The lowest layer holds the framework's big binary
wheels alone (about 5 GB): a new release of one of its small dependencies (filelock,
fsspec) changes a later, cheap layer, and adding a package changes the last one.

Standard library only; poetry.lock is read with tomllib (tomli, which poetry's own
environment has, before Python 3.11).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

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


def poetry_installs(text: str) -> dict[str, str]:
    """What `poetry sync --dry-run` into an empty environment would install here."""
    return {canonical(m[1]): m[2] for m in re.finditer(r"Installing (\S+) \(([^\s)]+)", text)}


def read_poetry(text: str, installs: dict[str, str]) -> Lock:
    """poetry.lock, narrowed to the versions poetry installs on this machine (the build
    runs on the image's platform and Python): it can lock a package twice under
    overlapping markers, and only poetry's own choice is the environment poetry accepts."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: poetry's environment has tomli
        import tomli as tomllib

    lock = Lock()
    sources: list[str] = []
    for package in tomllib.loads(text)["package"]:
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
    installs = None
    if len(argv) > 3 and argv[2] == "--poetry-installs":
        installs = poetry_installs(Path(argv[3]).read_text(encoding="utf-8"))
        argv = argv[:2] + argv[4:]
    if len(argv) < 3 or not all("=" in arg for arg in argv[2:-1]) or "=" in argv[-1]:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    lock_path, out = Path(argv[0]), Path(argv[1])
    text = lock_path.read_text(encoding="utf-8")
    lock = read_poetry(text, installs or {}) if installs is not None else read_requirements(text)
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
