"""Finished sweep points on disk: `<out>/points/<key>.json`, one file per point, written to a
temporary name and renamed into place, so a sweep killed at any moment leaves only whole points.

A point's key hashes the chip variant (its fingerprint, or the field values a chip schema
refused), the workload, and Ember's compiler fingerprint (the source of everything that decides a
point's numbers: the compiler, ops, simulator with its C++ core, runtime, models, and the code
that compiles and measures a point; not the report or the runner): a sweep run again skips the
points it finished, and an edited compiler recomputes them all.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ember.dse.spec import Point
from simulator.spec import ChipSpecError

_ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("compiler", "ops", "simulator", "runtime", "models")
_FILES = ("ember/compiled.py", "ember/generation.py", "ember/dse/point.py", "ember/dse/spec.py")
_SUFFIXES = (".py", ".cpp", ".h", ".yaml")


def compiler_fingerprint() -> str:
    h = hashlib.sha256()
    files = [p for folder in _SOURCES for p in (_ROOT / folder).rglob("*") if p.suffix in _SUFFIXES]
    for path in sorted(files + [_ROOT / f for f in _FILES]):
        h.update(str(path.relative_to(_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def point_key(point: Point, fingerprint: str) -> str:
    try:
        chip = point.chip().fingerprint()
    except ChipSpecError:
        chip = "refused " + json.dumps(point.values, sort_keys=True, default=str)
    text = "\0".join((chip, point.workload.key(), fingerprint))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class PointStore:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder) / "points"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> list[dict[str, Any]] | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["rows"]
        except (ValueError, KeyError):          # not a whole point: recompute it
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, rows: list[dict[str, Any]]) -> None:
        tmp = self.folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"rows": rows}))
        os.replace(tmp, self.path(key))
