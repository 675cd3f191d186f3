"""Masked scatter: `x.masked_scatter(mask, source)` writes the elements of `source`, in order, into
the positions of `x` where `mask` is true (vision-language models splice image features into the
token embeddings this way).

No op of its own: it lowers onto existing ones, as the chip would run it. The running count of
true mask elements (an inclusive prefix sum, `ember.scan`) gives each position the index of the
source element it takes; `ember.index_select` gathers those, and `ember.ternary` keeps `x` where
the mask is false:

    idx = max(cumsum(mask.flatten()) - 1, 0)
    out = where(mask, source.flatten()[idx].reshape(x.shape), x)
"""
from __future__ import annotations

import torch

from ops.registry import Sample, Unsupported, lowers, samples

aten = torch.ops.aten


@lowers(aten.masked_scatter.default)
def _masked_scatter(b, x, mask, source):
    out = b.result_spec()
    shape, n = out.shape, out.numel
    if source.spec.numel == 0 or n == 0:
        raise Unsupported("masked_scatter with an empty input or source")
    mask = b.cast(mask, "i1")
    if mask.shape != shape:
        mask = b.emit("broadcast", mask, shape=shape)
    flat = mask if mask.shape == (n,) else b.emit("reshape", mask, shape=(n,))
    count = b.emit("scan", b.cast(flat, "i64"), kind="sum", dim=0)
    index = b.emit("binary", b.emit("binary", count, b.constant(1, "i64"), kind="sub"),
                   b.constant(0, "i64"), kind="max")
    src = b.cast(source, out.dtype)
    if src.shape != (src.spec.numel,):
        src = b.emit("reshape", src, shape=(src.spec.numel,))
    taken = b.emit("index_select", src, index, dim=0)
    if shape != (n,):
        taken = b.emit("reshape", taken, shape=shape)
    return b.emit("ternary", mask, taken, b.cast(x, out.dtype), kind="where")


def _splice_features(ids, embeds, features):
    """What LLaVA-style models do: image features replace the embeddings of image tokens."""
    mask = (ids.remainder(3) == 0).unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(mask, features) * 2.0


samples(
    Sample("masked-scatter", lambda x, y, src: x.masked_scatter(y > 0, src),
           lambda: (torch.randn(4, 6), torch.randn(4, 6), torch.randn(5, 6))),
    Sample("masked-scatter-broadcast-mask", lambda x, y, src: x.masked_scatter(y > 0.3, src) + 1.0,
           lambda: (torch.randn(2, 3, 5), torch.randn(3, 1), torch.randn(40))),
    Sample("masked-scatter-splice-features", _splice_features,
           lambda: (torch.randint(0, 9, (2, 7)), torch.randn(2, 7, 8), torch.randn(14, 8))),
)
