"""Run inside the container: is /opt/venv exactly the locked package set?

    python installed_matches.py EXPECTED_REQUIREMENTS [ENV_PREFIX]

Reads a requirements file (name==version [; marker] lines, as requirements.txt or
`uv export` writes them), keeps the lines whose markers hold for this interpreter and
platform, and compares them with the distributions installed under ENV_PREFIX
(default /opt/venv). Run it with the image's tool environment (/opt/uv or
/opt/poetry: same base Python, and pip's vendored `packaging` for the markers).
Prints JSON: expected_count, missing, unexpected, wrong_version.
"""

import glob
import json
import re
import sys
from importlib import metadata

from pip._vendor.packaging.markers import Marker

# Seeded by `python3 -m venv`, not part of any lock.
BOOTSTRAP = {"pip"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def expected(path: str) -> dict[str, str]:
    pins = {}
    with open(path, encoding="utf-8") as lines:
        text = lines.read()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        match = re.match(r"^([A-Za-z0-9_.\-\[\],]+)==([^\s;]+)\s*(?:;(.*))?$", line)
        if not match:
            continue
        name, version, marker = match.groups()
        if marker and not Marker(marker).evaluate():
            continue
        pins[canonical(name.split("[")[0])] = version
    return pins


def installed(prefix: str) -> dict[str, str]:
    paths = glob.glob(f"{prefix}/lib/python3*/site-packages")
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions(path=paths)}


def main() -> None:
    want, have = expected(sys.argv[1]), installed(sys.argv[2] if len(sys.argv) > 2 else "/opt/venv")
    print(
        json.dumps(
            {
                "expected_count": len(want),
                "missing": {name: version for name, version in want.items() if name not in have},
                "unexpected": {n: v for n, v in have.items() if n not in want and n not in BOOTSTRAP},
                "wrong_version": {n: [want[n], have[n]] for n in want if n in have and have[n] != want[n]},
            }
        )
    )


main()
