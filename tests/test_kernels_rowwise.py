"""Row-wise kernels (ops/kernels/rowwise.py) end to end: softmax, log-softmax, layer and RMS
norm, inference batch norm and last-dim reductions compiled for the tiny chip, run on the
simulator against torch, fp32 and bf16, on fresh random inputs."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import ember
from ops.kernel import KernelCall, Placement, kernel_for
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import as_module, assert_cost_model_tracks, place, rel_err

TOL = {"fp32": 1e-4, "bf16": 2e-2}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LayerNorm(torch.nn.Module):
    def __init__(self, c: int, affine: bool = True):
        super().__init__()
        self.ln = torch.nn.LayerNorm(c, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                self.ln.weight.uniform_(0.5, 1.5)
                self.ln.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.ln(x)


class RMSNorm(torch.nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.rms = torch.nn.RMSNorm(c, eps=1e-6)
        with torch.no_grad():
            self.rms.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.rms(x)


class BatchNorm(torch.nn.Module):
    def __init__(self, c: int, affine: bool = True, dims: int = 2):
        super().__init__()
        self.bn = (torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm1d)(c, affine=affine)
        with torch.no_grad():
            if affine:
                self.bn.weight.uniform_(0.5, 1.5)
                self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.bn(x)


def _masked_safe_softmax(x):
    # every other row entirely -inf (a fully masked attention row): zeros there, as torch gives
    masked = x.masked_fill(torch.arange(x.shape[-2])[:, None] % 2 == 1, float("-inf"))
    return torch.ops.aten._safe_softmax(masked, -1)


# (name, model, input shapes, the ember op that must run as a kernel)
CASES = [
    ("softmax", lambda: as_module(lambda x: torch.softmax(x * 3.0, dim=-1)), [(37, 100)], "softmax"),
    ("log-softmax", lambda: as_module(lambda x: torch.log_softmax(x * 3.0, dim=-1)), [(6, 9, 70)], "softmax"),
    ("softmax-1d", lambda: as_module(lambda x: torch.softmax(x, dim=0)), [(50,)], "softmax"),
    ("softmax-masked-rows", lambda: as_module(_masked_safe_softmax), [(2, 6, 24)], "softmax"),
    ("layer-norm", lambda: LayerNorm(96), [(5, 9, 96)], "norm"),
    ("layer-norm-plain", lambda: LayerNorm(40, affine=False), [(3, 40)], "norm"),
    ("layer-norm-weight-only", lambda: as_module(lambda x, w: F.layer_norm(x, (48,), w)), [(20, 48), (48,)], "norm"),
    ("rms-norm", lambda: RMSNorm(64), [(50, 64)], "norm"),
    ("layer-norm-two-dims", lambda: as_module(lambda x, w, b: F.layer_norm(x, (4, 12), w, b)),
     [(3, 4, 12), (4, 12), (4, 12)], "norm"),
    ("rms-norm-functional", lambda: as_module(lambda x: F.rms_norm(x, (33,))), [(2, 7, 33)], "norm"),
    ("batch-norm-2d", lambda: BatchNorm(6), [(2, 6, 5, 7)], "batch_norm"),
    ("batch-norm-1d-plain", lambda: BatchNorm(5, affine=False, dims=1), [(3, 5, 12)], "batch_norm"),
    ("batch-norm-1d-features", lambda: BatchNorm(24, dims=1), [(19, 24)], "batch_norm"),
    ("sum", lambda: as_module(lambda x: x.sum(-1)), [(30, 70)], "reduce"),
    ("mean-keepdim", lambda: as_module(lambda x: x.mean(-1, keepdim=True)), [(4, 6, 50)], "reduce"),
    ("max", lambda: as_module(lambda x: x.amax(-1)), [(30, 17)], "reduce"),
    ("min", lambda: as_module(lambda x: x.amin(-1)), [(9, 40)], "reduce"),
    ("sum-trailing-dims", lambda: as_module(lambda x: x.sum((-2, -1))), [(5, 6, 20)], "reduce"),
    ("mean-all", lambda: as_module(lambda x: x.mean()), [(6, 30)], "reduce"),
]


def _randn(shape, dtype, scale=1.0):
    x = torch.randn(*shape) * scale + 0.25
    return x.to(dtype)


#: bf16 runs for one case of each kernel variant (keeps the file under a minute)
BF16_CASES = {"softmax", "log-softmax", "softmax-masked-rows", "layer-norm", "rms-norm", "batch-norm-1d-features",
              "mean-keepdim", "max"}
RUNS = [(*c, "fp32") for c in CASES] + [(*c, "bf16") for c in CASES if c[0] in BF16_CASES]


@pytest.mark.parametrize("name,make,shapes,op,dtype", RUNS, ids=[f"{c[0]}-{c[4]}" for c in RUNS])
def test_kernel_matches_torch(name, make, shapes, op, dtype):
    tdt = TORCH_DTYPE[dtype]
    model = make().to(tdt).eval()
    cm = ember.compile(model, tuple(_randn(s, tdt) for s in shapes), chip="tiny", dtype=dtype, to="program")
    inputs = tuple(_randn(s, tdt, 2.0) for s in shapes)          # fresh inputs, not the example ones
    out = cm.run(*inputs, device="sim")
    assert rel_err(out, model(*inputs)) <= TOL[dtype]
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == op]
    assert kernels, f"ember.{op} did not run as a kernel: {[(s.kind, s.op) for s in cm.last_run.steps]}"
    assert not [s for s in cm.last_run.steps if s.kind == "host" and s.op == op]
    for s in kernels:
        assert s.cycles >= s.roofline_cycles
        assert s.predicted_cycles > 0


@pytest.mark.parametrize("name,fn,shape", [
    ("softmax-middle-dim", lambda x: torch.softmax(x, dim=1), (2, 5, 9)),
    ("var", lambda x: x.var(-1), (8, 12)),
    # leading or middle dims run on the vector core (tests/test_kernel_vector_reduce.py); dims
    # that are not contiguous stay on the host
    ("sum-split-dims", lambda x: x.sum((0, 2)), (4, 5, 6)),
])
def test_refused_instances_stay_on_host(name, fn, shape):
    model = as_module(fn)
    cm = ember.compile(model, (torch.randn(*shape),), chip="tiny", dtype="fp32", to="program")
    x = torch.randn(*shape)
    out = cm.run(x, device="sim")
    assert rel_err(out, model(x)) <= 1e-4
    assert not [s for s in cm.last_run.steps if s.kind == "kernel" and s.op in ("softmax", "norm", "reduce")]


def _call(op, shape, dtype, attrs, params=()):
    *inputs, out = place([s and (s, dtype) for s in (shape, *params, shape)], "sram", gap=0)   # None: absent
    return KernelCall(op, tuple(inputs), out, attrs)


@pytest.mark.parametrize("op,shape,attrs,params", [
    ("softmax", (256, 512), {"dim": 1, "log": False}, ()),
    ("norm", (256, 384), {"kind": "layer", "axes": 1, "eps": 1e-5}, ((384,), (384,))),
])
def test_cost_model_tracks_the_simulator(op, shape, attrs, params):
    """Every plan's predicted cycles within 25% of the simulated ones on a mid-size shape, and
    the plan chosen no more than 10% slower than the best one."""
    assert_cost_model_tracks(_call(op, shape, "fp32", attrs, params), load_chip("tiny"))


LONG_ROWS = [
    ("softmax", lambda x: torch.softmax(x * 3.0, dim=-1), [(3, 20000)], "softmax", "fp32"),
    ("log-softmax", lambda x: torch.log_softmax(x, dim=-1), [(2, 17000)], "softmax", "bf16"),
    ("layer-norm", lambda x, w, b: F.layer_norm(x, (10000,), w, b), [(3, 10000), (10000,), (10000,)], "norm", "fp32"),
    ("rms-norm", lambda x, w: F.rms_norm(x, (9000,), w), [(2, 9000), (9000,)], "norm", "bf16"),
    ("mean", lambda x: x.mean(-1), [(4, 30000)], "reduce", "fp32"),
]


@pytest.mark.parametrize("name,fn,shapes,op,dtype", LONG_ROWS, ids=[c[0] for c in LONG_ROWS])
def test_rows_longer_than_local_memory_run_in_chunks(name, fn, shapes, op, dtype):
    """Rows that do not fit the tiny chip's 64 KiB local memory stream through it in chunks,
    in two passes; the cost model stays within 25% of the simulated cycles."""
    tdt = TORCH_DTYPE[dtype]
    model = as_module(fn)
    cm = ember.compile(model, tuple(_randn(s, tdt) for s in shapes), chip="tiny", dtype=dtype, to="program")
    inputs = tuple(_randn(s, tdt, 2.0) for s in shapes)
    assert rel_err(cm.run(*inputs, device="sim"), model(*inputs)) <= TOL[dtype]
    kernels = [s for s in cm.last_run.steps if s.kind == "kernel" and s.op == op]
    assert kernels and "ChunkPlan" in repr(next(s for s in cm.program.steps if s.get("op") == op)["plan"])
    for s in kernels:
        assert s.cycles >= s.roofline_cycles
        assert abs(s.predicted_cycles - s.cycles) <= 0.25 * s.cycles


def test_batch_norm_planes_too_large_for_local_memory_stay_on_host():
    model = BatchNorm(2).eval()
    cm = ember.compile(model, (torch.randn(1, 2, 128, 128),), chip="tiny", dtype="fp32", to="program")
    x = torch.randn(1, 2, 128, 128)
    assert rel_err(cm.run(x, device="sim"), model(x)) <= 1e-4
    assert [s for s in cm.last_run.steps if s.kind == "host" and s.op == "batch_norm"]


@pytest.mark.parametrize("op,shape,attrs,params", [
    ("softmax", (96, 40), {"dim": 1, "log": True}, ()),
    ("norm", (90, 24), {"kind": "rms", "axes": 1, "eps": 1e-6}, ((24,), None)),
    ("reduce", (100, 30), {"kind": "mean", "dims": (1,), "keepdim": False, "correction": 0.0}, ()),
])
def test_compact_loops_match_unrolled_tiles(op, shape, attrs, params):
    """Full tiles emitted as a compact loop compute and time exactly as the unrolled tiles."""
    import numpy as np
    chip = load_chip("tiny")
    call = _call(op, shape, "fp32", attrs, params)
    if op == "reduce":
        call = KernelCall(op, call.inputs, Placement("sram", call.output.addr, shape[:-1], "fp32"), attrs)
    looped = kernel_for(op)
    unrolled = type(looped)()
    unrolled.loops = False
    plan = type(looped.choose(call, chip))(pes=4, tile_rows=2)
    rng = np.random.default_rng(0)
    init = {("sram", p.addr): rng.standard_normal(p.shape).astype(np.float32) + 1.0
            for p in call.inputs if p is not None}
    results = []
    for template in (looped, unrolled):
        b = ProgramBuilder(chip)
        template.emit(call, plan, chip, b)
        prog = b.build()
        res = simulate(prog, chip, memory_init=init)
        results.append((len(prog), prog.num_commands, res.cycles,
                        res.read("sram", call.output.addr, call.output.shape, np.float32)))
    (n_loop, cmds_loop, cyc_loop, out_loop), (n_flat, cmds_flat, cyc_flat, out_flat) = results
    assert n_loop < n_flat and cmds_loop == cmds_flat and cyc_loop == cyc_flat
    assert np.array_equal(out_loop, out_flat)
