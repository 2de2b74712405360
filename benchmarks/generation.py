"""How long generating a project takes, as a user runs it: `cookiecutter --no-input` in a
new process (Python's start, the prompts' defaults, both hooks, rendering every file),
for every combination the bake tests generate (one per shipped lock), several rounds
each. Prints the median per combination and over all of them; prints figures only.

    python benchmarks/generation.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TEMPLATE / "scripts"))
import relock  # the shipped combinations, as the maintenance script reads them


def generate_seconds(answers: dict, output: Path) -> float:
    """One generation's wall time, in seconds (it must succeed)."""
    command = [str(Path(sys.executable).parent / "cookiecutter"), "--no-input", "-o", str(output), str(TEMPLATE)]
    command += [f"{key}={value}" for key, value in answers.items()]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    keys = sorted(path.name for path in relock.template_rules.LOCKS_DIR.iterdir())
    every = []
    with tempfile.TemporaryDirectory() as scratch:
        for key in keys:
            answers = {**relock.parse_key(key), "readme_language": "en+ko"}
            times = [generate_seconds(answers, Path(scratch) / f"{key}-{round_}") for round_ in range(rounds)]
            every += times
            print(f"{key:40} median {statistics.median(times):.2f} s  (min {min(times):.2f}, max {max(times):.2f})")
    print(f"all {len(keys)} combinations x {rounds}: median {statistics.median(every):.2f} s, max {max(every):.2f} s")


if __name__ == "__main__":
    main()
