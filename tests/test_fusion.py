"""fuse-epilogues (compiler/passes/fusion.py) and the GEMM epilogue that runs the fused steps
(ops/kernels/matmul.py): what fuses, what must not, numbers on sim and cpu against eager, and
the time a fused GEMM saves."""
import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from ops.kernel import KernelCall, kernel_for
from simulator import ProgramBuilder, load_chip, simulate
from tests.helpers import chosen_plan_cycles, place

TOL = {"fp32": 1e-4, "bf16": 2e-2}
TINY = load_chip("tiny")
MTIA = load_chip("mtia2i")
NP = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16}


class Block(torch.nn.Module):
    """linear -> gelu, a gated unit silu(linear) * linear, linear + residual, matmul + add."""

    def __init__(self, d=32, h=64):
        super().__init__()
        self.up = torch.nn.Linear(d, h)
        self.gate = torch.nn.Linear(d, h, bias=False)
        self.val = torch.nn.Linear(d, h, bias=False)
        self.down = torch.nn.Linear(h, d)
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x, y, bias):
        a = torch.nn.functional.gelu(self.up(x))
        g = torch.nn.functional.silu(self.gate(x)) * self.val(x)
        r = self.down(a * g) + x
        z = self.proj(r)
        return torch.matmul(r, y.transpose(-1, -2)) + bias, z.tanh()


def _inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 12, 32, generator=gen), torch.randn(2, 20, 32, generator=gen),
            torch.randn(2, 12, 20, generator=gen))


def _compile(model, inputs, chip, dtype, fuse, monkeypatch):
    monkeypatch.setenv("EMBER_FUSE", "1" if fuse else "0")
    return ember.compile(model, inputs, chip=chip, dtype=dtype, to="program")


def _kernels(cm):
    return [s for s in cm.program.steps if s["kind"] == "kernel"]


def _epilogues(cm):
    return [(s["op"], [tuple(e[:2]) for e in s["attrs"]["epilogue"]])
            for s in _kernels(cm) if s["attrs"].get("epilogue")]


def _close(got, want, tol):
    for g, w in zip(got, want):
        g, w = g.double(), w.double()
        err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-30))
        assert err <= tol, f"relative error {err}"


@pytest.mark.parametrize("chip,dtype", [("tiny", "fp32"), ("tiny", "bf16"), ("mtia2i", "bf16")])
def test_fused_block_matches_eager_and_is_faster(chip, dtype, monkeypatch):
    torch.manual_seed(0)
    model = Block().eval()
    fused = _compile(model, _inputs(0), chip, dtype, True, monkeypatch)
    plain = _compile(model, _inputs(0), chip, dtype, False, monkeypatch)
    assert not _epilogues(plain)
    steps = dict((op, e) for op, e in _epilogues(fused) if op == "matmul")
    fused_steps = [e for _, e in _epilogues(fused)]
    assert [("unary", "gelu")] in fused_steps or [("unary", "gelu"), ("binary", "mul")] in fused_steps
    assert any(("unary", "silu") in e for e in fused_steps)
    assert any(("binary", "mul") in e for e in fused_steps)
    assert [("binary", "add")] in fused_steps                     # down(.) + x
    assert steps["matmul"] == [("binary", "add")]
    # the tanh after proj is fused too; proj's result is also read by nothing else
    assert any(("unary", "tanh") in e for e in fused_steps)
    assert len(_kernels(fused)) <= len(_kernels(plain)) - 5

    x = _inputs(1)
    with torch.no_grad():
        want = model(*x)
    for cm in (fused, plain):
        _close(cm.run(*x, device="cpu"), want, TOL[dtype])
        _close(cm.run(*x, device="sim"), want, TOL[dtype])
    fused.run(*x, device="sim")
    plain.run(*x, device="sim")
    assert fused.last_run.cycles < plain.last_run.cycles


class _Shared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 32)

    def forward(self, x):
        h = self.a(x)               # two readers: stays a GEMM of its own
        u = self.b(x)               # a model output: stays stored
        return torch.relu(h) + h.sigmoid(), u, torch.nn.functional.gelu(u)


def test_no_fusion_into_values_with_other_readers_or_model_outputs(monkeypatch):
    x = (torch.randn(8, 32),)
    model = _Shared().eval()
    cm = _compile(model, x, "tiny", "fp32", True, monkeypatch)
    assert not _epilogues(cm)
    with torch.no_grad():
        want = model(*x)
    _close(cm.run(*x, device="sim"), want, TOL["fp32"])


