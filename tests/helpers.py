"""Shared test helpers: relative error, and wrapping a function as a module."""
from __future__ import annotations

import torch


def rel_err(out, ref) -> float:
    """Largest relative (Frobenius) error over matching tensors of two output structures."""
    outs, _ = torch.utils._pytree.tree_flatten(out)
    refs, _ = torch.utils._pytree.tree_flatten(ref)
    assert len(outs) == len(refs), f"{len(outs)} outputs, expected {len(refs)}"
    worst = 0.0
    for o, r in zip(outs, refs):
        assert o.shape == r.shape, f"shape {tuple(o.shape)} != {tuple(r.shape)}"
        assert o.dtype == r.dtype, f"dtype {o.dtype} != {r.dtype}"
        o, r = o.double(), r.double()
        if not r.is_floating_point() or r.dtype == torch.bool:
            assert torch.equal(o, r), "integer/bool outputs differ"
            continue
        denom = r.norm().item() or 1.0
        worst = max(worst, (o - r).norm().item() / denom)
    return worst


class Fn(torch.nn.Module):
    """A plain function as an nn.Module (what torch.export and ember.compile take)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def as_module(fn) -> torch.nn.Module:
    return fn.eval() if isinstance(fn, torch.nn.Module) else Fn(fn).eval()


class Mlp(torch.nn.Module):
    """Two linear layers around an activation: the smallest model with real kernels in it."""

    def __init__(self, act=torch.nn.functional.gelu):
        super().__init__()
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 16)
        self.act = act

    def forward(self, x):
        return self.down(self.act(self.up(x)))
