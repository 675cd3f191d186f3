"""Static checks of a program against a chip, vectorized so that million-command programs
are checked in milliseconds: opcodes, engines, PE numbers, sizes, and every memory range.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import AddressOutOfRange, InvalidCommand, LocalMemoryOverflow
from simulator.isa import (DPE_DTYPES, ENGINE_OF_OP, INDEXED_SHIFT, NUM_ENGINES, ChipProgram, DType, Indexed, Op, Space,
                           format_command)
from simulator.isa.encoding import INDEX_ADDR_BITS, INDEX_ADDR_MASK
from simulator.isa.mx import BLOCK as MX_BLOCK
from simulator.spec import ChipSpec

_ESIZE = np.array([d.itemsize for d in DType], np.int64)
#: Bytes of one 32-element block per dtype (0: not an MX format).
_MX_BLOCK_BYTES = np.array([d.mx.block_bytes if d.mx else 0 for d in DType], np.int64)
_LAST_DTYPE = max(DType)
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
        es = _ESIZE[np.minimum(cmds["dtype"][idx], _LAST_DTYPE)]
        es2 = _ESIZE[np.minimum(cmds["dtype2"][idx], _LAST_DTYPE)]
        loc = np.full(len(idx), int(Space.LOCAL), np.int64)

        def add(space, lo, n, name):
            out.append((idx, space, lo, n, name))

        def span(rows, row_bytes, stride):
            return np.where(rows > 0, (rows - 1) * stride + row_bytes, 0)

        o = Op(o)
        if o is Op.DMA:
            add(cmds["src_space"][idx].astype(np.int64), a[:, 0], span(a[:, 2], a[:, 3], a[:, 4]), "dma source")
            add(cmds["dst_space"][idx].astype(np.int64), a[:, 1], span(a[:, 2], a[:, 3], a[:, 5]), "dma destination")
            indexed = ((cmds["flags"][idx] >> INDEXED_SHIFT) & 3) != 0
            if indexed.any():       # the index an indexed DMA reads from the issuing PE's memory
                out.append((idx[indexed], loc[indexed], a[indexed, 6] & INDEX_ADDR_MASK,
                            np.full(int(indexed.sum()), 4, np.int64), "dma index"))
        elif o is Op.DPE_MATMUL:
            # an MX operand is M (A) or N (B) rows of K / 32 blocks
            blk = _MX_BLOCK_BYTES[np.minimum(cmds["dtype"][idx], _LAST_DTYPE)]
            k_bytes = np.where(blk > 0, a[:, 4] // MX_BLOCK * blk, a[:, 4] * es)
            add(loc, a[:, 0], a[:, 3] * k_bytes, "matmul A")
            add(loc, a[:, 1], np.where(blk > 0, a[:, 5] * k_bytes, a[:, 4] * a[:, 5] * es), "matmul B")
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
        elif o is Op.SIMD_MX_QUANT:
            blk = _MX_BLOCK_BYTES[np.minimum(cmds["dtype2"][idx], _LAST_DTYPE)]
            add(loc, a[:, 0], a[:, 2] * a[:, 3] * es, "mx quantize src")
            add(loc, a[:, 1], a[:, 2] * (a[:, 3] // MX_BLOCK) * blk, "mx quantize dst")
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
    if (bad := (c["dtype"] > _LAST_DTYPE) | (c["dtype2"] > _LAST_DTYPE)).any():
        _fail(InvalidCommand, prog, bad, "unknown dtype code")
    is_dma, is_send = op == Op.DMA, op == Op.RE_SEND
    args = np.array(c["a"])
    args[op == Op.SIMD_SCALAR, 3] = 0     # the fp64 bits of the immediate: any sign
    if (bad := (args < 0).any(axis=1)).any():
        _fail(AddressOutOfRange, prog, bad, "negative address, size or stride")
    if (bad := is_dma & ((c["src_space"] > 3) | (c["dst_space"] > 3) | (((c["flags"] >> 1) & 3) == 3))).any():
        _fail(InvalidCommand, prog, bad, "unknown memory space or multicast mode")
    side = (c["flags"].astype(np.int64) >> INDEXED_SHIFT) & 3
    is_indexed = is_dma & (side != int(Indexed.NONE))
    if is_indexed.any():
        if (bad := is_indexed & (side > int(Indexed.DST))).any():
            _fail(InvalidCommand, prog, bad, "unknown indexed-DMA mode (flags bits 3-4 are 3)")
        if (bad := is_indexed & (c["dtype"] != int(DType.INT32))).any():
            _fail(InvalidCommand, prog, bad, "an indexed DMA reads an int32 index (dtype must be int32)")
        if (bad := is_indexed & ((args[:, 6] >> INDEX_ADDR_BITS) < 1)).any():
            _fail(InvalidCommand, prog, bad, "an indexed DMA needs a count of at least 1 position")
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
    has = [int(d) for d, name in DPE_DTYPES.items() if chip.dpe.macs_per_cycle.get(name)]
    if (bad := is_mm & ((c["a"][:, 3:6] <= 0).any(axis=1) | ~np.isin(c["dtype"], has))).any():
        _fail(InvalidCommand, prog, bad, "matmul needs M, K, N > 0 and an input dtype the chip's DPE multiplies "
              f"(dpe.macs_per_cycle of {chip.name}: {', '.join(DPE_DTYPES[DType(d)] for d in has)})")
    is_mx = _MX_BLOCK_BYTES[np.minimum(c["dtype"], _LAST_DTYPE)] > 0
    is_mx_out = _MX_BLOCK_BYTES[np.minimum(c["dtype2"], _LAST_DTYPE)] > 0
    is_mxq = op == Op.SIMD_MX_QUANT
    if (bad := is_mm & is_mx & (c["a"][:, 4] % MX_BLOCK != 0)).any():
        _fail(InvalidCommand, prog, bad, f"an MX matmul's K is a whole number of {MX_BLOCK}-element blocks")
    if (bad := is_mxq & (~is_mx_out | is_mx | (c["a"][:, 3] % MX_BLOCK != 0))).any():
        _fail(InvalidCommand, prog, bad, "MX quantization reads float rows of whole 32-element blocks and writes "
              "an MX format (mxfp8, mxfp4)")
    if (bad := ~is_mm & ~is_mxq & ~is_dma & (is_mx | is_mx_out)).any():
        _fail(InvalidCommand, prog, bad, "MX formats are read only by the DPE and written only by MX quantization")
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
    _check_indexed_ranges(prog, is_indexed, side, sizes, names)
    _check_vector_calls(prog, chip, op == Op.VEC_KERNEL)


def _check_vector_calls(prog: ChipProgram, chip: ChipSpec, is_vec: np.ndarray) -> None:
    """A VEC_KERNEL names a kernel of the program's table, built for the chip's vector length,
    runs at least one row, and its regions lie inside local memory."""
    if not is_vec.any():
        return
    c = prog.commands
    a = c["a"]
    kernels = prog.vector_kernels
    if (bad := is_vec & (a[:, 0] >= len(kernels))).any():
        _fail(InvalidCommand, prog, bad, f"calls a vector kernel the program does not have ({len(kernels)} in its table)")
    if (bad := is_vec & (a[:, 4] < 1)).any():
        _fail(InvalidCommand, prog, bad, "a vector kernel runs at least one row")
    vlen = chip.vector_core.vlen_bytes
    for k, kernel in enumerate(kernels):
        mine = is_vec & (a[:, 0] == k)
        if not mine.any():
            continue
        if kernel.vlen_bytes != vlen:
            _fail(InvalidCommand, prog, mine, f"vector kernel {kernel.name} is built for {kernel.vlen_bytes}-byte "
                  f"vectors, but {chip.name}'s vector_core.vlen_bytes is {vlen}")
        for j, region in enumerate(kernel.regions):
            n = region.row_bytes * a[:, 4] if region.per_row else region.row_bytes
            if (bad := mine & (a[:, 1 + j] + n > chip.local_mem.bytes)).any():
                _fail(LocalMemoryOverflow, prog, bad, f"region {j} of vector kernel {kernel.name} is past the end of "
                      f"local memory ({chip.local_mem.bytes} bytes)")


def _check_indexed_ranges(prog: ChipProgram, is_indexed: np.ndarray, side: np.ndarray,
                          sizes: dict[int, int], names: dict[int, str]) -> None:
    """Every address an index in [0, count) can move an indexed DMA's address to stays inside
    its memory (whether it stays inside its tensor is the count's business: the simulator
    checks the index against the count when the command issues)."""
    c = prog.commands
    for moved, space_field, stride_slot, name in ((Indexed.SRC, "src_space", 4, "source"),
                                                  (Indexed.DST, "dst_space", 5, "destination")):
        rows = np.flatnonzero(is_indexed & (side == int(moved)))
        if len(rows) == 0:
            continue
        a = c["a"][rows]
        j = int(moved) - 1
        count = a[:, 6] >> INDEX_ADDR_BITS
        span = np.where(a[:, 2] > 0, (a[:, 2] - 1) * a[:, stride_slot] + a[:, 3], 0)
        # in float64: (count - 1) * step may not fit int64, and past 2^53 it is out of range anyway
        hi = a[:, j] + (count - 1).astype(np.float64) * a[:, 7] + span
        space = c[space_field][rows].astype(np.int64)
        for s, limit in sizes.items():
            over = (space == s) & (hi > limit)
            if over.any():
                k = int(np.flatnonzero(over)[0])
                full = np.zeros(len(c), bool)
                full[rows[over]] = True
                why = (f"indexed dma {name}: positions 0..{int(count[k]) - 1} of {int(a[k, 7])} bytes from "
                       f"{int(a[k, j]):#x} reach {int(hi[k]):#x}, past the end of {names[s]} ({limit} bytes)")
                _fail(LocalMemoryOverflow if s == Space.LOCAL else AddressOutOfRange, prog, full, why)