class _Int8(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(64, 96)
        self.b = torch.nn.Linear(96, 64, bias=False)

    def forward(self, x):
        return self.b(torch.nn.functional.silu(self.a(x))) + x


def test_int8_epilogue_runs_after_dequantization(monkeypatch):
    torch.manual_seed(0)
    model = _Int8().eval()
    x = (torch.randn(16, 64),)
    fused = _compile(model, x, "tiny", "int8", True, monkeypatch)
    plain = _compile(model, x, "tiny", "int8", False, monkeypatch)
    assert [e for _, e in _epilogues(fused)] == [[("unary", "silu")], [("binary", "add")]]
    got, want = fused.run(*x, device="sim")[0], plain.run(*x, device="sim")[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_program_ir_and_saved_program_of_a_fused_model(monkeypatch, tmp_path):
    model = Block().eval()
    x = _inputs(0)
    cm = _compile(model, x, "tiny", "fp32", True, monkeypatch)
    assert "ember.epilogue" in cm.ir("tiled")
    assert "kernel_" in cm.ir("program")
    cm.save(tmp_path / "block.ember")
    loaded = ember.load(tmp_path / "block.ember")
    x = _inputs(2)
    with torch.no_grad():
        want = model(*x)
    _close(loaded.run(*x, device="cpu"), want, TOL["fp32"])


# --- the kernel alone -----------------------------------------------------------------------

def _call(op, M, K, N, dtype, epilogue, res_dtype, batch=(), bias=False):
    shapes = [(*batch, M, K), (N, K) if op == "linear" else (*batch, K, N)]
    shapes += [(N,) if bias else None, None] + [(*batch, M, N)] * sum(e[0] == "binary" for e in epilogue)
    *pls, result = place([s and (s, res_dtype if i >= 4 else dtype) for i, s in enumerate(shapes)]
                         + [((*batch, M, N), dtype)])
    return KernelCall(op, tuple(pls), result, {"epilogue": epilogue})


def _reference(call, init):
    xs = [None if p is None else torch.from_numpy(init[(p.space, p.addr)].astype(np.float64)) for p in call.inputs]
    y = torch.matmul(xs[0], xs[1]) if call.op == "matmul" else torch.nn.functional.linear(*xs[:3])
    fns = {"gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu, "neg": torch.neg}
    ops = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}
    for e in call.attrs["epilogue"]:
        if e[0] == "unary":
            y = fns[e[1]](y)
        else:
            r = xs[e[2]]
            y = ops[e[1]](y, r) if e[3] == 0 else ops[e[1]](r, y)
    return y.numpy()


@pytest.mark.parametrize("op,M,K,N,dtype,res_dtype,batch,bias,epilogue", [
    ("linear", 33, 40, 50, "fp32", "fp32", (), True, (("unary", "gelu", 0.0, 0.0), ("binary", "add", 4, 0))),
    ("linear", 20, 64, 70, "bf16", "bf16", (), True, (("unary", "silu", 0.0, 0.0), ("binary", "mul", 4, 1))),
    ("linear", 17, 24, 40, "bf16", "fp32", (), False, (("binary", "sub", 4, 1), ("unary", "neg", 0.0, 0.0))),
    ("matmul", 9, 17, 13, "fp32", "fp32", (3,), False, (("binary", "add", 4, 0), ("binary", "mul", 5, 0))),
])
def test_kernel_epilogue_matches_torch(op, M, K, N, dtype, res_dtype, batch, bias, epilogue):
    call = _call(op, M, K, N, dtype, epilogue, res_dtype, batch, bias)
    tmpl = kernel_for(op)
    plan = tmpl.choose(call, TINY)
    b = ProgramBuilder(TINY)
    tmpl.emit(call, plan, TINY, b)
    rng = np.random.default_rng(0)
    init = {(p.space, p.addr): rng.standard_normal(p.shape).astype(NP[p.dtype]) for p in call.inputs if p}
    res = simulate(b.build(), TINY, memory_init=init)
    o = call.output
    y = res.read(o.space, o.addr, o.shape, NP[o.dtype]).astype(np.float64)
    ref = _reference(call, init)
    assert np.abs(y - ref).max() / np.abs(ref).max() <= TOL[dtype]


@pytest.mark.parametrize("chip,M,K,N,epilogue", [
    (MTIA, 512, 768, 3072, (("unary", "gelu", 0.0, 0.0),)),
    (MTIA, 512, 768, 3072, (("binary", "add", 4, 0),)),
    (TINY, 64, 256, 512, (("unary", "silu", 0.0, 0.0), ("binary", "mul", 4, 0))),
])
def test_fused_cost_model_within_15_percent(chip, M, K, N, epilogue):
    call = _call("linear", M, K, N, "bf16", epilogue, "fp32", bias=True)
    tmpl = kernel_for("linear")
    plan, pred, sim = chosen_plan_cycles(call, chip)
    assert abs(pred - sim) / sim <= 0.15, f"{plan}: predicted {pred}, simulated {sim}"
    plain = KernelCall("linear", call.inputs[:3], call.output)
    assert tmpl.flops(call) > tmpl.flops(plain)
    assert sum(tmpl.bytes_moved(call).values()) > sum(tmpl.bytes_moved(plain).values()) or \
        all(e[0] == "unary" for e in epilogue)


def test_compile_takes_fuse_and_keys_the_cache_by_it():
    from tests.helpers import Mlp
    model, x = Mlp().eval(), torch.randn(8, 32)
    fused = ember.compile(model, (x,), chip="tiny", dtype="fp32", fuse=True)
    plain = ember.compile(model, (x,), chip="tiny", dtype="fp32", fuse=False)
    kernels = [sum(s["kind"] == "kernel" for s in cm.program.steps) for cm in (fused, plain)]
    assert kernels[0] < kernels[1] and fused.options.key() != plain.options.key()
