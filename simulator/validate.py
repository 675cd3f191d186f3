"""Static checks of a program against a chip, vectorized so that million-command programs
are checked in milliseconds: opcodes, engines, PE numbers, sizes, and every memory range.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import AddressOutOfRange, InvalidCommand, LocalMemoryOverflow
from simulator.isa import ENGINE_OF_OP, NUM_ENGINES, ChipProgram, Op, Space, format_command
from simulator.spec import ChipSpec

_ESIZE = np.array([4, 2, 2, 1, 4], np.int64)


def _fail(cls, prog: ChipProgram, mask: np.ndarray, why: str) -> None:
    i = int(np.flatnonzero(mask)[0])
    raise cls(f"command #{i} ({format_command(prog.commands[i], i)}): {why}")


def extents(cmds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]]:
    """Memory ranges each command touches: (mask, space, lo, nbytes, operand name) groups."""
    a = cmds["a"]
    op = cmds["op"]
    es = _ESIZE[np.minimum(cmds["dtype"], 4)]
    es2 = _ESIZE[np.minimum(cmds["dtype2"], 4)]
    loc = np.full(len(cmds), int(Space.LOCAL), np.int64)
    out = []

    def add(o, space, lo, n, name):
        m = op == o
        if m.any():
            out.append((m, np.asarray(space)[m] if np.ndim(space) else np.full(m.sum(), space),
                        lo[m], n[m], name))

    def span(rows, row_bytes, stride):
        return np.where(rows > 0, (rows - 1) * stride + row_bytes, 0)

    add(Op.DMA, cmds["src_space"].astype(np.int64), a[:, 0], span(a[:, 2], a[:, 3], a[:, 4]), "dma source")
    add(Op.DMA, cmds["dst_space"].astype(np.int64), a[:, 1], span(a[:, 2], a[:, 3], a[:, 5]), "dma destination")
    add(Op.DPE_MATMUL, loc, a[:, 0], a[:, 3] * a[:, 4] * es, "matmul A")
    add(Op.DPE_MATMUL, loc, a[:, 1], a[:, 4] * a[:, 5] * es, "matmul B")
    add(Op.DPE_MATMUL, loc, a[:, 2], a[:, 3] * a[:, 5] * 4, "matmul C")
    add(Op.RE_ACC, loc, a[:, 0], a[:, 2] * 4, "reduce dst")
    add(Op.RE_ACC, loc, a[:, 1], a[:, 2] * 4, "reduce src")
    add(Op.RE_SEND, loc, a[:, 0], a[:, 2] * 4, "send src")
    add(Op.RE_SEND, loc, a[:, 1], a[:, 2] * 4, "send dst (neighbour)")
    for o in (Op.SIMD_UNARY, Op.SIMD_SCALAR):
        add(o, loc, a[:, 0], a[:, 2] * es, "simd src")
        add(o, loc, a[:, 1], a[:, 2] * es2, "simd dst")
    add(Op.SIMD_BINARY, loc, a[:, 0], a[:, 3] * es, "simd a")
    add(Op.SIMD_BINARY, loc, a[:, 1], a[:, 3] * es, "simd b")
    add(Op.SIMD_BINARY, loc, a[:, 2], a[:, 3] * es2, "simd dst")
    add(Op.SIMD_ROW_REDUCE, loc, a[:, 0], a[:, 2] * a[:, 3] * es, "simd src")
    add(Op.SIMD_ROW_REDUCE, loc, a[:, 1], a[:, 2] * es2, "simd dst")
    add(Op.SIMD_ROW_BCAST, loc, a[:, 0], a[:, 3] * a[:, 4] * es, "simd src")
    add(Op.SIMD_ROW_BCAST, loc, a[:, 1], a[:, 3] * es, "simd row vector")
    add(Op.SIMD_ROW_BCAST, loc, a[:, 2], a[:, 3] * a[:, 4] * es2, "simd dst")
    add(Op.MLU_TRANSPOSE, loc, a[:, 0], a[:, 2] * a[:, 3] * es, "transpose src")
    add(Op.MLU_TRANSPOSE, loc, a[:, 1], a[:, 2] * a[:, 3] * es, "transpose dst")
    add(Op.MLU_COPY2D, loc, a[:, 0], span(a[:, 2], a[:, 3], a[:, 4]), "copy src")
    add(Op.MLU_COPY2D, loc, a[:, 1], span(a[:, 2], a[:, 3], a[:, 5]), "copy dst")
    add(Op.MLU_CONCAT, loc, a[:, 0], a[:, 3] * a[:, 4], "concat a")
    add(Op.MLU_CONCAT, loc, a[:, 1], a[:, 3] * a[:, 5], "concat b")
    add(Op.MLU_CONCAT, loc, a[:, 2], a[:, 3] * (a[:, 4] + a[:, 5]), "concat dst")
    return out


def validate(prog: ChipProgram, chip: ChipSpec) -> None:
    """Raise InvalidCommand, AddressOutOfRange or LocalMemoryOverflow for the first bad command."""
    c = prog.commands
    if len(c) == 0:
        return
    rows, cols = chip.pe_grid.rows, chip.pe_grid.cols
    if prog.num_pes != rows * cols:
        raise InvalidCommand(f"program is for {prog.num_pes} PEs but chip {chip.name} has "
                             f"{rows * cols}")
    op = c["op"].astype(np.int64)
    if (bad := op >= len(Op)).any():
        _fail(InvalidCommand, prog, bad, f"unknown opcode {int(op[bad][0])}")
    pe = c["pe"].astype(np.int64)
    if (bad := (pe < 0) | (pe >= prog.num_pes)).any():
        _fail(AddressOutOfRange, prog, bad, f"PE number outside 0..{prog.num_pes - 1}")
    expected = np.array([-1] + [int(ENGINE_OF_OP[Op(o)]) for o in range(1, len(Op))])[op]
    eng = c["engine"].astype(np.int64)
    if (bad := ((expected >= 0) & (eng != expected)) | (eng >= NUM_ENGINES)).any():
        _fail(InvalidCommand, prog, bad, "command is on the wrong engine queue for its opcode")
    if (bad := (c["dtype"] > 4) | (c["dtype2"] > 4)).any():
        _fail(InvalidCommand, prog, bad, "unknown dtype code")
    is_dma, is_send = op == Op.DMA, op == Op.RE_SEND
    if (bad := (c["a"][:, 2:] < 0).any(axis=1) | (c["a"][:, :2] < 0).any(axis=1)).any():
        _fail(AddressOutOfRange, prog, bad, "negative address, size or stride")
    if (bad := is_dma & ((c["src_space"] > 2) | (c["dst_space"] > 2) | (((c["flags"] >> 1) & 3) == 3))).any():
        _fail(InvalidCommand, prog, bad, "unknown memory space or multicast mode")
    peer = c["peer"].astype(np.int64)
    if (bad := is_dma & ((peer < -1) | (peer >= prog.num_pes))).any():
        _fail(AddressOutOfRange, prog, bad, f"destination PE outside 0..{prog.num_pes - 1}")
    if is_send.any():
        r, col = pe // cols, pe % cols
        nr = np.where(peer == 0, r - 1, np.where(peer == 1, r + 1, r))
        nc = np.where(peer == 2, col + 1, np.where(peer == 3, col - 1, col))
        bad = is_send & ((peer < 0) | (peer > 3) | (nr < 0) | (nr >= rows) | (nc < 0) | (nc >= cols))
        if bad.any():
            _fail(AddressOutOfRange, prog, bad, "reduction send to a neighbour outside the PE grid")
    is_mm = op == Op.DPE_MATMUL
    if (bad := is_mm & ((c["a"][:, 3:6] <= 0).any(axis=1) | (c["dtype"] > 3))).any():
        _fail(InvalidCommand, prog, bad, "matmul needs M, K, N > 0 and an fp32/bf16/fp16/int8 input")
    is_re = (op == Op.RE_ACC) | is_send
    if (bad := is_re & (c["dtype"] != 0) & (c["dtype"] != 4)).any():
        _fail(InvalidCommand, prog, bad, "reduction engine works on fp32 or int32")
    if (bad := (c["wait_tok"] >= 0) & (c["wait_cnt"] < 0)).any():
        _fail(InvalidCommand, prog, bad, "negative wait count")
    sizes = {int(Space.DRAM): chip.dram.bytes, int(Space.SRAM): chip.sram.bytes,
             int(Space.LOCAL): chip.local_mem.bytes}
    names = {int(Space.DRAM): "DRAM", int(Space.SRAM): "SRAM", int(Space.LOCAL): "local memory"}
    for mask, space, lo, n, name in extents(c):
        for s, limit in sizes.items():
            over = (space == s) & (lo + n > limit)
            if over.any():
                full = np.zeros(len(c), bool)
                idx = np.flatnonzero(mask)[over]
                full[idx] = True
                j = int(np.flatnonzero(over)[0])
                why = (f"{name} [{int(lo[j]):#x}, {int(lo[j] + n[j]):#x}) is past the end of "
                       f"{names[s]} ({limit} bytes)")
                _fail(LocalMemoryOverflow if s == Space.LOCAL else AddressOutOfRange, prog, full, why)
