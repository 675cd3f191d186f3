"""What a timing-only run assumes about the data-dependent sizes it cannot read: how a
mixture-of-experts layer's rows spread over its experts.

A grouped matmul's group sizes are data (the router's choices). A run with numbers reads them
from device memory; a timing-only run has none, so it takes a routing:

- ``"uniform"`` (the default): the rows spread evenly over the experts;
- ``"skewed"``: expert e gets a share proportional to 1 / (e + 1) (Zipf's law, exponent 1),
  the load imbalance of an unbalanced router;
- a sequence of one non-negative weight per expert: shares proportional to the weights (a
  routing measured on real traffic).

No expert gets more rows than the layer has tokens (a token's k choices are distinct experts),
so the rows an expert cannot take go to the others, in proportion.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ROUTINGS = ("uniform", "skewed")


def describe(routing: Any) -> str:
    if routing is None or isinstance(routing, str):
        return routing or "uniform"
    return f"given ({len(routing)} expert weights)"


def check_routing(routing: Any) -> None:
    """Raise ValueError for a routing that is neither a name nor non-negative weights."""
    if routing is None or routing in ROUTINGS:
        return
    if isinstance(routing, str):
        raise ValueError(f"unknown routing '{routing}'; choose one of {', '.join(ROUTINGS)} or give one "
                         "non-negative weight per expert")
    w = np.asarray(routing, np.float64)
    if w.ndim != 1 or not len(w) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"a routing given as weights needs one non-negative weight per expert, not all zero; "
                         f"got {routing!r}")


def group_sizes(routing: Any, rows: int, groups: int, cap: int | None = None) -> list[int]:
    """Rows per group (summing to `rows`, each at most `cap`) under `routing`."""
    check_routing(routing)
    if routing is None or routing == "uniform":
        weights = np.ones(groups)
    elif routing == "skewed":
        weights = 1.0 / np.arange(1, groups + 1)
    else:
        weights = np.asarray(routing, np.float64)
        if len(weights) != groups:
            raise ValueError(f"the routing gives {len(weights)} expert weights for a layer of {groups} experts")
    cap = rows if cap is None else max(cap, -(-rows // groups))
    return _water_fill(weights, rows, cap)


def _water_fill(weights: np.ndarray, rows: int, cap: int) -> list[int]:
    sizes = np.zeros(len(weights), np.int64)
    for w in (weights, np.ones(len(weights))):      # then the zero-weight groups, if rows are left
        open_ = (w > 0) & (sizes < cap)
        while sizes.sum() < rows and open_.any():
            left = rows - sizes.sum()
            share = np.where(open_, w, 0.0)
            want = np.floor(left * share / share.sum()).astype(np.int64)
            if want.sum() == 0:         # fewer rows left than open groups: the heaviest take one each
                want[np.argsort(-share, kind="stable")[:left]] = 1
            sizes = np.minimum(sizes + want, cap)
            open_ &= sizes < cap
    return [int(s) for s in sizes]

