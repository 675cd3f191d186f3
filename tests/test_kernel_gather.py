"""Gathers and scatters on the chip (ops/kernels/gather.py): embedding, index_select and
index_copy run as indexed DMAs on indices in device memory, match torch on fresh random
indices, update a KV cache in place at the cost of the new rows only, and stop with a clear
error on an id out of range."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import ember
from ops.kernel import KernelCall, Placement, kernel_for, roofline_cycles
from simulator import IndexOutOfRange, ProgramBuilder, load_chip, simulate
from tests.helpers import as_module, assert_cost_model_tracks, place, rel_err

TINY = load_chip("tiny")
MTIA = load_chip("mtia2i")


def _on_chip(cm, op: str) -> None:
    steps = cm.last_run.steps
    assert not [s.op for s in steps if s.kind == "host"], "a step ran on the host"
    assert any(s.kind == "kernel" and s.op == op for s in steps), f"ember.{op} did not run as a kernel"


class _Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tok = torch.nn.Embedding(50, 24)

    def forward(self, ids):
        return self.tok(ids) * 2.0


@pytest.fixture(scope="module", params=[("tiny", "fp32", (1, 1)), ("tiny", "fp32", (3, 7)), ("mtia2i", "bf16", (2, 5))],
                ids=["tiny-fp32-1x1", "tiny-fp32-3x7", "mtia2i-bf16-2x5"])
def embedding(request):
    chip, dtype, shape = request.param
    model = _Embed().eval()
    return model, shape, ember.compile(model, (torch.randint(0, 50, shape),), chip=chip, dtype=dtype)


def test_embedding_gathers_rows_by_device_ids(embedding):
    model, shape, cm = embedding
    for _ in range(2):              # fresh ids each run: nothing about them is in the Program
        ids = torch.randint(0, 50, shape)
        assert rel_err(cm.run(ids, device="sim"), model(ids)) <= 1e-6
        _on_chip(cm, "embedding")


def test_an_id_out_of_range_is_a_run_time_error(embedding):
    _, shape, cm = embedding
    ids = torch.randint(0, 50, shape)
    ids.view(-1)[-1] = 50
    with pytest.raises(IndexOutOfRange, match=r"index 50 .* outside the valid range \[0, 50\)"):
        cm.run(ids, device="sim")


def test_index_select_wraps_negative_indices():
    model = as_module(lambda x, i: x[:, i] * 1.5)
    cm = ember.compile(model, (torch.randn(3, 10, 4), torch.randint(-10, 10, (6,))), chip="tiny", dtype="fp32")
    x, i = torch.randn(3, 10, 4), torch.randint(-10, 10, (6,))
    assert rel_err(cm.run(x, i, device="sim"), model(x, i)) <= 1e-6
    _on_chip(cm, "index_select")


def test_index_copy_into_a_copy():
    """The result is a new tensor (the input is read afterwards): copy, then scatter."""
    model = as_module(lambda x, i, v: (x.index_copy(2, i, v), x * 2.0))

    def inputs():
        return torch.randn(2, 3, 9, 5), torch.randperm(9)[:4], torch.randn(2, 3, 4, 5)
    cm = ember.compile(model, inputs(), chip="tiny", dtype="fp32")
    fresh = inputs()
    assert rel_err(cm.run(*fresh, device="sim"), model(*fresh)) <= 1e-6
    _on_chip(cm, "index_put")


# ----------------------------------------------------------------------------- the template directly

def _cache_call(shape, positions, dtype="fp32", in_place=True, space="dram"):
    """index_put(cache, positions, values) along dim 2 with the result in the cache's place
    (in place) or in a buffer of its own."""
    b, h, length, d = shape
    cache, index, values, other = place([(shape, dtype), ((positions,), "int32"), ((b, h, positions, d), dtype),
                                         (shape, dtype)], space)
    out = cache if in_place else other
    return KernelCall("index_put", (cache, index, values), out, {"dim": 2, "accumulate": False})


def _chosen_program(call, chip):
    """The commands of the plan the template chooses."""
    template = kernel_for(call.op)
    builder = ProgramBuilder(chip)
    template.emit(call, template.choose(call, chip), chip, builder)
    return builder.build()


def _run_call(call, chip, init, engine="cpp"):
    prog = _chosen_program(call, chip)
    return prog, simulate(prog, chip, memory_init=init, engine=engine)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "copy"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_index_put_in_place_writes_only_the_new_rows(in_place, dtype):
    rng = np.random.default_rng(1)
    shape, s = (1, 2, 16, 8), 3
    call = _cache_call(shape, s, dtype, in_place)
    cache, index, values = call.inputs
    np_dt = np.float32 if dtype == "fp32" else ml_dtypes.bfloat16
    old = rng.standard_normal(shape).astype(np_dt)
    new = rng.standard_normal((1, 2, s, 8)).astype(np_dt)
    pos = rng.permutation(16)[:s].astype(np.int32)
    pos[1] -= 16                                     # a negative position counts from the end
    init = {("dram", cache.addr): old, ("dram", index.addr): pos, ("dram", values.addr): new}
    prog, res = _run_call(call, TINY, init)
    expect = old.copy()
    expect[:, :, pos % 16] = new
    got = res.read("dram", call.output.addr, shape, np_dt)
    np.testing.assert_array_equal(got.astype(np.float32), expect.astype(np.float32))
    if in_place:
        assert res.stats["bytes"]["dram_write"] == values.nbytes          # the new rows, nothing else
        assert kernel_for("index_put").bytes_moved(call) == {"dram": index.nbytes + 2 * values.nbytes}
    else:
        assert res.stats["bytes"]["dram_write"] == values.nbytes + cache.nbytes
    # timing: both engines, cycle for cycle, on the same expanded program
    python = simulate(prog, TINY, timing_only=True, engine="python")
    assert python.cycles == res.cycles
    np.testing.assert_array_equal(python.timing.end, res.timing.end)


def test_gather_kernels_time_alike_in_both_engines():
    table, ids, out = place([((40, 48), "bf16"), ((2, 9), "int32"), ((2, 9, 48), "bf16")])
    call = KernelCall("embedding", (table, ids), out, {})
    template = kernel_for("embedding")
    for plan in template.plans(call, TINY):
        builder = ProgramBuilder(TINY)
        template.emit(call, plan, TINY, builder)
        prog = builder.build()
        a = simulate(prog, TINY, timing_only=True, engine="cpp")
        b = simulate(prog, TINY, timing_only=True, engine="python")
        assert a.cycles == b.cycles
        np.testing.assert_array_equal(a.timing.start, b.timing.start)


@pytest.mark.parametrize("case", ["embedding", "index-put-in-place", "index-put-copy"])
def test_cost_model_tracks_the_simulator(case):
    if case == "embedding":
        table, ids, out = place([((2000, 256), "bf16"), ((4, 64), "int32"), ((4, 64, 256), "bf16")])
        call = KernelCall("embedding", (table, ids), out, {})
    else:
        call = _cache_call((1, 8, 256, 64), 32, "bf16", in_place=case.endswith("in-place"))
    assert_cost_model_tracks(call, MTIA, rel=0.25, choice=1.15)


def _kv_cycles(positions: int, values_space: str):
    """Timing-only cycles of writing `positions` rows of a (1, 32, 2064, 128) bf16 DRAM cache in
    place on mtia2i, its DRAM floor, and the stored records."""
    cache = Placement("dram", 0, (1, 32, 2064, 128), "bf16")
    index = Placement("sram", 0, (positions,), "int32")
    values = Placement(values_space, 1 << 20 if values_space == "sram" else cache.nbytes,
                       (1, 32, positions, 128), "bf16")
    call = KernelCall("index_put", (cache, index, values), cache, {"dim": 2, "accumulate": False})
    template = kernel_for("index_put")
    prog = _chosen_program(call, MTIA)
    cycles = simulate(prog, MTIA, timing_only=True).cycles
    floor = template.bytes_moved(call)["dram"] / MTIA.dram_bytes_per_s * MTIA.clock_hz
    assert abs(roofline_cycles(call, template, MTIA) - floor) < 1
    return cycles, floor, len(prog)


@pytest.mark.parametrize("values_space", ["dram", "sram"])
def test_prefill_cache_write_runs_at_dram_bandwidth(values_space):
    cycles, floor, records = _kv_cycles(2048, values_space)
    assert floor <= cycles <= 1.02 * floor, (cycles, floor)
    assert records <= 8 * MTIA.num_pes                  # a loop per PE, not a DMA per position


def test_decode_cache_write_costs_a_few_dma_latencies():
    cycles, floor, records = _kv_cycles(1, "sram")
    assert cycles <= floor + 4 * MTIA.dma.latency_cycles, (cycles, floor)
    assert records <= 8
