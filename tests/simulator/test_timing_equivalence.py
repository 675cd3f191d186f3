"""The C++ timing engine and the Python reference agree cycle for cycle on random programs."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator import _core
from simulator.isa import CMD_DTYPE, ENGINE_OF_OP, DType, INDEXED_SHIFT, NUM_ENGINES, ChipProgram, Op, SimdFn, pack_index
from simulator.spec import load_chip
from simulator.timing_params import timing_params
from simulator.timing_ref import run_timing_ref

_TINY = load_chip("tiny")
CHIPS = [
    _TINY,
    _TINY.with_(pe_grid={"rows": 3, "cols": 2}, dram__bytes_per_s=25e9, noc__link_bytes_per_s=48e9,
                clock_hz=1.1e9, dram__channels=3, local_mem__bytes_per_s=100e9),
    _TINY.with_(dpe={"model": "systolic_os", "array_rows": 8, "array_cols": 4,
                     "macs_per_cycle": {"fp32": 32, "bf16": 32, "fp16": 32, "int8": 32}}),
    _TINY.with_(pe_grid={"rows": 2, "cols": 3},
                dpe={"model": "systolic_ws", "array_rows": 4, "array_cols": 8,
                     "macs_per_cycle": {"fp32": 32, "bf16": 32, "fp16": 32, "int8": 32}}),
]
PARAMS = [(timing_params(c), c.num_pes, c.pe_grid.rows, c.pe_grid.cols) for c in CHIPS]


def random_program(seed: int, params) -> np.ndarray:
    """A random program. Waits usually name tokens signalled by earlier commands (in one
    global order, so no deadlock); about one program in eight may deadlock, which both
    engines must then report identically."""
    rng = np.random.default_rng(seed)
    _, num_pes, rows, cols = params
    n = int(rng.integers(1, 40))
    c = np.zeros(n, CMD_DTYPE)
    ntok = int(rng.integers(1, 5))
    signalled = [0] * ntok
    allow_deadlock = rng.random() < 0.125
    for i in range(n):
        op = Op(int(rng.integers(0, len(Op))))
        pe = int(rng.integers(0, num_pes))
        r, col = divmod(pe, cols)
        rec = c[i]
        rec["pe"], rec["op"] = pe, int(op)
        rec["engine"] = int(rng.integers(0, NUM_ENGINES)) if op is Op.NOP else int(ENGINE_OF_OP[op])
        # element dtypes (int32 aside); a matmul only in one the chip's DPE multiplies (fp8 on tiny)
        dtypes = [int(d) for d in DType if d is not DType.INT32 and (op is not Op.DPE_MATMUL or params[0][f"macs_{int(d)}"])]
        rec["dtype"] = int(rng.choice(dtypes))
        rec["fn"] = int(rng.integers(0, len(SimdFn)))
        rec["peer"] = -1
        a = rng.integers(0, 2000, 8)
        a[2:6] = rng.integers(1, 300, 4)
        if op is Op.DMA:
            rec["src_space"], rec["dst_space"] = rng.integers(0, 4, 2)
            # multicast, and (one DMA in two) an index that moves the source or the destination
            indexed = int(rng.integers(0, 3)) if rng.random() < 0.5 else 0
            rec["flags"] = int(rng.integers(0, 3)) << 1 | indexed << INDEXED_SHIFT
            rec["peer"] = int(rng.integers(-1, num_pes))
            a[2] = rng.integers(0, 9)          # rows (0: an empty transfer)
            a[3] = rng.integers(1, 5000)       # row bytes
            if indexed:
                rec["dtype"] = 4               # int32 index
                a[6] = pack_index(int(rng.integers(0, 4096)), int(rng.integers(1, 64)))
                a[7] = rng.integers(0, 5000)
        elif op is Op.RE_SEND:
            dirs = [d for d, ok in ((0, r > 0), (1, r < rows - 1), (2, col < cols - 1), (3, col > 0)) if ok]
            rec["peer"] = int(rng.choice(dirs))
        rec["a"] = a
        rec["wait_tok"], rec["sig_tok"] = -1, -1
        if rng.random() < 0.5:
            t = int(rng.integers(0, ntok))
            if signalled[t] or allow_deadlock:
                rec["wait_tok"] = t
                rec["wait_cnt"] = int(rng.integers(1, signalled[t] + 2 if allow_deadlock else signalled[t] + 1))
        if rng.random() < 0.5:
            t = int(rng.integers(0, ntok))
            rec["sig_tok"] = t
            signalled[t] += 1
    return c


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), chip=st.integers(0, len(CHIPS) - 1))
def test_cpp_matches_python_reference(seed, chip):
    params = PARAMS[chip]
    cmds = random_program(seed, params)
    ref = run_timing_ref(cmds, params[0], params[1])
    out = _core.run_timing(cmds, params[0], params[1], True)
    assert out["cycles"] == ref.cycles
    np.testing.assert_array_equal(out["start"], ref.start)
    np.testing.assert_array_equal(out["end"], ref.end)
    np.testing.assert_array_equal(out["busy"], ref.busy)
    assert list(out["blocked"]) == ref.blocked


def test_random_programs_are_mostly_deadlock_free():
    params = PARAMS[0]
    free = sum(not run_timing_ref(random_program(s, params), params[0], params[1]).blocked
               for s in range(200))
    assert free > 150


def test_program_roundtrip(tmp_path):
    cmds = random_program(7, PARAMS[0])
    prog = ChipProgram(cmds, 4)
    prog.save(str(tmp_path / "p.npz"))
    back = ChipProgram.load(str(tmp_path / "p.npz"))
    assert (back.commands == cmds).all() and back.num_pes == 4
