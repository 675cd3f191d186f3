"""Static checks of a program against a chip, vectorized so that million-command programs
are checked in milliseconds: opcodes, engines, PE numbers, sizes, and every memory range.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import AddressOutOfRange, InvalidCommand, LocalMemoryOverflow
from simulator.isa import ENGINE_OF_OP, NUM_ENGINES, ChipProgram, Op, Space, format_command
from simulator.spec import ChipSpec

_ESIZE = np.array([4, 2, 2, 1, 4], np.int64)
HOST_BYTES = 1 << 40        # the host's memory as the chip sees it


def _fail(cls, prog: ChipProgram, mask: np.ndarray, why: str) -> None:
    i = int(np.flatnonzero(mask)[0])
    raise cls(f"command #{i} ({format_command(prog.commands[i], i)}): {why}")


def extents(cmds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]]:
    """Memory ranges the commands touch, per opcode and operand:
    (command indices, space, lo, nbytes, operand name) groups."""
    op = cmds["op"]
    out = []
    for o in np.unique(op).tolist():
        if o >= len(Op):
            continue
        idx = np.flatnonzero(op == o)
        a = cmds["a"][idx]                                  # contiguous (k, 8) copy
        es = _ESIZE[np.minimum(cmds["dtype"][idx], 4)]
        es2 = _ESIZE[np.minimum(cmds["dtype2"][idx], 4)]
        loc = np.full(len(idx), int(Space.LOCAL), np.int64)

        def add(space, lo, n, name):
            out.append((idx, space, lo, n, name))

        def span(rows, row_bytes, stride):
            return np.where(rows > 0, (rows - 1) * stride + row_bytes, 0)

        o = Op(o)
        if o is Op.DMA:
            add(cmds["src_space"][idx].astype(np.int64), a[:, 0], span(a[:, 2], a[:, 3], a[:, 4]), "dma source")
            add(cmds["dst_space"][idx].astype(np.int64), a[:, 1], span(a[:, 2], a[:, 3], a[:, 5]), "dma destination")
        elif o is Op.DPE_MATMUL:
            add(loc, a[:, 0], a[:, 3] * a[:, 4] * es, "matmul A")
            add(loc, a[:, 1], a[:, 4] * a[:, 5] * es, "matmul B")
            add(loc, a[:, 2], a[:, 3] * a[:, 5] * 4, "matmul C")
        elif o is Op.RE_ACC:
            add(loc, a[:, 0], a[:, 2] * 4, "reduce dst")
            add(loc, a[:, 1], a[:, 2] * 4, "reduce src")
        elif o is Op.RE_SEND:
            add(loc, a[:, 0], a[:, 2] * 4, "send src")
            add(loc, a[:, 1], a[:, 2] * 4, "send dst (neighbour)")
        elif o in (Op.SIMD_UNARY, Op.SIMD_SCALAR):
            add(loc, a[:, 0], a[:, 2] * es, "simd src")
            add(loc, a[:, 1], a[:, 2] * es2, "simd dst")
        elif o is Op.SIMD_BINARY:
            add(loc, a[:, 0], a[:, 3] * es, "simd a")
            add(loc, a[:, 1], a[:, 3] * es, "simd b")
            add(loc, a[:, 2], a[:, 3] * es2, "simd dst")
        elif o is Op.SIMD_ROW_REDUCE:
            add(loc, a[:, 0], a[:, 2] * a[:, 3] * es, "simd src")
            add(loc, a[:, 1], a[:, 2] * es2, "simd dst")
        elif o is Op.SIMD_ROW_BCAST:
            add(loc, a[:, 0], a[:, 3] * a[:, 4] * es, "simd src")
            add(loc, a[:, 1], a[:, 3] * es, "simd row vector")
            add(loc, a[:, 2], a[:, 3] * a[:, 4] * es2, "simd dst")
        elif o is Op.MLU_TRANSPOSE:
            add(loc, a[:, 0], a[:, 2] * a[:, 3] * es, "transpose src")
            add(loc, a[:, 1], a[:, 2] * a[:, 3] * es, "transpose dst")
        elif o is Op.MLU_COPY2D:
            add(loc, a[:, 0], span(a[:, 2], a[:, 3], a[:, 4]), "copy src")
            add(loc, a[:, 1], span(a[:, 2], a[:, 3], a[:, 5]), "copy dst")
        elif o is Op.MLU_CONCAT:
            add(loc, a[:, 0], a[:, 3] * a[:, 4], "concat a")
            add(loc, a[:, 1], a[:, 3] * a[:, 5], "concat b")
            add(loc, a[:, 2], a[:, 3] * (a[:, 4] + a[:, 5]), "concat dst")
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
    args = np.array(c["a"])
    args[op == Op.SIMD_SCALAR, 3] = 0     # the fp64 bits of the immediate: any sign
    if (bad := (args < 0).any(axis=1)).any():
        _fail(AddressOutOfRange, prog, bad, "negative address, size or stride")
    if (bad := is_dma & ((c["src_space"] > 3) | (c["dst_space"] > 3) | (((c["flags"] >> 1) & 3) == 3))).any():
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
             int(Space.LOCAL): chip.local_mem.bytes, int(Space.HOST): HOST_BYTES}
    names = {int(Space.DRAM): "DRAM", int(Space.SRAM): "SRAM", int(Space.LOCAL): "local memory",
             int(Space.HOST): "host memory"}
    for idx, space, lo, n, name in extents(c):
        for s, limit in sizes.items():
            over = (space == s) & (lo + n > limit)
            if over.any():
                full = np.zeros(len(c), bool)
                full[idx[over]] = True
                j = int(np.flatnonzero(over)[0])
                why = (f"{name} [{int(lo[j]):#x}, {int(lo[j] + n[j]):#x}) is past the end of "
                       f"{names[s]} ({limit} bytes)")
                _fail(LocalMemoryOverflow if s == Space.LOCAL else AddressOutOfRange, prog, full, why)
