"""Compact command encoding: one numpy structured record of 88 bytes per command.

The layout is mirrored by `struct Cmd` in simulator/csrc/cmd.h; both are naturally aligned
with no padding, so the C++ engine reads a program's array in place.

Operand slots ``a[0..7]`` (int64) by opcode:

=================  ===================================================================
DMA                src_addr, dst_addr, rows, row_bytes, src_stride, dst_stride,
                   index (indexed DMAs: local address | count << 32), index step (bytes)
DPE_MATMUL         a_addr, b_addr, c_addr, M, K, N          (flags bit0: accumulate)
RE_ACC             dst_addr, src_addr, n
RE_SEND            src_addr, dst_addr, n    (peer = Dir; flags bit0: accumulate)
SIMD_UNARY         src, dst, n
SIMD_BINARY        a, b, dst, n
SIMD_SCALAR        src, dst, n, float64 bits of the immediate
SIMD_ROW_REDUCE    src, dst, rows, cols
SIMD_ROW_BCAST     src, vec, dst, rows, cols
MLU_TRANSPOSE      src, dst, rows, cols
MLU_COPY2D         src, dst, rows, row_bytes, src_stride, dst_stride
MLU_CONCAT         a, b, dst, rows, a_row_bytes, b_row_bytes
SIMD_MX_QUANT      src, dst, rows, cols          (dtype2: the MX format written)
VEC_KERNEL         kernel (index into the program's vector_kernels), region0, region1,
                   region2 (local addresses; 0 when unused), rows, param, 0,
                   cycles (set by the simulator from the kernel's RVV code when it times it)
=================  ===================================================================

DMA flags: bits 1-2 the multicast mode (Mcast), bits 3-4 which address an index moves
(Indexed). An indexed DMA (a gather when the index moves the source, a scatter when it moves
the destination) reads one int32 ``i`` from the issuing PE's local memory at the low 32 bits of
a[6] when it issues, and moves that address by ``i * a[7]`` bytes. ``i`` must lie in
``[0, count)`` (count: the high 31 bits of a[6], the number of positions of the tensor the
address points into); the simulator stops the run otherwise. ``dtype`` is the index's type
(INT32). Timing does not depend on ``i``: the transfer is charged at the unmoved address, plus
the index's 4 bytes on the PE's local-memory port.

``peer`` is the destination PE of a DMA into local memory (-1: the issuing PE) or the
direction of a RE_SEND. ``wait_tok``/``wait_cnt``: the command issues once token
``wait_tok`` has been signalled at least ``wait_cnt`` times (-1: no wait). ``sig_tok``: the
token signalled when the command completes (-1: none).
"""
from __future__ import annotations

import numpy as np

from simulator.isa.opcodes import DType, Dir, Engine, Indexed, Mcast, Op, SimdFn, Space

NUM_ARGS = 8
CMD_DTYPE = np.dtype([
    ("a", "<i8", (NUM_ARGS,)),
    ("wait_tok", "<i4"), ("wait_cnt", "<i4"), ("sig_tok", "<i4"),
    ("peer", "<i2"), ("pe", "<i2"),
    ("op", "u1"), ("engine", "u1"), ("dtype", "u1"), ("dtype2", "u1"),
    ("fn", "u1"), ("src_space", "u1"), ("dst_space", "u1"), ("flags", "u1"),
])
assert CMD_DTYPE.itemsize == 88

FLAG_ACCUMULATE = 1
INDEXED_SHIFT = 3           # flags bits 3-4: Indexed
INDEX_ADDR_BITS = 32        # a[6] of an indexed DMA: local address | count << 32
INDEX_ADDR_MASK = (1 << INDEX_ADDR_BITS) - 1
INDEX_MAX_COUNT = (1 << 31) - 1


def indexed_of(flags: int) -> Indexed:
    """Which address of a DMA an index moves, from its flags."""
    return Indexed((int(flags) >> INDEXED_SHIFT) & 3)


def pack_index(addr: int, count: int) -> int:
    """a[6] of an indexed DMA: the index's local address and the number of valid positions."""
    if not 0 <= addr <= INDEX_ADDR_MASK:
        raise ValueError(f"index address {addr:#x} does not fit {INDEX_ADDR_BITS} bits")
    if not 1 <= count <= INDEX_MAX_COUNT:
        raise ValueError(f"index count {count} is outside 1..{INDEX_MAX_COUNT}")
    return int(addr) | int(count) << INDEX_ADDR_BITS


def unpack_index(a6: int) -> tuple[int, int]:
    """(local address, count) of an indexed DMA's a[6]."""
    return int(a6) & INDEX_ADDR_MASK, int(a6) >> INDEX_ADDR_BITS


def _space(s: int) -> str:
    return Space(s).name.lower()


