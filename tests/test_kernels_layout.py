"""Data-movement kernels (ops/kernels/layout.py) end to end on the tiny chip: transpose, slice,
concat, constant pad, broadcast and float casts run as DMA/MLU/SIMD kernels, match torch
(exactly in fp32: they only move bytes), and their cost model tracks the simulator."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import ember
from ops.kernels.layout import Box, dma_groups, row_major_strides, split_over_pes
from tests.helpers import as_module, rel_err

# name -> (function, example inputs, ember op that must run as a kernel)
CASES = {
    "transpose-last-two": (lambda x: x.transpose(-1, -2), lambda: (torch.randn(3, 40, 72),), "transpose"),
    "matrix-t": (lambda x: x.t(), lambda: (torch.randn(33, 70),), "transpose"),
    "heads-split": (lambda x: x.view(2, 16, 4, 8).transpose(1, 2), lambda: (torch.randn(2, 16, 32),), "transpose"),
    "keys-permute": (lambda x: x.view(2, 16, 4, 8).permute(0, 2, 3, 1), lambda: (torch.randn(2, 16, 32),),
                     "transpose"),
    "slice-cols": (lambda x: x[:, 2:10], lambda: (torch.randn(12, 40),), "slice"),
    "slice-stepped": (lambda x: x[1:, ::2, 3:-1], lambda: (torch.randn(4, 10, 24),), "slice"),
    "slice-last-step": (lambda x: x[:, 1::3], lambda: (torch.randn(6, 20),), "slice"),
    "cat-mid": (lambda x, y: torch.cat([x, y], dim=1), lambda: (torch.randn(4, 6, 8), torch.randn(4, 3, 8)), "concat"),
    "cat-last": (lambda x, y: torch.cat([x, y], dim=-1), lambda: (torch.randn(4, 6, 8), torch.randn(4, 6, 5)),
                 "concat"),
    "pad-value": (lambda x: F.pad(x, (1, 2, 3, 0), value=1.5), lambda: (torch.randn(2, 10, 12),), "pad"),
    "pad-crop": (lambda x: F.pad(x, (-1, 2, 0, 1)), lambda: (torch.randn(2, 10, 12),), "pad"),
    "expand-mid": (lambda x: x.expand(4, 8, 16), lambda: (torch.randn(4, 1, 16),), "broadcast"),
    "expand-last": (lambda x: x.expand(4, 8, 16), lambda: (torch.randn(4, 8, 1),), "broadcast"),
    "expand-last-batched": (lambda x: x.expand(4, 3, 8, 6), lambda: (torch.randn(4, 1, 8, 1),), "broadcast"),
    "expand-two-last": (lambda x: x.expand(4, 3, 5), lambda: (torch.randn(4, 1, 1),), "broadcast"),
    "expand-lead": (lambda x: x.expand(3, 5, 12), lambda: (torch.randn(12),), "broadcast"),
    "to-bf16": (lambda x: x.to(torch.bfloat16), lambda: (torch.randn(16, 100),), "cast"),
    "bf16-to-f32": (lambda x: x.to(torch.float32) * 2, lambda: (torch.randn(8, 40).bfloat16(),), "cast"),
}


def _compile(fn, make, dtype):
    model = as_module(fn)
    return model, ember.compile(model, make(), chip="tiny", dtype=dtype, to="program")


#: one case per op (and the MLU paths) in bf16 too
BF16 = ("keys-permute", "heads-split", "cat-mid", "pad-value", "expand-last")


@pytest.mark.parametrize("name,dtype,tol", [(n, "fp32", 0.0) for n in CASES] + [(n, "bf16", 2e-2) for n in BF16])
def test_layout_kernel_matches_torch(name, dtype, tol):
    fn, make, op = CASES[name]
    model, cm = _compile(fn, make, dtype)
    args = make()
    out = cm.run(*args, device="sim")
    assert rel_err(out, model(*args)) <= tol
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == op]
    assert kernels, f"ember.{op} did not run as a kernel"
    for s in kernels:
        assert s.cycles >= s.roofline_cycles, (s.cycles, s.roofline_cycles)


def test_cast_to_bf16_rounds_when_computing_in_fp32():
    # the chip holds floats in fp32 here: the cast must still round as torch does, and the
    # rounded values flow into the next op
    fn = lambda x: x.to(torch.bfloat16).to(torch.float32) * 3.0
    model, cm = _compile(fn, lambda: (torch.randn(16, 64),), "fp32")
    x = torch.randn(16, 64)
    out = cm.run(x, device="sim")
    assert torch.equal(out[0] if isinstance(out, (list, tuple)) else out, model(x))
    assert any(s.kind == "kernel" and s.op == "cast" for s in cm.last_run.steps)


def test_pad_value_tile_ignores_inf_and_nan_inputs():
    # the pad-value tile is built from input bytes read as int8, so any input works
    fn = lambda x: F.pad(x, (2, 1, 1, 1), value=-0.25)
    model, cm = _compile(fn, lambda: (torch.randn(5, 7),), "fp32")
    x = torch.randn(5, 7)
    x[0, 0], x[1, 2], x[2, 3] = float("inf"), float("nan"), float("-inf")
    out = cm.run(x, device="sim")
    out = out[0] if isinstance(out, (list, tuple)) else out
    torch.testing.assert_close(out, model(x), equal_nan=True, rtol=0, atol=0)


class Attention(torch.nn.Module):
    """Head split and merge, a key cache append, padding and a broadcast, as attention does."""

    def forward(self, x, cache):
        b, s, _ = x.shape
        q = x.view(b, s, 4, 8).transpose(1, 2)                  # [B, H, S, D]
        k = torch.cat([cache, q], dim=2)                        # append to the cache
        kt = k.transpose(-1, -2)                                # [B, H, D, S+C]
        mask = F.pad(torch.ones_like(q[:, :1, :, :1]), (0, 3)).expand(b, 4, s, 4)
        merged = q.transpose(1, 2).reshape(b, s, 32)
        return kt * 2.0, merged + 1.0, mask * q[..., :4]


def test_attention_layout_ops_all_run_on_the_chip():
    model = Attention().eval()
    make = lambda: (torch.randn(2, 6, 32), torch.randn(2, 4, 3, 8))
    cm = ember.compile(model, make(), chip="tiny", dtype="fp32", to="program")
    args = make()
    out = cm.run(*args, device="sim")
    assert rel_err(out, model(*args)) <= 1e-6
    layout = {"transpose", "concat", "slice", "pad", "broadcast"}
    assert layout <= {s.op for s in cm.last_run.steps if s.kind == "kernel"}
    assert not [s.op for s in cm.last_run.steps if s.kind == "host" and s.op in layout]


def test_reference_model_layout_ops_run_as_kernels():
    # the decode step of the multimodal reference model: head split/merge, the rotary table's
    # concat and broadcasts all run on the chip, and the model still matches torch
    model, example = ember.load_model("models:multimodal-tiny-decode")
    cm = ember.compile(model, example, chip="tiny", dtype="fp32", to="program", allow_unsupported=True)
    _, fresh = ember.load_model("models:multimodal-tiny-decode")
    with torch.no_grad():      # (on clones: the step updates its cache inputs in place)
        ref = model(*(x.clone() for x in fresh))
    assert rel_err(cm.run(*fresh, device="sim"), ref) <= 1e-5
    layout = {"transpose", "concat", "broadcast"}
    steps = cm.last_run.steps
    assert layout <= {s.op for s in steps if s.kind == "kernel"}
    assert not [s.op for s in steps if s.kind == "host" and s.op in layout]


# mid-size shapes on the tiny chip (timing only): the cost model within 20% of the simulator
MID = {
    "transpose": (lambda x: x.transpose(-1, -2), (4, 256, 384)),
    "heads-split": (lambda x: x.view(4, 128, 8, 64).transpose(1, 2), (4, 128, 512)),
    "keys-permute": (lambda x: x.view(4, 128, 8, 64).permute(0, 2, 3, 1), (4, 128, 512)),
    "slice": (lambda x: x[:, 2:300], (256, 512)),
    "pad": (lambda x: F.pad(x, (2, 2, 1, 1), value=1.5), (4, 128, 256)),
    "expand": (lambda x: x.expand(16, 128, 256), (16, 1, 256)),
    "expand-last": (lambda x: x.expand(8, 256, 128), (8, 256, 1)),
    "to-bf16": (lambda x: x.to(torch.bfloat16), (256, 512)),
}


def test_cost_model_tracks_the_simulator():
    # one model with every case as an output (one compile); each kernel is checked on its own
    fns, shapes = zip(*MID.values())
    model = as_module(lambda *xs: tuple(f(x) for f, x in zip(fns, xs)))
    make = lambda: tuple(torch.randn(s) for s in shapes)
    cm = ember.compile(model, make(), chip="tiny", dtype="fp32", to="program")
    cm.run(*make(), device="sim", timing_only=True)
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel"]
    assert len(kernels) == len(MID)
    off = {name: (s.predicted_cycles - s.cycles) / s.cycles for name, s in zip(MID, kernels)}
    assert all(abs(e) <= 0.2 for e in off.values()), off


def test_dma_groups_are_compact_and_cover_the_box():
    # [B, S, H, D] -> [B, H, S, D]: one 2D DMA (S rows of D) per (b, h), looped over h
    B, S, H, D, item = 2, 64, 8, 32, 4
    src = (S * H * D * item, H * D * item, D * item, item)
    perm = (0, 2, 1, 3)
    out_shape = (B, H, S, D)
    dst = (H * S * D * item, S * D * item, D * item, item)
    box = Box("sram", 0, "dram", 0, out_shape, tuple(src[p] for p in perm), dst, item)
    groups = dma_groups(box, min_dmas=4)
    assert len(groups) == B and all(g.count == H and g.rows == S and g.row_bytes == D * item for g in groups)
    share = split_over_pes(groups, 4)
    assert sum(g.count * g.dma_bytes for p in share for g in p) == box.nbytes
    assert max(sum(g.count * g.dma_bytes for g in p) for p in share) == box.nbytes // 4


def _run_groups(share, src: bytearray, dst: bytearray) -> None:
    for groups in share:
        for g in groups:
            for i in range(g.count):
                for r in range(g.rows):
                    s = g.src_addr + i * g.src_step + r * g.src_stride
                    d = g.dst_addr + i * g.dst_step + r * g.dst_stride
                    dst[d:d + g.row_bytes] = src[s:s + g.row_bytes]


@pytest.mark.parametrize("seed", range(12))
def test_dma_groups_copy_random_boxes(seed):
    # random shapes, permutations, slices and broadcasts: the DMAs, split over PEs, copy
    # exactly what numpy's strided view holds
    import numpy as np
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(1, 5))
    shape = tuple(int(n) for n in rng.integers(1, 7, rank))
    item = 4
    x = rng.standard_normal(shape).astype(np.float32)
    kind = ["permute", "slice", "broadcast", "contiguous"][seed % 4]
    if kind == "permute":
        perm = tuple(int(p) for p in rng.permutation(rank))
        view = x.transpose(perm)
        strides = tuple(x.strides[p] for p in perm)
    elif kind == "slice":
        starts = [int(rng.integers(0, n)) for n in shape]
        steps = [int(rng.integers(1, 3)) for _ in shape]
        view = x[tuple(slice(s, None, k) for s, k in zip(starts, steps))]
        strides = view.strides
    elif kind == "broadcast":
        x = np.ascontiguousarray(x[(slice(None),) * (rank - 1) + (slice(0, 1),)] if seed % 8 == 2 else x[:1])
        view = np.broadcast_to(x, (3,) + shape)
        strides = view.strides
    else:
        x = rng.standard_normal(5000).astype(np.float32)
        view, strides = x, x.strides
    offset = view.__array_interface__["data"][0] - x.__array_interface__["data"][0]
    out_strides = row_major_strides(view.shape, item)
    box = Box("sram", offset, "dram", 0, view.shape, tuple(strides), out_strides, item)
    pes = int(rng.integers(1, 6))
    share = split_over_pes(dma_groups(box, pes), pes)
    dst = bytearray(view.size * item)
    _run_groups(share, bytearray(x.tobytes()), dst)
    assert np.array_equal(np.frombuffer(bytes(dst), np.float32).reshape(view.shape), view)
    assert sum(g.count * g.dma_bytes for p in share for g in p) == box.nbytes
