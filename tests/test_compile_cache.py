"""The compile cache: hits, misses, and what a killed compile or a damaged entry leaves behind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ember
from runtime.cache import CompileCache
from tests.helpers import Mlp, rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Mlp().eval()


def _compile(model, cache):
    return ember.compile(model, (torch.randn(4, 32),), chip="tiny", dtype="fp32", cache=cache)


def test_second_compile_is_a_hit_and_runs_the_same(tmp_path):
    cache = CompileCache(tmp_path)
    model = _model()
    first = _compile(model, cache)
    assert (cache.hits, cache.misses, len(cache.entries())) == (0, 1, 1)
    second = _compile(model, cache)
    assert (cache.hits, cache.misses) == (1, 1)
    assert "tile-and-map" not in second.timings and "codegen" not in second.timings   # nothing rebuilt
    assert second.ir("tiled") == first.ir("tiled")
    assert second.ir("program") == first.ir("program") and "ember.dma" in second.ir("program")
    x = torch.randn(4, 32)
    with torch.no_grad():
        ref = model(x)
    out = second.run(x, device="sim")
    assert rel_err(out, ref) <= 1e-4
    assert torch.equal(out, first.run(x, device="sim"))
    assert second.last_run.cycles == first.last_run.cycles


def test_key_covers_weights_options_and_chip(tmp_path):
    cache = CompileCache(tmp_path)
    _compile(_model(0), cache)
    _compile(_model(1), cache)                                       # same graph, other weights
    ember.compile(_model(0), (torch.randn(4, 32),), chip="mtia2i", dtype="fp32", cache=cache)
    ember.compile(_model(0), (torch.randn(4, 32),), chip="tiny", dtype="bf16", cache=cache)
    assert cache.hits == 0 and len(cache.entries()) == 4


_KILLED = textwrap.dedent("""
    import os, signal, sys, zipfile
    sys.path.insert(0, {root!r})
    import torch, ember
    from runtime.cache import CompileCache
    from tests.test_compile_cache import _compile, _model

    real = zipfile.ZipFile.writestr
    def die_mid_write(self, name, data, *a, **k):
        real(self, name, data, *a, **k)
        os.kill(os.getpid(), signal.SIGKILL)      # killed with the entry half written
    zipfile.ZipFile.writestr = die_mid_write
    _compile(_model(), CompileCache({folder!r}))
""")


def test_killed_compile_leaves_no_entry(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLED.format(root=ROOT, folder=str(tmp_path))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    cache = CompileCache(tmp_path)
    assert cache.entries() == []                                # only a temporary, if anything
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    _compile(_model(), cache)
    assert cache.misses == 1 and len(cache.entries()) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_entry_is_discarded_and_rebuilt(tmp_path, damage):
    cache = CompileCache(tmp_path)
    model = _model()
    _compile(model, cache)
    (entry,) = cache.entries()
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        entry.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    with pytest.warns(UserWarning, match="damaged entry"):
        cm = _compile(model, cache)
    assert cache.discarded == 1 and cache.hits == 0
    assert "codegen" in cm.timings                               # rebuilt, not loaded
    (rebuilt,) = cache.entries()
    assert rebuilt.read_bytes() != entry.read_bytes()[: len(data) // 2]
    again = _compile(model, cache)
    assert cache.hits == 1
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert rel_err(again.run(x, device="sim"), model(x)) <= 1e-4