def format_command(c: np.void, index: int | None = None) -> str:
    """One command as readable text (what `ChipProgram.dump()` prints per line)."""
    op = Op(int(c["op"]))
    a = [int(x) for x in c["a"]]
    head = f"pe{int(c['pe'])} " + (f"#{index} " if index is not None else "")
    eng = Engine(int(c["engine"])).name.lower()
    dt = DType(int(c["dtype"])).name.lower()
    dt2 = DType(int(c["dtype2"])).name.lower()
    fn = SimdFn(int(c["fn"])).name.lower() if op.name.startswith("SIMD") else ""
    if op is Op.NOP:
        body = f"{eng}.nop"
    elif op is Op.DMA:
        peer = int(c["peer"])
        dst_pe = f"@pe{peer}" if peer >= 0 else ""
        mc = Mcast(int(c["flags"]) >> 1 & 3)
        moved = {Indexed.SRC: 0, Indexed.DST: 1}.get(int(c["flags"]) >> INDEXED_SHIFT & 3)  # a[0] or a[1]
        addrs = [f"{x:#x}" + (f" + {a[7]}*i" if k == moved else "") for k, x in enumerate(a[:2])]
        body = (f"dma{('.gather', '.scatter')[moved] if moved is not None else ''} "
                f"{_space(c['src_space'])}[{addrs[0]}] -> {_space(c['dst_space'])}{dst_pe}"
                f"[{addrs[1]}] {a[2]}x{a[3]}B stride {a[4]}/{a[5]}"
                + (f" mcast={mc.name.lower()}" if mc else ""))
        if moved is not None:
            at, count = unpack_index(a[6])
            body += f" i={dt}@local[{at:#x}] in [0, {count})"
    elif op is Op.DPE_MATMUL:
        acc = "+=" if int(c["flags"]) & FLAG_ACCUMULATE else "="
        body = f"dpe.matmul.{dt} [{a[2]:#x}] {acc} [{a[0]:#x}] @ [{a[1]:#x}] M={a[3]} K={a[4]} N={a[5]}"
    elif op is Op.RE_ACC:
        body = f"re.acc.{dt} [{a[0]:#x}] += [{a[1]:#x}] n={a[2]}"
    elif op is Op.RE_SEND:
        acc = "+=" if int(c["flags"]) & FLAG_ACCUMULATE else "="
        body = f"re.send.{dt} {Dir(int(c['peer'])).name}[{a[1]:#x}] {acc} [{a[0]:#x}] n={a[2]}"
    elif op is Op.SIMD_UNARY:
        body = f"simd.{fn}.{dt}->{dt2} [{a[1]:#x}] = [{a[0]:#x}] n={a[2]}"
    elif op is Op.SIMD_BINARY:
        body = f"simd.{fn}.{dt}->{dt2} [{a[2]:#x}] = [{a[0]:#x}], [{a[1]:#x}] n={a[3]}"
    elif op is Op.SIMD_SCALAR:
        imm = np.array([a[3]], np.int64).view(np.float64)[0]
        body = f"simd.{fn}.{dt}->{dt2} [{a[1]:#x}] = [{a[0]:#x}], {imm:g} n={a[2]}"
    elif op is Op.SIMD_ROW_REDUCE:
        body = f"simd.row_{fn}.{dt}->{dt2} [{a[1]:#x}] = [{a[0]:#x}] {a[2]}x{a[3]}"
    elif op is Op.SIMD_ROW_BCAST:
        body = f"simd.row_bcast_{fn}.{dt}->{dt2} [{a[2]:#x}] = [{a[0]:#x}], rows[{a[1]:#x}] {a[3]}x{a[4]}"
    elif op is Op.MLU_TRANSPOSE:
        body = f"mlu.transpose.{dt} [{a[1]:#x}] = [{a[0]:#x}].T {a[2]}x{a[3]}"
    elif op is Op.MLU_COPY2D:
        body = f"mlu.copy2d [{a[0]:#x}] -> [{a[1]:#x}] {a[2]}x{a[3]}B stride {a[4]}/{a[5]}"
    elif op is Op.MLU_CONCAT:
        body = f"mlu.concat [{a[2]:#x}] = [{a[0]:#x}] | [{a[1]:#x}] rows={a[3]} {a[4]}B+{a[5]}B"
    elif op is Op.SIMD_MX_QUANT:
        body = f"simd.mx_quant.{dt}->{dt2} [{a[1]:#x}] = [{a[0]:#x}] {a[2]}x{a[3]}"
    elif op is Op.VEC_KERNEL:
        body = f"vec.call k{a[0]} [{a[1]:#x}], [{a[2]:#x}], [{a[3]:#x}] rows={a[4]} param={a[5]}"
    else:  # pragma: no cover - every opcode is listed above
        body = op.name
    sync = ""
    if int(c["wait_tok"]) >= 0:
        sync += f" wait t{int(c['wait_tok'])}>={int(c['wait_cnt'])}"
    if int(c["sig_tok"]) >= 0:
        sync += f" signal t{int(c['sig_tok'])}"
    return head + body + sync
