"""The grouped matmul on the chip (a mixture-of-experts layer's experts): one GEMM per expert that
got rows, made when the kernel runs for the group sizes the chip holds, compared with PyTorch on
fresh random rows and routings; what a timing-only run assumes instead (runtime/routing.py)."""
from __future__ import annotations

import pytest
import torch

import ember
from ops.grouped_matmul import _Experts
from runtime.routing import group_sizes
from runtime.sized_kernels import SizeError

pytest.importorskip("transformers")

EXPERTS, ROWS = 4, 48
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _grouped_steps(cm):
    return [s for s in cm.last_run.steps if s.op == "grouped_matmul"]


def _compiled(transposed: bool, dtype: torch.dtype):
    torch.manual_seed(0)
    model = _Experts(transposed, dtype, experts=EXPERTS).eval()
    example = (torch.randn(ROWS, 16), torch.randint(0, EXPERTS, (ROWS,)))
    return model, ember.compile(model, example, chip="tiny", dtype="fp32" if dtype == torch.float32 else "bf16")


@pytest.mark.parametrize("transposed, dtype", [(True, torch.float32), (False, torch.bfloat16)],
                         ids=["fallback-fp32-layer-layout", "torch-grouped-mm-bf16"])
def test_the_experts_match_torch_on_fresh_routings(transposed, dtype):
    model, cm = _compiled(transposed, dtype)
    steps = [s for s in cm.program.steps if s["op"] == "grouped_matmul"]
    assert len(steps) == 1 and steps[0]["kind"] == "kernel" and steps[0]["sized_by"] == 2
    assert steps[0]["attrs"]["transposed"] == transposed
    for draw in range(2):
        torch.manual_seed(10 + draw)
        x = torch.randn(ROWS, 16)
        ids = torch.tensor([0, 1, 3])[torch.randint(0, 3, (ROWS,))]     # expert 2 gets no rows
        with torch.no_grad():
            ref = model(x, ids).float()
        out = cm.run(x, ids, device="sim").float()
        assert (out - ref).abs().max() <= TOLERANCE[dtype] * ref.abs().max()
        assert not [s for s in cm.last_run.steps if s.kind == "host"]
        assert cm.last_run.assumed == []          # the sizes were read, not assumed


def test_the_group_sizes_are_read_when_the_kernel_runs():
    model, cm = _compiled(True, torch.float32)
    x = torch.randn(ROWS, 16)
    cycles = {}
    for name, ids in (("one expert", torch.full((ROWS,), 2)), ("all experts", torch.arange(ROWS) % EXPERTS)):
        out = cm.run(x, ids, device="sim")
        assert torch.allclose(out, model(x, ids), atol=1e-5, rtol=1e-5), name
        (step,) = _grouped_steps(cm)
        cycles[name] = step.cycles
    # one expert's weights read once, against four experts' weights and four GEMMs
    assert cycles["one expert"] < cycles["all experts"], cycles


def test_a_timing_only_run_says_the_routing_it_assumed():
    _, cm = _compiled(True, torch.float32)
    meta = (torch.empty(ROWS, 16, device="meta"), torch.empty(ROWS, dtype=torch.int64, device="meta"))
    cycles = {}
    for routing in (None, "skewed", [1, 0, 0, 0]):
        cm.run(*meta, device="sim", timing_only=True, routing=routing)
        (step,) = _grouped_steps(cm)
        assert step.roofline_cycles <= step.cycles
        (assumed,) = cm.last_run.assumed
        assert "ember.grouped_matmul at" in assumed and "routing" in assumed
        assert ("uniform routing" in assumed) == (routing is None)
        cycles[str(routing)] = step.cycles
    assert cycles[str([1, 0, 0, 0])] < cycles["None"], cycles
    with pytest.raises(ValueError, match="uniform, skewed"):
        cm.run(*meta, device="sim", timing_only=True, routing="zipf")
    with pytest.raises(ValueError, match="3 expert weights for a layer of 4 experts"):
        cm.run(*meta, device="sim", timing_only=True, routing=[1, 1, 1])


class _GivenEnds(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 16, 8))

    def forward(self, x, ends):
        return torch.ops.transformers.grouped_mm_fallback(x, self.w, ends)


@pytest.mark.parametrize("ends, match", [([4, 2, 10], "not non-decreasing"), ([2, 4, 7], "end at row 7 of 10")])
def test_group_ends_the_chip_cannot_run_are_refused_by_op_and_line(ends, match):
    x = torch.randn(10, 16)
    cm = ember.compile(_GivenEnds().eval(), (x, torch.tensor([3, 6, 10], dtype=torch.int32)), chip="tiny",
                       dtype="fp32")
    with pytest.raises(SizeError, match=match) as err:
        cm.run(x, torch.tensor(ends, dtype=torch.int32), device="sim")
    assert "ember.grouped_matmul at tests/test_kernel_grouped_matmul.py" in str(err.value)


@pytest.mark.parametrize("routing", ["uniform", "skewed", [0, 3, 1, 0, 5]])
@pytest.mark.parametrize("rows, cap", [(40, 8), (7, 1), (64, 64), (5, None)])
def test_a_routing_gives_every_row_to_one_group_within_the_cap(routing, rows, cap):
    sizes = group_sizes(routing, rows, 5, cap)
    assert sum(sizes) == rows and len(sizes) == 5
    assert max(sizes) <= max(cap or rows, -(-rows // 5))
    if routing == "skewed":
        assert sizes == sorted(sizes, reverse=True)


def test_an_expert_layers_projections_share_the_bound_on_their_groups():
    from runtime.sized_kernels import group_caps
    model, example = ember.load_model("models:hf-mixtral-grouped-mm")
    cm = ember.compile(model, example, chip="tiny", dtype="fp32")
    steps = [s for s in cm.program.steps if s["op"] == "grouped_matmul"]
    caps = group_caps(cm.program)
    tokens = example[0].numel()
    assert len(steps) == 4 and len(caps) == 2             # two layers, two projections each
    assert all(caps[s["operands"][2]] == tokens for s in steps)
    # the down projection's rows are the gate's output, not gathered tokens: it learns the bound
    assert sorted(s["attrs"]["max_group_rows"] for s in steps) == [0, 0, tokens, tokens]
