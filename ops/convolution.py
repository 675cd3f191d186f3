"""Convolutions: `ember.conv` (N-d, grouped, strided, dilated) and `ember.conv_transpose`.

Layouts are PyTorch's: input [N, C, *spatial], weight [O, C/groups, *kernel] for conv and
[C, O/groups, *kernel] for conv_transpose, bias [O]. `padding` is symmetric, one entry per
spatial dimension; asymmetric padding (padding='same' with an even kernel) is an `ember.pad`
first. Lowers aten.convolution, _convolution, conv1d/2d/3d (and their padding='same'/'valid'
overloads) and conv_transpose1d/2d/3d.
"""
from __future__ import annotations

import numpy as np
import torch

from ops.pad import emit_pad
from ops.registry import Attr, Sample, Unsupported, define_op, lowers, samples, wide

aten = torch.ops.aten


def _check(x, w, bias, stride, padding, dilation, groups, out_channels):
    nd = x.rank - 2
    if nd < 1:
        raise ValueError(f"input {x.shape} needs batch, channel and at least one spatial dimension")
    if w.rank != x.rank:
        raise ValueError(f"weight {w.shape} and input {x.shape} differ in rank")
    if not len(stride) == len(padding) == len(dilation) == nd:
        raise ValueError(f"stride {stride}, padding {padding} and dilation {dilation} need {nd} entries")
    if groups < 1 or any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for p in padding):
        raise ValueError(f"invalid groups {groups}, stride {stride}, dilation {dilation} or padding {padding}")
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"bias shape {bias.shape} is not ({out_channels},)")
    if len({x.dtype, w.dtype} | ({bias.dtype} if bias is not None else set())) != 1:
        raise ValueError("input, weight and bias must share one element type")


def _conv_infer(x, w, bias, stride, padding, dilation, groups):
    _check(x, w, bias, stride, padding, dilation, groups, w.shape[0] if w.rank else 0)
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f"input channels {x.shape[1]} / weight {w.shape} do not fit groups={groups}")
    out = []
    for size, k, s, p, d in zip(x.shape[2:], w.shape[2:], stride, padding, dilation):
        n = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if n < 1:
            raise ValueError(f"kernel {w.shape[2:]} (dilation {dilation}) is larger than the padded input {x.shape[2:]}")
        out.append(n)
    return x.with_(shape=(x.shape[0], w.shape[0], *out))


def windows(x, kernel, stride, dilation):
    """A strided view of x [N, C, *S] as [N, C, *out, *kernel] windows (no copy)."""
    nd = len(kernel)
    spatial = x.shape[2:]
    out = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(spatial, kernel, stride, dilation)]
    strides = x.strides
    shape = (*x.shape[:2], *out, *kernel)
    new_strides = (*strides[:2], *(strides[2 + i] * stride[i] for i in range(nd)),
                   *(strides[2 + i] * dilation[i] for i in range(nd)))
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=new_strides, writeable=False)


