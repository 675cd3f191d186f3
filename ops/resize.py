"""Resizing (`F.interpolate`, `nn.Upsample`): `ember.resize` over the spatial dimensions of an
(N, C, *spatial) tensor, with nearest, nearest-exact, (bi/tri)linear and bicubic modes.

Each mode is separable: output position `o` of a spatial dimension reads input positions chosen
(nearest) or weighted (linear: 2 taps, cubic: 4 taps) by a source coordinate computed exactly as
PyTorch does (`align_corners`, and the user's scale factor when one was given instead of a size).
On the chip a resize is a small matmul per spatial dimension with a constant interpolation matrix.
Antialiased resizing (`antialias=True`) and area mode are different targets and stay unsupported.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples

aten = torch.ops.aten

MODES = ("nearest", "nearest_exact", "linear", "cubic")
CUBIC_A = -0.75


def _scale(in_size: int, out_size: int, align_corners: bool, scale: float) -> float:
    """The source step per output step (torch's `area_pixel_compute_scale`), in float32 like torch."""
    if align_corners:
        return float(np.float32(in_size - 1) / np.float32(out_size - 1)) if out_size > 1 else 0.0
    return float(np.float32(1.0 / scale)) if scale > 0 else float(np.float32(in_size) / np.float32(out_size))


def nearest_index(in_size: int, out_size: int, scale: float, exact: bool) -> np.ndarray:
    """The input position each output position copies (torch's `nearest_idx` / `nearest_exact_idx`)."""
    o = np.arange(out_size)
    if not exact and out_size == in_size:
        return o
    if not exact and out_size == 2 * in_size:
        return o >> 1
    step = np.float32(_scale(in_size, out_size, False, scale))
    if exact:   # torch: floorf((index + 0.5) * scale), the product in double, rounded to float
        src = ((o + 0.5) * np.float64(step)).astype(np.float32)
    else:       # torch: floorf(index * scale), in float
        src = o.astype(np.float32) * step
    return np.minimum(np.floor(src).astype(np.int64), in_size - 1)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """The 4 tap weights of Keys' cubic convolution (A = -0.75) at fractional offset t."""
    a = CUBIC_A

    def near(x):   # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):    # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(mode: str, in_size: int, out_size: int, align_corners: bool, scale: float) -> np.ndarray:
    """The (out_size, in_size) float64 matrix that resizes one dimension."""
    w = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if mode in ("nearest", "nearest_exact"):
        w[rows, nearest_index(in_size, out_size, scale, mode == "nearest_exact")] = 1.0
        return w
    step = _scale(in_size, out_size, align_corners, scale)
    src = rows * step if align_corners else (rows + 0.5) * step - 0.5
    if mode == "linear":
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        frac = np.clip(src - i0, 0.0, 1.0)
        np.add.at(w, (rows, i0), 1.0 - frac)
        np.add.at(w, (rows, i1), frac)
        return w
    base = np.floor(src).astype(np.int64)
    taps = _cubic_weights(src - base)
    for k in range(4):
        np.add.at(w, (rows, np.clip(base - 1 + k, 0, in_size - 1)), taps[:, k])
    return w


def _infer(x, mode, size, align_corners, scales):
    if mode not in MODES:
        raise ValueError(f"unknown resize mode '{mode}' (known: {', '.join(MODES)})")
    spatial = x.rank - 2
    if spatial < 1 or spatial > 3:
        raise ValueError(f"input must be (N, C, *spatial) with 1 to 3 spatial dims, got shape {x.shape}")
    if len(size) != spatial or len(scales) != spatial:
        raise ValueError(f"size {size} and scales {scales} must have one entry per spatial dim ({spatial})")
    if any(s <= 0 for s in size):
        raise ValueError(f"output size {size} must be positive")
    if mode in ("linear", "cubic") and not x.is_float:
        raise ValueError(f"{mode} resize needs a float input, got {x.dtype}")
    return x.with_(shape=(*x.shape[:2], *size))


def _reference(x, mode, size, align_corners, scales):
    nearest = mode in ("nearest", "nearest_exact")
    y = x if nearest else x.astype(np.float64)
    for d, (out_size, scale) in enumerate(zip(size, scales)):
        axis, in_size = d + 2, y.shape[d + 2]
        if nearest:
            y = np.take(y, nearest_index(in_size, out_size, scale, mode == "nearest_exact"), axis=axis)
        else:
            m = interpolation_matrix(mode, in_size, out_size, align_corners, scale)
            y = np.moveaxis(np.tensordot(y, m, axes=([axis], [1])), -1, axis)
    return y


#: (mode, spatial dims) -> the aten kernel; the linear and cubic ones take align_corners first.
TORCH_RESIZE = {
    ("nearest", 1): aten.upsample_nearest1d.default, ("nearest", 2): aten.upsample_nearest2d.default,
    ("nearest", 3): aten.upsample_nearest3d.default,
    ("nearest_exact", 1): aten._upsample_nearest_exact1d.default,
    ("nearest_exact", 2): aten._upsample_nearest_exact2d.default,
    ("nearest_exact", 3): aten._upsample_nearest_exact3d.default,
    ("linear", 1): aten.upsample_linear1d.default, ("linear", 2): aten.upsample_bilinear2d.default,
    ("linear", 3): aten.upsample_trilinear3d.default, ("cubic", 2): aten.upsample_bicubic2d.default,
}


def _torch_impl(x, mode, size, align_corners, scales):
    kernel = TORCH_RESIZE.get((mode, len(size)))
    if kernel is None:
        raise NotImplementedError(f"{mode} resize of {len(size)} spatial dims (torch has no kernel for it)")
    # the user's scale factors, not in/out, set the source step: pass them on as torch's F.interpolate does
    given = [s if s > 0 else None for s in scales]
    if mode in ("nearest", "nearest_exact"):
        return kernel(x, list(size), *given)
    return kernel(x, list(size), align_corners, *given)


resize = define_op(
    "resize", operands=("input",),
    attrs={"mode": Attr.STR, "size": Attr.INTS, "align_corners": Attr.BOOL, "scales": Attr.FLOATS},
    infer=_infer, reference=_reference, torch_impl=_torch_impl,
    doc="Resize the spatial dims of (N, C, *spatial) `input` to `size` by `mode` (nearest, nearest_exact, "
        "linear, cubic). `scales` holds the user's scale factor per spatial dim (0: none given, the step is "
        "in/out); `align_corners` maps corner centers onto corner centers, as in torch.")


_TARGETS = {
    "nearest": (aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d),
    "nearest_exact": (aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d, aten._upsample_nearest_exact3d),
    "linear": (aten.upsample_linear1d, aten.upsample_bilinear2d, aten.upsample_trilinear3d),
    "cubic": (aten.upsample_bicubic2d,),
}


def _arguments(b, args, kwargs) -> dict:
    names = [a.name for a in b.node.target._schema.arguments]
    return {**dict(zip(names, args)), **kwargs}


def _rule(mode):
    def rule(b, x, *args, **kwargs):
        a = _arguments(b, (x, *args), kwargs)
        out = b.result_spec()
        spatial = x.rank - 2
        if mode in ("linear", "cubic") and not out.is_float:
            raise Unsupported(f"{mode} resize of {out.dtype} (integer images)")
        if "scale_factors" in a:
            scales = a["scale_factors"] or [None] * spatial
        else:
            keys = ["scales"] if spatial == 1 else ["scales_d", "scales_h", "scales_w"][3 - spatial:]
            scales = [a.get(k) for k in keys]
        if len(scales) != spatial:
            raise Unsupported(f"{len(scales)} scale factors for {spatial} spatial dims")
        scales = [0.0 if s is None else float(s) for s in scales]
        if any(not math.isfinite(s) or s < 0 for s in scales):
            raise Unsupported(f"scale factors {scales}")
        y = b.emit(resize, b.cast(x, out.dtype), mode=mode, size=tuple(out.shape[2:]),
                   align_corners=bool(a.get("align_corners", False)), scales=scales)
        return y
    rule.__module__ = __name__
    return rule


for _mode, _packets in _TARGETS.items():
    lowers(*[getattr(p, o) for p in _packets for o in ("default", "vec")])(_rule(_mode))


F = torch.nn.functional


def _resizes_2d(x):
    y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    y = y + F.interpolate(x, size=(10, 14), mode="nearest")
    y = y + F.interpolate(x, size=(10, 14), mode="bicubic", align_corners=True)
    return y + F.interpolate(x, size=(10, 14), mode="nearest-exact")


def _downsample_odd_scales(x):
    a = F.interpolate(x, scale_factor=(0.6, 1.7), mode="bilinear", align_corners=False)
    b = F.interpolate(x, scale_factor=(0.6, 1.7), mode="bicubic", align_corners=False)
    c = F.interpolate(x, scale_factor=(0.6, 1.7), mode="nearest")
    return a + b * 0.5 - c


def _resizes_1d_3d(x, v):
    y = F.interpolate(x, size=11, mode="linear", align_corners=True).sum(-1, keepdim=True)
    y = y + F.interpolate(x, scale_factor=3, mode="nearest")[..., :1]
    return y, F.interpolate(v, scale_factor=2, mode="trilinear")


samples(
    Sample("resize-2d-modes", _resizes_2d, lambda: (torch.randn(2, 3, 5, 7),)),
    Sample("resize-scale-factors", _downsample_odd_scales, lambda: (torch.randn(1, 2, 9, 6),)),
    Sample("resize-1d-3d", _resizes_1d_3d, lambda: (torch.randn(2, 4, 6), torch.randn(1, 2, 3, 4, 5))),
    Sample("upsample-module-after-conv", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                                             torch.nn.Upsample(scale_factor=2, mode="bilinear")),
           lambda: (torch.randn(1, 3, 6, 6),)),
)
