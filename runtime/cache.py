"""The compile cache: finished Programs on disk, keyed by what determines them.

The key hashes the graph-level IR, the weights (their bytes; shapes and types only for a model on
the meta device), the compile options, the chip spec, and the source of the packages that
compile (`compiler/`, `ops/`, `simulator/isa/`), so an edited pass never serves a stale Program.

An entry is a Program file (`<key>.ember`), written to a temporary name in the cache folder and
renamed into place, so a compile killed half-way leaves no entry. An entry that does not load (a
truncated or corrupted file: the Program's own checksum) is deleted and rebuilt, never used.

The folder is `$EMBER_CACHE_DIR`, else `~/.cache/ember`.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from simulator.isa.artifact import VERSION, Program, ProgramFileError

_ROOT = Path(__file__).resolve().parent.parent
_SOURCE_DIRS = ("compiler", "ops", "simulator/isa")
_STALE_TMP_SECONDS = 3600


def default_dir() -> Path:
    return Path(os.environ.get("EMBER_CACHE_DIR") or Path.home() / ".cache" / "ember")


def _source_digest() -> str:
    h = hashlib.sha256()
    for folder in _SOURCE_DIRS:
        for path in sorted((_ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


class CompileCache:
    """Programs on disk under `folder`; pass one to `ember.compile(..., cache=...)`."""

    _source: str | None = None

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_dir()
        self.hits = 0
        self.misses = 0
        self.discarded = 0

    # ------------------------------------------------------------------ keys
    def key(self, graph: Any, options: Any, chip: Any) -> str:
        """The hash of the graph (IR and weights), the options and the chip."""
        if CompileCache._source is None:
            CompileCache._source = _source_digest()
        h = hashlib.sha256()
        for part in (f"program-format {VERSION}", CompileCache._source, options.key(), chip.fingerprint()):
            h.update(part.encode())
            h.update(b"\0")
        with graph.context:
            h.update(str(graph.module).encode())
        for name in sorted(graph.weights):
            h.update(_weight_digest(name, graph.weights[name]))
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.ember"

    # ------------------------------------------------------------------ entries
    def load(self, key: str) -> Program | None:
        """The cached Program for `key`, or None; a damaged entry is deleted (and counted)."""
        path = self.path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            program = Program.load(str(path))
        except ProgramFileError as e:
            warnings.warn(f"compile cache: discarding a damaged entry ({e}); recompiling", stacklevel=2)
            path.unlink(missing_ok=True)
            self.discarded += 1
            self.misses += 1
            return None
        self.hits += 1
        return program

    def store(self, key: str, program: Program) -> bool:
        """Write `program` under `key` atomically; False (and no entry) when it cannot be written,
        e.g. when it calls a host op that has no plain-data form."""
        if any(isinstance(c, str) for c in program.meta.get("host_calls", [])):
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        program.save(str(self.path(key)))
        return True

    def entries(self) -> list[Path]:
        """The finished entries (temporaries of compiles in flight, or killed, are not entries)."""
        return sorted(self.folder.glob("[!.]*.ember")) if self.folder.exists() else []

    def clear(self) -> None:
        for path in self.folder.glob("*.ember"):
            path.unlink(missing_ok=True)

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for tmp in self.folder.glob(".tmp-*.ember"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass


def _weight_digest(name: str, tensor: torch.Tensor) -> bytes:
    h = hashlib.sha256(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
    if not tensor.is_meta:
        t = tensor.detach().contiguous().cpu()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.digest()


def as_cache(cache: Any) -> CompileCache | None:
    """`ember.compile`'s `cache=` argument: None/False (none), True (the default folder), a folder,
    or a CompileCache."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return CompileCache()
    if isinstance(cache, CompileCache):
        return cache
    return CompileCache(cache)