def conv_reference(x, w, bias, stride, padding, dilation, groups):
    x, w = wide(x), wide(w)
    nd = x.ndim - 2
    if any(padding):
        x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    x = np.ascontiguousarray(x)
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    win = windows(x, kernel, stride, dilation)            # N, C, *out, *K
    out = win.shape[2:2 + nd]
    kk = int(np.prod(kernel))
    p = int(np.prod(out))
    win = win.reshape(n, groups, cg, p, kk)               # copies once: im2col
    cols = win.transpose(0, 1, 3, 2, 4).reshape(n, groups, p, cg * kk)
    wg = w.reshape(groups, o // groups, cg * kk)          # G, O/G, C/G*K
    y = np.matmul(cols, wg.transpose(0, 2, 1)[None])      # N, G, P, O/G
    y = y.transpose(0, 1, 3, 2).reshape(n, o, *out)
    if bias is not None:
        y = y + wide(bias).reshape(1, o, *([1] * nd))
    return y


_F = torch.nn.functional
TORCH_CONV = {1: _F.conv1d, 2: _F.conv2d, 3: _F.conv3d}
TORCH_CONV_TRANSPOSE = {1: _F.conv_transpose1d, 2: _F.conv_transpose2d, 3: _F.conv_transpose3d}


def _conv_torch(x, w, bias, stride, padding, dilation, groups):
    nd = x.dim() - 2
    if nd not in TORCH_CONV:
        return torch.convolution(x, w, bias, stride, padding, dilation, False, [0] * nd, groups)
    return TORCH_CONV[nd](x, w, bias, stride, padding, dilation, groups)


conv = define_op(
    "conv", operands=("input", "weight", "bias?"),
    attrs={"stride": Attr.INTS, "padding": Attr.INTS, "dilation": Attr.INTS, "groups": Attr.INT},
    infer=_conv_infer, reference=conv_reference, torch_impl=_conv_torch,
    doc="N-d cross-correlation of input [N, C, *S] with weight [O, C/groups, *K] (+ bias [O]), "
        "zero `padding` on both sides of each spatial dimension.")


def _tconv_infer(x, w, bias, stride, padding, output_padding, dilation, groups):
    if w.rank < 3:
        raise ValueError(f"weight {w.shape} has no spatial dimensions")
    _check(x, w, bias, stride, padding, dilation, groups, w.shape[1] * groups)
    if x.shape[1] != w.shape[0] or w.shape[0] % groups:
        raise ValueError(f"input channels {x.shape[1]} / weight {w.shape} do not fit groups={groups}")
    if len(output_padding) != x.rank - 2:
        raise ValueError(f"output_padding {output_padding} needs {x.rank - 2} entries")
    out = []
    for size, k, s, p, op_, d in zip(x.shape[2:], w.shape[2:], stride, padding, output_padding, dilation):
        if not 0 <= op_ < max(s, d):
            raise ValueError(f"output_padding {output_padding} must be below stride or dilation")
        n = (size - 1) * s - 2 * p + d * (k - 1) + op_ + 1
        if n < 1:
            raise ValueError(f"transposed convolution output size {n} is not positive")
        out.append(n)
    return x.with_(shape=(x.shape[0], w.shape[1] * groups, *out))


def _tconv_reference(x, w, bias, stride, padding, output_padding, dilation, groups):
    x, w = wide(x), wide(w)
    nd = x.ndim - 2
    n, c = x.shape[:2]
    og = w.shape[1]
    kernel = w.shape[2:]
    spatial = x.shape[2:]
    full = [(s - 1) * st + d * (k - 1) + 1 + op_ for s, k, st, d, op_ in
            zip(spatial, kernel, stride, dilation, output_padding)]
    y = np.zeros((n, groups, og, *full))
    xg = x.reshape(n, groups, c // groups, -1)                  # N, G, C/G, P
    wg = w.reshape(groups, c // groups, og, -1)                 # G, C/G, O/G, K
    contrib = np.einsum("ngcp,gcok->ngokp", xg, wg).reshape(n, groups, og, -1, *spatial)
    for ki, k_idx in enumerate(np.ndindex(*kernel)):            # one scatter per kernel tap
        box = tuple(slice(i * d, i * d + (s - 1) * st + 1, st)
                    for i, d, s, st in zip(k_idx, dilation, spatial, stride))
        y[(slice(None),) * 3 + box] += contrib[:, :, :, ki]
    crop = tuple(slice(p, f - p) for p, f in zip(padding, full))
    y = y[(slice(None),) * 3 + crop].reshape(n, groups * og, *[f - 2 * p for f, p in zip(full, padding)])
    if bias is not None:
        y = y + wide(bias).reshape(1, -1, *([1] * nd))
    return y


def _tconv_torch(x, w, bias, stride, padding, output_padding, dilation, groups):
    nd = x.dim() - 2
    if nd not in TORCH_CONV_TRANSPOSE:
        return torch.convolution(x, w, bias, stride, padding, dilation, True, output_padding, groups)
    return TORCH_CONV_TRANSPOSE[nd](x, w, bias, stride, padding, output_padding, groups, dilation)


conv_transpose = define_op(
    "conv_transpose", operands=("input", "weight", "bias?"),
    attrs={"stride": Attr.INTS, "padding": Attr.INTS, "output_padding": Attr.INTS, "dilation": Attr.INTS,
           "groups": Attr.INT},
    infer=_tconv_infer, reference=_tconv_reference, torch_impl=_tconv_torch,
    doc="The transpose (gradient) of `ember.conv` with weight [C, O/groups, *K]: each input element "
        "scatters weight * value into a stride-spaced output window; `padding` crops both sides, "
        "`output_padding` adds to the high side.")


def _ints(v, nd):
    v = [int(a) for a in v] if isinstance(v, (list, tuple)) else [int(v)]
    return v * nd if len(v) == 1 else v


def _operands(b, x, w, bias):
    dtype = b.result_spec().dtype
    return b.cast(x, dtype), b.cast(w, dtype), None if bias is None else b.cast(bias, dtype)


def emit_conv(b, x, w, bias, stride, padding, dilation, groups, transposed=False, output_padding=None):
    x, w, bias = _operands(b, x, w, bias)
    unbatched = x.rank == w.rank - 1
    if unbatched:
        x = b.emit("reshape", x, shape=(1, *x.shape))
    nd = x.rank - 2
    stride, dilation = _ints(stride, nd), _ints(dilation, nd)
    if isinstance(padding, str):
        if transposed:
            raise Unsupported(f"transposed convolution with padding='{padding}'")
        if padding == "valid":
            padding = [0] * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' needs stride 1")
            total = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
            low = [t // 2 for t in total]
            high = [t - lo for t, lo in zip(total, low)]
            if low != high:   # torch puts the odd element on the high side
                x = emit_pad(b, x, [0] * (nd + 2), [0, 0] + [h - lo for lo, h in zip(low, high)])
            padding = low
        else:
            raise Unsupported(f"convolution padding='{padding}'")
    padding = _ints(padding, nd)
    if transposed:
        y = b.emit(conv_transpose, x, w, bias, stride=stride, padding=padding,
                   output_padding=_ints(output_padding or 0, nd), dilation=dilation, groups=int(groups))
    else:
        y = b.emit(conv, x, w, bias, stride=stride, padding=padding, dilation=dilation, groups=int(groups))
    return b.emit("reshape", y, shape=y.shape[1:]) if unbatched else y


@lowers(aten.convolution.default)
def _convolution(b, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    return emit_conv(b, x, w, bias, stride, padding, dilation, groups, bool(transposed), output_padding)


@lowers(aten._convolution.default, aten._convolution.deprecated)
def _convolution_private(b, x, w, bias, stride, padding, dilation, transposed, output_padding, groups, *flags):
    return emit_conv(b, x, w, bias, stride, padding, dilation, groups, bool(transposed), output_padding)


@lowers(aten.conv1d, aten.conv2d, aten.conv3d)
def _conv_nd(b, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return emit_conv(b, x, w, bias, stride, padding, dilation, groups)


@lowers(aten.conv_transpose1d, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
def _conv_transpose_nd(b, x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return emit_conv(b, x, w, bias, stride, padding, dilation, groups, True, output_padding)


class _Stem(torch.nn.Module):
    """A ResNet-style stem and block: 7x7/2 conv, 3x3 convs, a 1x1/2 projection, no bias."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.c1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.proj = torch.nn.Conv2d(8, 16, 1, stride=2)
        self.grouped = torch.nn.Conv2d(16, 12, (3, 2), stride=(1, 2), groups=4)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = self.dw(self.c1(y)) + y
        return self.grouped(self.proj(y))


class _PatchEmbed(torch.nn.Module):
    """A ViT patch embedding: a conv with stride = kernel, then tokens."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 16, 4, stride=4)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _Conv1d3d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.causal = torch.nn.Conv1d(4, 6, 3, padding=2)
        self.same = torch.nn.Conv1d(6, 6, 4, padding="same", bias=False)
        self.vol = torch.nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 1), padding=(0, 1, 1))

    def forward(self, x, v):
        return self.same(self.causal(x)[..., :-2]), self.vol(v)


class _Deconv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.up1 = torch.nn.ConvTranspose1d(3, 2, 4, stride=3, dilation=2)

    def forward(self, x, s):
        return self.up(x), self.up1(s)


samples(
    Sample("resnet-stem-and-block", _Stem(), lambda: (torch.randn(2, 3, 20, 18),)),
    Sample("vit-patch-embed", _PatchEmbed(), lambda: (torch.randn(2, 3, 16, 16),)),
    Sample("conv1d-same-and-conv3d", _Conv1d3d(), lambda: (torch.randn(2, 4, 11), torch.randn(1, 2, 4, 7, 5))),
    Sample("conv-transpose", _Deconv(), lambda: (torch.randn(2, 6, 5, 4), torch.randn(1, 3, 6))),
)
