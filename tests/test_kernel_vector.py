"""Kernels on the PE's vector core (ops/kernels/vector_*.py), compiled models on the sim against
eager PyTorch on fresh random inputs: argmax, argmin and topk over the last dim, exact (ties,
NaN and all), in rows that fit local memory and in vocabulary-long rows that stream in chunks;
cumsum and cumprod, bit-equal (fp32 accumulates in fp64 as PyTorch's CPU scan does); gathers
along the last dim; no step on the host. An index out of range stops the run naming the op."""
from __future__ import annotations

import pytest
import torch

import ember
from tests.helpers import as_module


def _with_ties(*shape, dtype=torch.float32, nan=False):
    """Few distinct values (many ties), in random order; some NaN when asked."""
    x = torch.randint(-4, 5, shape).to(dtype) * 0.5
    if nan:
        x[torch.rand(shape) < 0.02] = float("nan")
    return x


def _distinct(*shape):
    """Distinct values in random order along the last dim (no ties: one right answer)."""
    return torch.argsort(torch.rand(shape), dim=-1).float() - shape[-1] / 2


CASES = {
    "argmax-ties-nan": (lambda x: x.argmax(-1), lambda: (_with_ties(6, 37, nan=True),)),
    "argmin-bf16": (lambda x: x.argmin(-1, keepdim=True), lambda: (_with_ties(3, 2, 40, dtype=torch.bfloat16),)),
    "argmax-int": (lambda i: i.argmax(-1), lambda: (torch.randint(-3, 4, (5, 19)),)),
    "topk-largest": (lambda x: x.topk(3, -1).indices, lambda: (_distinct(4, 50),)),
    "topk-smallest-int": (lambda i: i.topk(4, -1, largest=False).indices, lambda: (_distinct(7, 23).long(),)),
    # torch leaves the order of equal values in topk open: these compare the values picked
    "topk-ties-nan": (lambda x: x.topk(5, -1).indices, lambda: (_with_ties(4, 50, nan=True),)),
    "topk-ties-int": (lambda i: i.topk(4, -1, largest=False).indices, lambda: (torch.randint(-2, 3, (7, 23)),)),
    "cumsum-int": (lambda i: i.cumsum(-1), lambda: (torch.randint(-1000, 1000, (3, 4, 45)),)),
    "cumsum-mask": (lambda m: (m != 0).long().cumsum(-1) - 1, lambda: (torch.randint(0, 2, (2, 29)),)),
    "cumsum-fp32": (lambda x: x.cumsum(-1), lambda: (torch.randn(5, 300),)),
    "cumprod-fp32": (lambda x: x.cumprod(-1), lambda: (1 + 0.1 * torch.randn(3, 40),)),
    # gathers along the last dim: random indices repeat and come in any order
    "gather-fp32": (lambda x, i: x.gather(-1, i), lambda: (torch.randn(4, 6, 37), torch.randint(0, 37, (4, 6, 12)))),
    "take-along-bf16": (lambda x, i: torch.take_along_dim(x, i, dim=-1),
                        lambda: (torch.randn(5, 70).bfloat16(), torch.randint(0, 70, (5, 90)))),
    "gather-int-positions": (lambda p, i: p.gather(1, i), lambda: (torch.randint(-99, 99, (2, 64)), torch.randint(0, 64, (2, 8)))),
    "topk-values": (lambda x: x.topk(3, -1).values, lambda: (_distinct(16, 8),)),
    # a vocabulary row: 24k fp32 logits do not fit tiny's 64 KiB local memory, so it streams in chunks
    "argmax-vocab": (lambda x: x[:, -1].argmax(-1, keepdim=True), lambda: (_with_ties(2, 3, 24_001, nan=False),)),
}


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    return {name: ember.compile(as_module(fn), make(), chip="tiny", dtype="fp32") for name, (fn, make) in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_selection_on_the_vector_core_is_exact(compiled, name):
    fn, make = CASES[name]
    cm = compiled[name]
    for seed in range(2):
        torch.manual_seed(100 + seed)
        args = make()
        out, ref = cm.run(*args, device="sim"), fn(*args)
        assert out.dtype == ref.dtype and out.shape == ref.shape, name
        if "ties" in name and "topk" in name:
            x = args[0]
            picked, want = x.gather(-1, out), x.gather(-1, ref)
            assert torch.equal(picked.isnan(), want.isnan()) and torch.equal(picked.nan_to_num(), want.nan_to_num())
            assert all(len(set(row.tolist())) == row.numel() for row in out.reshape(-1, out.shape[-1]))
        else:
            assert torch.equal(out, ref), name
        steps = cm.last_run.steps
        assert not [s.op for s in steps if s.kind == "host"], f"{name}: a step ran on the host"
        assert cm.last_run.stats["engine_utilization"]["vec"] > 0


class _Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(50, 16)

    def forward(self, ids):
        return self.table(ids).sum(-1)


def test_an_index_out_of_range_stops_the_run_naming_the_op():
    torch.manual_seed(0)
    model = _Embed().eval()
    cm = ember.compile(model, (torch.randint(0, 50, (2, 9)),), chip="tiny", dtype="fp32")
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(cm.run(ids, device="sim"), model(ids), rtol=1e-5, atol=1e-5)
    ids[1, 4] = 50
    from simulator import IndexOutOfRange
    with pytest.raises(IndexOutOfRange, match=r"ember\.\w+ at .*test_kernel_vector\.py:\d+.*index 50"):
        cm.run(ids, device="sim")


class _Gather(torch.nn.Module):
    def forward(self, x, i):
        return x.gather(1, i) * 2


def test_a_gather_index_out_of_range_stops_the_run_naming_the_op():
    torch.manual_seed(1)
    model = _Gather()
    x, i = torch.randn(4, 30), torch.randint(0, 30, (4, 7))
    cm = ember.compile(model, (x, i), chip="tiny", dtype="fp32")
    assert torch.equal(cm.run(x, i, device="sim"), model(x, i))
    from simulator import IndexOutOfRange
    for bad in (30, -1):            # torch.gather does not wrap negative indices either
        i[2, 3] = bad
        with pytest.raises(IndexOutOfRange, match=r"ember\.gather at .*test_kernel_vector\.py:\d+.*gather_fp32_30_7 "
                                                  r"stopped at element 3 .*index outside \[0, 30\)"):
            cm.run(x, i, device="sim")
        with pytest.raises(RuntimeError):
            model(x, i)
