"""Shipped locks against their inputs, resolved for real (needs PyPI)."""

import os
import subprocess
import sys

import pytest
from conftest import TEMPLATE

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(os.environ.get("RUN_NETWORK_TESTS") != "1", reason="needs PyPI: set RUN_NETWORK_TESTS=1"),
]


def test_shipped_locks_match_their_inputs():
    """Fails when pyproject.toml or compat.yaml changed and a lock was not re-resolved."""
    result = subprocess.run(
        [sys.executable, "scripts/relock.py", "--check"], cwd=TEMPLATE, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
