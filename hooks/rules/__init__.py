"""The template's rules, one module per concern:

- ``words``: what a project says to a person, in English and Korean (one catalogue);
- ``table``: the compatibility table (compat.yaml), labels, values derived from the answers, shipped locks;
- ``host``: GPUs and builds, nvidia-smi, the defaults read from the host;
- ``answers``: validation of the answers;
- ``files``: what generation may touch on disk (links, ownership, regeneration);
- ``update``: the project's record for `cruft update`;
- ``jinja``: the filters and globals of the template's Jinja environment.

Import ``hooks/template_rules.py``, not this package: it loads the package afresh.
"""
