"""The template's rules, as one module: the compatibility table, values derived from
the answers, validation, what generation may touch on disk, and defaults read from the
host. Shared by the hooks, the Jinja extension (``template_jinja.py``), the maintenance
scripts and the tests, so each rule is written once. Needs only the standard library and
PyYAML, which cookiecutter itself depends on, so it runs wherever cookiecutter does.

The rules live in ``hooks/rules/``, one module per concern (its ``__init__`` lists
them); this file loads that package afresh each time it is itself loaded and offers
every module's names here. Afresh, because `cruft update` renders the old and the new
version of the template in one process: ``template_jinja.py`` loads this file anew for
each, and each must get its own version's rules, not the first one imported. This file
keeps its name and its ``install_jinja`` for the same reason: a template_jinja.py from an
older version of the template, already imported, loads it by path.

Tests that replace a rule's setting replace it in its module: ``template_rules.table.LOCKS_DIR``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent / "rules"
_MODULES = ("words", "table", "host", "answers", "files", "update", "jinja")


def _load_package() -> types.ModuleType:
    """hooks/rules/ as a fresh package under a name of its own (no import cache)."""
    name = f"{__name__}__rules"
    for loaded in [key for key in sys.modules if key == name or key.startswith(f"{name}.")]:
        del sys.modules[loaded]
    spec = importlib.util.spec_from_file_location(
        name, _PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(_PACKAGE_DIR)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package  # relative imports and dataclasses look it up
    # No __pycache__ in the template's checkout (it may be shared, or root may run this).
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(package)
        for module in _MODULES:
            importlib.import_module(f"{name}.{module}")
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return package


_package = _load_package()
for _name in _MODULES:
    _module = getattr(_package, _name)
    globals()[_name] = _module
    globals().update(
        {
            key: value
            for key, value in vars(_module).items()
            if not key.startswith("__") and not isinstance(value, types.ModuleType) and key != "annotations"
        }
    )
del _name, _module
