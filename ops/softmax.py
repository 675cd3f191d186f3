"""Softmax and log-softmax along one dimension: `ember.softmax` {dim, log}.

The reference is the numerically stable form (the row maximum is subtracted before `exp`). A row
whose elements are all -inf gives zeros (torch's `_safe_softmax`, used by attention masks).
"""
from __future__ import annotations

import numpy as np
import torch

from ops.registry import Attr, Sample, define_op, lowers, norm_dim, samples

aten = torch.ops.aten


def _infer(x, dim, log):
    if not x.is_float:
        raise ValueError(f"softmax needs a floating-point input, got {x.dtype}")
    norm_dim(dim, x.rank)
    return x


def stable_softmax(x: np.ndarray, axis: int, log: bool = False) -> np.ndarray:
    """softmax (or log-softmax) of float64 `x` along `axis`; all -inf rows give 0 (softmax) or -inf (log)."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True) if x.size else x
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(all="ignore"):
        shifted = x - m
        e = np.exp(shifted)
        s = np.sum(e, axis=axis, keepdims=True)
        if log:
            return shifted - np.log(s)
        return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def _reference(x, dim, log):
    axis = norm_dim(dim, x.ndim)
    if x.ndim == 0:
        return np.zeros_like(x, dtype=np.float64) if log else np.ones_like(x, dtype=np.float64)
    return stable_softmax(x.astype(np.float64), axis, log)


def _torch_impl(x, dim, log):
    if log:
        return torch.log_softmax(x, dim)
    return aten._safe_softmax(x, dim)   # zeros, not NaN, for a row of all -inf


softmax = define_op(
    "softmax", operands=("input",), attrs={"dim": Attr.INT, "log": Attr.BOOL}, infer=_infer,
    reference=_reference, torch_impl=_torch_impl,
    doc="softmax(input) along `dim` (log-softmax when `log`); a row of all -inf gives zeros.")


def _emit(b, x, dim, log):
    x = b.cast(x, b.result_spec().dtype)
    return b.emit(softmax, x, dim=norm_dim(dim, x.rank), log=log)


@lowers(aten._softmax.default)
def _softmax_internal(b, x, dim, half_to_float=False):
    return _emit(b, x, dim, False)


@lowers(aten._log_softmax.default)
def _log_softmax_internal(b, x, dim, half_to_float=False):
    return _emit(b, x, dim, True)


@lowers(aten.softmax.int)
def _softmax(b, x, dim, dtype=None):
    return _emit(b, x, dim, False)


@lowers(aten.log_softmax.int)
def _log_softmax(b, x, dim, dtype=None):
    return _emit(b, x, dim, True)


@lowers(aten._safe_softmax.default)
def _safe_softmax(b, x, dim, dtype=None):
    # ember.softmax already gives zeros for rows that are all -inf.
    return _emit(b, x, dim, False)


def _safe_masked(x):
    # row 1 of every matrix is masked out entirely: _safe_softmax gives zeros there
    masked = x.masked_fill(torch.arange(x.shape[-2])[:, None] == 1, float("-inf"))
    return torch.ops.aten._safe_softmax(masked, -1)


samples(
    Sample("softmax-last-and-middle", lambda x: torch.softmax(x * 3.0, dim=-1) + torch.softmax(x, dim=1),
           lambda: (torch.randn(2, 5, 9),)),
    Sample("log-softmax", lambda x: torch.log_softmax(x, dim=-1) - torch.nn.functional.log_softmax(x, dim=0),
           lambda: (torch.randn(6, 11),)),
    Sample("softmax-dtype", lambda x: torch.softmax(x, dim=-1, dtype=torch.float32) * 2,
           lambda: (torch.randn(3, 7).to(torch.float64),)),
    Sample("softmax-large-logits", lambda x: torch.softmax(x * 200.0, dim=-1),
           lambda: (torch.randn(4, 16),)),
    Sample("safe-softmax-masked-row", _safe_masked, lambda: (torch.randn(2, 5, 6),)),
    Sample("softmax-bf16", lambda x: (torch.softmax(x, dim=-1), torch.log_softmax(x, -1, dtype=torch.float32)),
           lambda: (torch.randn(3, 10).to(torch.bfloat16),), rtol=1e-2),
)
