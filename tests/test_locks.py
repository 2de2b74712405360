"""The shipped locks: current with their inputs, and the maintenance command that keeps
them so (scripts/relock.py, which runs each project's own docker/lock script)."""

from __future__ import annotations

import shutil
import sys

import pytest
from conftest import TEMPLATE, template_rules

sys.path.insert(0, str(TEMPLATE / "scripts"))

import relock

KEYS = sorted(path.name for path in template_rules.LOCKS_DIR.iterdir())

# An edit of each kind of lock that makes it disagree with its input.
LOCK_EDIT = {
    "uv": ('{ name = "torch", specifier = "==', '{ name = "torch", specifier = "==9'),
    "pip": ("# requirements.in sha256: ", "# requirements.in sha256: 0"),
    "poetry": ('content-hash = "', 'content-hash = "0'),
}


@pytest.fixture
def locks_copy(tmp_path, monkeypatch):
    """The shipped locks, copied, so a test may edit them."""
    copy = tmp_path / "locks"
    shutil.copytree(template_rules.LOCKS_DIR, copy)
    monkeypatch.setattr(template_rules.table, "LOCKS_DIR", copy)
    return copy


@pytest.mark.parametrize("key", KEYS)
def test_shipped_lock_matches_its_input(key):
    assert relock.lock_one(key, check=True, upgrade=False)


@pytest.mark.parametrize("manager", sorted(LOCK_EDIT))
def test_edited_shipped_lock_is_reported_stale(locks_copy, manager, capsys):
    key = f"pytorch-cu130-py3.12-{manager}"
    lock = template_rules.shipped_lock(key, manager)
    old, new = LOCK_EDIT[manager]
    assert old in lock.read_text()
    lock.write_text(lock.read_text().replace(old, new, 1))
    assert not relock.lock_one(key, check=True, upgrade=False)
    assert f"STALE {key}" in capsys.readouterr().err


@pytest.mark.network
def test_relock_resolves_against_the_index_and_keeps_current_pins(locks_copy):
    """The maintenance command really resolves (PyPI), and re-locking an up-to-date
    combination changes nothing: locks move only when their inputs do."""
    key = "pytorch-cu130-py3.12-uv"
    before = template_rules.shipped_lock(key, "uv").read_text()
    assert relock.lock_one(key, check=False, upgrade=False)
    assert template_rules.shipped_lock(key, "uv").read_text() == before
