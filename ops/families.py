"""Imports every op family module of `ops/` once, so their ops, rules and samples register.

Adding a family is adding a file `ops/<family>.py`; nothing else lists it.
"""
import importlib
import pkgutil

import ops

_NOT_FAMILIES = {"registry", "families", "kernel"}

FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(ops.__path__)
                        if m.name not in _NOT_FAMILIES and not m.ispkg and not m.name.startswith("_")))

for _name in FAMILIES:
    importlib.import_module(f"ops.{_name}")
