"""Shared test helpers: relative error, wrapping a function as a module, and laying out and
timing one kernel call."""
from __future__ import annotations

import numpy as np
import torch

from ops.kernel import KernelCall, Placement, kernel_for
from simulator import ProgramBuilder, simulate


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


def place(specs, space: str = "dram", gap: int = 256) -> list[Placement | None]:
    """Placements of `specs` ((shape, dtype) pairs; None for an absent operand) one after another
    in `space`, 256-byte aligned with `gap` bytes between them."""
    top, out = 0, []
    for spec in specs:
        if spec is None:
            out.append(None)
            continue
        out.append(Placement(space, top, tuple(spec[0]), spec[1]))
        top += -(-out[-1].nbytes // 256) * 256 + gap
    return out


def chosen_plan_cycles(call, chip) -> tuple:
    """(plan, predicted cycles, simulated cycles, timing only) of the plan the template chooses."""
    template = kernel_for(call.op)
    plan = template.choose(call, chip)
    b = ProgramBuilder(chip)
    template.emit(call, plan, chip, b)
    return plan, template.predict(call, plan, chip), simulate(b.build(), chip, timing_only=True).cycles


def assert_cost_model_tracks(call, chip, rel: float = 0.25, choice: float = 1.1) -> None:
    """Every plan's predicted cycles within `rel` of its simulated ones (timing only), and the
    plan the template chooses no more than `choice` times slower than the best one."""
    template = kernel_for(call.op)
    simulated = {}
    for plan in template.plans(call, chip):
        b = ProgramBuilder(chip)
        template.emit(call, plan, chip, b)
        simulated[plan] = simulate(b.build(), chip, timing_only=True).cycles
        predicted = template.predict(call, plan, chip)
        assert abs(predicted - simulated[plan]) <= rel * simulated[plan], (plan, predicted, simulated[plan])
    assert simulated
    assert simulated[template.choose(call, chip)] <= choice * min(simulated.values())


def scaled_linear(xq, wq, bias: bool, rng, dtype: str):
    """A quantized linear as the dtype pass makes it, over the quantized operands xq [M, K] and
    wq [N, K] (`dtype`: "int8" | "fp8"), with random row scales s[M], column scales d[N] and
    bias b[N]: (call, memory contents, (s, d, b or None))."""
    (M, K), N = xq.shape, wq.shape[0]
    d = rng.uniform(1e-3, 2e-3, N).astype(np.float32)
    s = rng.uniform(1e-3, 1.0, (M, 1)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    pl = place([((M, K), dtype), ((N, K), dtype), ((N,), "fp32") if bias else None,
                ((N,), "fp32"), ((M, 1), "fp32"), ((M, N), "fp32")], "sram")
    call = KernelCall("linear", tuple(pl[:5]), pl[5])
    init = {("sram", pl[0].addr): xq, ("sram", pl[1].addr): wq, ("sram", pl[3].addr): d, ("sram", pl[4].addr): s}
    if bias:
        init[("sram", pl[2].addr)] = b
    return call, init, (s, d, b if bias else None)


def sim_error_checked(cm, model, x, tmp_path) -> float:
    """Run `x` on the sim and on the cpu device (which must agree to fp32 rounding), save and load
    the Program (which must give the same numbers); returns the sim's relative error against eager."""
    import ember
    with torch.no_grad():
        ref = model(x)
    sim = cm.run(x, device="sim")
    torch.testing.assert_close(sim, cm.run(x, device="cpu"), rtol=1e-5, atol=1e-5)
    path = tmp_path / "model.ember"
    cm.save(str(path))
    torch.testing.assert_close(ember.CompiledModel.load(str(path)).run(x, device="sim"), sim, rtol=0, atol=0)
    return float((sim - ref).norm() / ref.norm())
