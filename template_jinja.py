"""The template's Jinja extension: values derived from the answers, and defaults read
from the host, all defined in hooks/template_rules.py (``install_jinja``).

Keep this file as it is. `cruft update` renders the old and the new version of the
template in one Python process, and Python imports an extension module once: whatever
this file defined would come from the older version for both. So it only reads
hooks/template_rules.py from disk, and every rule, filter and global lives there. One
generation makes four Jinja environments: the rules are executed once for all of them,
and again only when the files they are read from (hooks/, compat.yaml) hold other bytes. (It replaced ``local_extensions.py`` under a new name for
the same reason: projects made before it still have that module cached in their updates.)
"""

import hashlib
import importlib.util
import sys
from pathlib import Path

from jinja2.ext import Extension

RULES_FILE = Path(__file__).resolve().parent / "hooks" / "template_rules.py"
# The rules last executed, under the digest of the files they were read from.
_loaded = {}


def rules_digest():
    """A digest of every file the rules are read from: the rules and the table."""
    digest = hashlib.sha256()
    for path in [RULES_FILE, *sorted(RULES_FILE.parent.glob("rules/*.py")), RULES_FILE.parents[1] / "compat.yaml"]:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def load_rules():
    """hooks/template_rules.py of this checkout, executed once per content of its files."""
    key = rules_digest()
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = execute_rules()
    return _loaded[key]


def execute_rules():
    """hooks/template_rules.py of this checkout, executed afresh."""
    spec = importlib.util.spec_from_file_location("_template_rules_for_jinja", RULES_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in hooks/
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


class TemplateRules(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        self.rules = load_rules()
        self.rules.install_jinja(environment)

    def preprocess(self, source, name, filename=None):
        """Each source before Jinja parses it, through the rules' ``preprocess`` (which
        refuses answers holding Jinja before they are evaluated), where they have one."""
        check = getattr(self.rules, "preprocess", None)
        return check(source, name) if check else source
