"""Per-PE command streams and the builder a compiler (or a test) uses to write them."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from simulator.isa.encoding import CMD_DTYPE, FLAG_ACCUMULATE, INDEXED_SHIFT, NUM_ARGS, format_command, pack_index
from simulator.isa.opcodes import ENGINE_OF_OP, DType, Dir, Engine, Indexed, Mcast, Op, SimdFn, Space



def _space(s: "str | Space") -> Space:
    if type(s) is Space:
        return s
    found = _SPACE_BY_NAME.get(s)
    return found if found is not None else Space[s.upper()]


_SPACE_BY_NAME = {m.name.lower(): m for m in Space}
#: zero operands that pad a command's argument list of n operands to NUM_ARGS
_PAD = [[0] * (NUM_ARGS - n) for n in range(NUM_ARGS + 1)]
_ENGINE_NUMBER = {op: int(engine) for op, engine in ENGINE_OF_OP.items()}


LOOP_DTYPE = np.dtype([("first", "<i8"), ("length", "<i8"), ("count", "<i8")])
NUM_STRIDES = NUM_ARGS + 1          # operand slots a[0..7], then wait_cnt


class ChipProgram:
    """Command streams of every PE of a chip, stored as one structured array.

    ``commands`` holds every command (field ``pe`` says whose); within one PE, array order is
    program order. Each PE's engines are in-order queues; commands on different engines of a
    PE, or on different PEs, are ordered only by sync tokens.

    Compact loops: ``loops`` (LOOP_DTYPE) says that records ``first .. first+length-1`` run
    ``count`` times; iteration i adds ``i * strides[j]`` to record j's operands and wait count
    (``strides`` is int64 [n, 9], parallel to ``commands``). ``expand()`` unrolls them
    (vectorized); ``simulate`` does so before running. Loops do not nest yet.
    """

    def __init__(self, commands: np.ndarray, num_pes: int, name: str = "program",
                 loops: np.ndarray | None = None, strides: np.ndarray | None = None,
                 vector_kernels: Sequence = ()):
        if commands.dtype != CMD_DTYPE:
            raise TypeError(f"commands must have dtype CMD_DTYPE, got {commands.dtype}")
        self.commands = np.ascontiguousarray(commands)
        self.num_pes = num_pes
        self.name = name
        self.loops = np.zeros(0, LOOP_DTYPE) if loops is None else np.asarray(loops, LOOP_DTYPE)
        #: the vector-core kernels (simulator/isa/vector.py VectorKernel) VEC_KERNEL commands
        #: run, by their a[0]
        self.vector_kernels = tuple(vector_kernels)
        self.strides = (np.zeros((len(commands), NUM_STRIDES), np.int64) if strides is None
                        else np.asarray(strides, np.int64))
        #: int16 [n, 2] or None: which operand's relocation delta moves a[0] / a[1] of each
        #: record (-1: none); set by a compiler that relocates this kernel (RelocatedProgram)
        self.addr_slots = None
        if self.strides.shape != (len(commands), NUM_STRIDES):
            raise ValueError("strides must be int64 [len(commands), 9]")
        ends = self.loops["first"] + self.loops["length"]
        order = np.argsort(self.loops["first"])
        if len(self.loops) and ((self.loops["first"] < 0).any() or (ends > len(commands)).any()
                                or (self.loops["count"] < 1).any()
                                or (self.loops["first"][order][1:] < ends[order][:-1]).any()):
            raise ValueError("loops must be disjoint ranges of commands with count >= 1")

    def __len__(self) -> int:
        """Stored records (loop bodies once); see ``num_commands`` for the unrolled count."""
        return len(self.commands)

    @property
    def num_commands(self) -> int:
        """Commands after unrolling the loops."""
        return len(self.commands) + int(np.sum(self.loops["length"] * (self.loops["count"] - 1)))

    def expand(self) -> "ChipProgram":
        """The same program with every loop unrolled into plain commands."""
        if len(self.loops) == 0:
            return self
        # blocks of stored records run `count` times (the loops; the records between them once),
        # then which record and which iteration of its block each unrolled command is
        loops = np.sort(self.loops, order="first")
        first, length, count = (loops[f].astype(np.int64) for f in ("first", "length", "count"))
        gap_start = np.concatenate([[0], first + length])
        gap_len = np.concatenate([first, [len(self.commands)]]) - gap_start
        start = np.stack([gap_start[:-1], first], 1).reshape(-1)
        size = np.stack([gap_len[:-1], length], 1).reshape(-1)
        times = np.stack([np.ones_like(count), count], 1).reshape(-1)
        start, size, times = (np.append(a, b) for a, b in ((start, gap_start[-1]), (size, gap_len[-1]), (times, 1)))
        keep = size > 0
        start, size, times = start[keep], size[keep], times[keep]
        block = np.repeat(np.arange(len(start)), size * times)
        offset = np.arange(len(block), dtype=np.int64) - np.repeat(np.cumsum(size * times) - size * times, size * times)
        it = offset // size[block]
        src = start[block] + offset % size[block]
        out = self.commands[src]
        st = self.strides[src]
        out["a"] += it[:, None] * st[:, :NUM_ARGS]
        out["wait_cnt"] += (it * st[:, NUM_ARGS]).astype(np.int32)
        return ChipProgram(out, self.num_pes, self.name, vector_kernels=self.vector_kernels)

    def for_pe(self, pe: int) -> np.ndarray:
        """The command stream of one PE (a view in program order)."""
        return self.commands[self.commands["pe"] == pe]

    def dump(self, limit: int | None = None) -> str:
        """Readable text, one command per line, grouped by PE; loops as ``loop xN {...}``."""
        lines = [f"# {self.name}: {len(self)} records, {self.num_commands} commands on "
                 f"{self.num_pes} PEs"]
        lines += [f"# vector kernel k{k}: {vk.name}" for k, vk in enumerate(self.vector_kernels)]
        starts = {int(f): (int(n), int(c)) for f, n, c in self.loops.tolist()}
        ends: dict[int, int] = {}
        order = np.argsort(self.commands["pe"], kind="stable")
        for i in order[:limit].tolist():
            if i in starts:
                length, count = starts[i]
                lines.append(f"loop x{count} {{")
                ends[i + length - 1] = 1
            text = format_command(self.commands[i], i)
            st = self.strides[i]
            if st.any():
                text += "  (+" + ", ".join(
                    f"{'a' + str(k) if k < NUM_ARGS else 'wait'}:{int(v)}"
                    for k, v in enumerate(st.tolist()) if v) + " per iteration)"
            lines.append(("  " if any(f <= i < f + n for f, (n, _) in starts.items()) else "") + text)
            if i in ends:
                lines.append("}")
        if limit is not None and len(order) > limit:
            lines.append(f"... {len(order) - limit} more")
        return "\n".join(lines)

    def asm(self) -> str:
        """The RVV assembly of each vector-core kernel the program calls (what `vec k` runs)."""
        return "\n".join(f"# vector kernel {k}: {vk.name}\n{vk.rvv_asm()}" for k, vk in enumerate(self.vector_kernels))

    def save(self, path: str) -> None:
        import json
        np.savez_compressed(path, commands=self.commands, num_pes=self.num_pes, name=self.name,
                            loops=self.loops, strides=self.strides,
                            vector_kernels=json.dumps([k.to_json() for k in self.vector_kernels]))

    @classmethod
    def load(cls, path: str) -> "ChipProgram":
        import json
        from simulator.isa.vector import VectorKernel
        z = np.load(path)
        kernels = [VectorKernel.from_json(k) for k in json.loads(str(z["vector_kernels"]))] \
            if "vector_kernels" in z else []
        return cls(z["commands"], int(z["num_pes"]), str(z["name"]), z["loops"], z["strides"], kernels)


class RelocatedProgram(ChipProgram):
    """Another kernel's commands with its DRAM/SRAM addresses moved: what the same kernel
    template emits for operands placed elsewhere (every layer of a transformer).

    ``base.addr_slots`` (int16 [n, 2]) names, for the two address operands a[0] and a[1] of
    each record, which entry of ``deltas`` (one per operand of the kernel call) moves it, or
    -1 for an address that stays (local memory, or a command that is not a DMA). Loop strides
    are the base's: a translated address keeps its per-iteration step. The commands are made
    on demand (``commands``), so a model's many relocated kernels cost one delta vector each.
    """

    def __init__(self, base: ChipProgram, deltas, name: str | None = None):
        if base.addr_slots is None:
            raise ValueError("the base program has no address slots to relocate")
        if isinstance(base, RelocatedProgram):
            raise ValueError("relocate the base program, not a relocated copy")
        self.base = base
        self.deltas = np.asarray(deltas, np.int64)
        if len(self.base.addr_slots) and int(self.base.addr_slots.max(initial=-1)) >= len(self.deltas):
            raise ValueError("an address slot refers past the relocation deltas")
        self.num_pes = base.num_pes
        self.name = base.name if name is None else name
        self.loops = base.loops
        self.strides = base.strides
        self.vector_kernels = base.vector_kernels
        self.addr_slots = None

    @property
    def commands(self) -> np.ndarray:
        cmds = self.base.commands.copy()
        slots = self.base.addr_slots
        for j in (0, 1):
            rows = np.flatnonzero(slots[:, j] >= 0)
            if len(rows):
                cmds["a"][rows, j] += self.deltas[slots[rows, j]]
        return cmds

    def __len__(self) -> int:
        return len(self.base)

    def expand(self) -> ChipProgram:
        """Plain commands, loops unrolled (materialized once, not per access)."""
        return ChipProgram(self.commands, self.num_pes, self.name, self.loops, self.strides,
                           self.vector_kernels).expand()


class Strided(int):
    """An operand (address, size or wait count) that grows by ``stride`` every loop iteration."""

    def __new__(cls, base: int, stride: int):
        obj = super().__new__(cls, base)
        obj.stride = int(stride)
        return obj


class _Loop:
    """Handle of an open ``PEStream.repeat`` block."""

    def __init__(self, count: int):
        self.count = count

    @staticmethod
    def step(base: int, stride: int) -> Strided:
        """``base`` in iteration 0, ``base + i * stride`` in iteration i."""
        return Strided(base, stride)


@dataclass
class PEStream:
    """Builder for one PE's command stream. Every method appends one command and returns its
    index in the stream. ``wait=(token, count)`` delays the command until ``token`` has been
    signalled ``count`` times in total; ``signal=token`` signals it when the command completes.
    """
    pe: int
    rows: int
    cols: int
    _records: list = field(default_factory=list)
    _strides: dict = field(default_factory=dict)      # record index -> its strides (strided ones only)
    _loops: list = field(default_factory=list)
    _open_loop: "int | None" = None
    #: the program's vector-kernel table (shared by the PEs of one ProgramBuilder)
    vector_kernels: list = field(default_factory=list)

    def _emit(self, op: Op, args: Sequence[int] = (), *, engine: Engine | None = None,
              dtype: DType = DType.FP32, dtype2: DType | None = None, fn: int = 0,
              src_space: Space = Space.LOCAL, dst_space: Space = Space.LOCAL, flags: int = 0,
              peer: int = -1, wait: "tuple[int, int] | None" = None,
              signal: int | None = None) -> int:
        a = list(map(int, args))
        n = len(a)
        if n < NUM_ARGS:
            a += _PAD[n]
        wt, wc = (int(wait[0]), int(wait[1])) if wait is not None else (-1, 0)
        if Strided in map(type, args) or (wait is not None and type(wait[1]) is Strided):
            st = [getattr(x, "stride", 0) for x in args] + _PAD[n]
            st.append(getattr(wait[1], "stride", 0) if wait is not None else 0)
            if any(st):
                if self._open_loop is None:
                    raise ValueError("strided operands need an enclosing PEStream.repeat block")
                self._strides[len(self._records)] = st
        eng = _ENGINE_NUMBER[op] if engine is None else int(engine)
        dt = int(DType.of(dtype))
        self._records.append((a, wt, wc, -1 if signal is None else int(signal), peer, self.pe,
                              int(op), eng, dt, dt if dtype2 is None else int(DType.of(dtype2)),
                              int(fn), int(src_space), int(dst_space), flags))
        return len(self._records) - 1

    def pe_index(self, row: int, col: int) -> int:
        return row * self.cols + col

    @contextmanager
    def repeat(self, count: int):
        """Commands emitted inside run ``count`` times, stored once (a compact loop).
        Use ``loop.step(base, stride)`` for operands and wait counts that change per
        iteration; each signal still counts once per iteration.

            with pe.repeat(16) as loop:
                pe.dma("dram", loop.step(0, 4096), "local", 0, nbytes=4096, signal=t)
                pe.simd_unary("exp", 0, 0x1000, 1024, wait=(t, loop.step(1, 1)))
        """
        if self._open_loop is not None:
            raise ValueError("nested repeat blocks are not supported yet")
        if count < 1:
            raise ValueError("repeat count must be >= 1")
        self._open_loop = len(self._records)
        try:
            yield _Loop(count)
        finally:
            first, self._open_loop = self._open_loop, None
        if len(self._records) > first:
            self._loops.append((first, len(self._records) - first, count))

    # --- sync -----------------------------------------------------------------------------
    def nop(self, engine: Engine, *, wait=None, signal=None) -> int:
        """Sync point on one engine's queue: wait for a token and/or signal one."""
        return self._emit(Op.NOP, engine=engine, wait=wait, signal=signal)

    # --- DMA ------------------------------------------------------------------------------
    def dma(self, src: "str | Space", src_addr: int, dst: "str | Space", dst_addr: int,
            nbytes: int | None = None, *, rows: int = 1, row_bytes: int | None = None,
            src_stride: int | None = None, dst_stride: int | None = None, dst_pe: int = -1,
            mcast: Mcast | str = Mcast.NONE, wait=None, signal=None) -> int:
        """Copy ``rows`` rows of ``row_bytes`` bytes (strided) between "host", "dram", "sram"
        and "local" memory.

        Local memory means this PE's, except the destination when ``dst_pe`` is given. With
        ``mcast="row"``/``"col"`` the data lands at ``dst_addr`` in every PE of the
        destination PE's row/column, crossing each NoC link once (hardware broadcast).
        """
        return self._dma(src, src_addr, dst, dst_addr, nbytes, rows, row_bytes, src_stride, dst_stride,
                         dst_pe, mcast, wait, signal)

    def dma_indexed(self, moves: "Indexed | str", src: "str | Space", src_addr: int, dst: "str | Space",
                    dst_addr: int, *, index_addr: int, count: int, step: int, nbytes: int | None = None,
                    rows: int = 1, row_bytes: int | None = None, src_stride: int | None = None,
                    dst_stride: int | None = None, dst_pe: int = -1, mcast: Mcast | str = Mcast.NONE,
                    wait=None, signal=None) -> int:
        """A DMA (as `dma`) whose source (``moves="src"``: a gather) or destination
        (``moves="dst"``: a scatter) address is moved by ``i * step`` bytes, where ``i`` is the
        int32 at ``index_addr`` in this PE's local memory when the command issues (so the
        command must wait for whatever writes it). ``i`` must lie in ``[0, count)``: ``count``
        is the number of positions of the tensor the moved address points into, and the
        simulator stops the run on an index outside it. ``index_addr`` may be a loop step.
        """
        side = moves if isinstance(moves, Indexed) else Indexed[moves.upper()]
        if side is Indexed.NONE:
            raise ValueError("an indexed DMA moves its 'src' or its 'dst' address")
        packed = pack_index(int(index_addr), count)
        stride = getattr(index_addr, "stride", 0)
        return self._dma(src, src_addr, dst, dst_addr, nbytes, rows, row_bytes, src_stride, dst_stride,
                         dst_pe, mcast, wait, signal, side=side,
                         index=Strided(packed, stride) if stride else packed, step=step)

    def _dma(self, src, src_addr, dst, dst_addr, nbytes, rows, row_bytes, src_stride, dst_stride, dst_pe,
             mcast, wait, signal, side: Indexed = Indexed.NONE, index: int = 0, step: int = 0) -> int:
        if row_bytes is None:
            if nbytes is None:
                raise ValueError("give nbytes or row_bytes")
            row_bytes, rows = nbytes, 1
        mc = mcast if isinstance(mcast, Mcast) else Mcast[mcast.upper()]
        args = [src_addr, dst_addr, rows, row_bytes, row_bytes if src_stride is None else src_stride,
                row_bytes if dst_stride is None else dst_stride]
        if side is not Indexed.NONE:
            args += [index, step]
        return self._emit(Op.DMA, args, src_space=_space(src), dst_space=_space(dst),
                          flags=int(mc) << 1 | int(side) << INDEXED_SHIFT, peer=dst_pe,
                          dtype=DType.INT32 if side is not Indexed.NONE else DType.FP32, wait=wait, signal=signal)

    # --- DPE ------------------------------------------------------------------------------
    def dpe_matmul(self, a_addr: int, b_addr: int, c_addr: int, m: int, k: int, n: int, *,
                   dtype="bf16", accumulate: bool = False, wait=None, signal=None) -> int:
        """C[M,N] (+)= A[M,K] @ B[K,N], row-major in local memory. C is fp32 (int32 for int8).

        In an MX dtype ("mxfp8", "mxfp4"; K a multiple of 32) both operands are rows of K values
        in that block format (simulator/isa/mx.py): A is M rows, B is N rows (C = A @ B^T), and the
        DPE applies each pair of blocks' scales to their 32 products."""
        return self._emit(Op.DPE_MATMUL, [a_addr, b_addr, c_addr, m, k, n], dtype=DType.of(dtype),
                          flags=FLAG_ACCUMULATE if accumulate else 0, wait=wait, signal=signal)

    # --- reduction engine -----------------------------------------------------------------
    def re_acc(self, dst_addr: int, src_addr: int, n: int, *, dtype="fp32", wait=None,
               signal=None) -> int:
        """dst[0:n] += src[0:n] (fp32 or int32)."""
        return self._emit(Op.RE_ACC, [dst_addr, src_addr, n], dtype=DType.of(dtype), wait=wait,
                          signal=signal)

    def re_send(self, direction: "Dir | str", src_addr: int, dst_addr: int, n: int, *,
                dtype="fp32", accumulate: bool = True, wait=None, signal=None) -> int:
        """Forward n partial sums to the neighbour PE in ``direction`` (dst += src there)."""
        d = direction if isinstance(direction, Dir) else Dir[direction.upper()]
        return self._emit(Op.RE_SEND, [src_addr, dst_addr, n], dtype=DType.of(dtype), peer=int(d),
                          flags=FLAG_ACCUMULATE if accumulate else 0, wait=wait, signal=signal)

    # --- SIMD -----------------------------------------------------------------------------
    def simd_unary(self, fn: "SimdFn | str", src: int, dst: int, n: int, *, dtype="fp32",
                   out_dtype=None, wait=None, signal=None) -> int:
        """dst = fn(src) computed in fp32, stored as out_dtype (rounding / saturating)."""
        return self._emit(Op.SIMD_UNARY, [src, dst, n], fn=_fn(fn), dtype=DType.of(dtype),
                          dtype2=out_dtype, wait=wait, signal=signal)

    def simd_binary(self, fn: "SimdFn | str", a: int, b: int, dst: int, n: int, *, dtype="fp32",
                    out_dtype=None, wait=None, signal=None) -> int:
        """dst = fn(a, b) elementwise."""
        return self._emit(Op.SIMD_BINARY, [a, b, dst, n], fn=_fn(fn), dtype=DType.of(dtype),
                          dtype2=out_dtype, wait=wait, signal=signal)

    def simd_scalar(self, fn: "SimdFn | str", src: int, dst: int, n: int, imm: float, *,
                    dtype="fp32", out_dtype=None, wait=None, signal=None) -> int:
        """dst = fn(src, imm) elementwise (imm is an fp32 immediate; MUL by a scale quantizes)."""
        bits = int(np.array([imm], np.float64).view(np.int64)[0])
        return self._emit(Op.SIMD_SCALAR, [src, dst, n, bits], fn=_fn(fn), dtype=DType.of(dtype),
                          dtype2=out_dtype, wait=wait, signal=signal)

    def simd_row_reduce(self, fn: "SimdFn | str", src: int, dst: int, rows: int, cols: int, *,
                        dtype="fp32", out_dtype=None, wait=None, signal=None) -> int:
        """dst[r] = reduce over src[r, :] with fn ADD (sum), MAX or MIN."""
        return self._emit(Op.SIMD_ROW_REDUCE, [src, dst, rows, cols], fn=_fn(fn),
                          dtype=DType.of(dtype), dtype2=out_dtype, wait=wait, signal=signal)

    def simd_row_bcast(self, fn: "SimdFn | str", src: int, vec: int, dst: int, rows: int,
                       cols: int, *, dtype="fp32", out_dtype=None, wait=None, signal=None) -> int:
        """dst[r, c] = fn(src[r, c], vec[r]); vec has the dtype of src."""
        return self._emit(Op.SIMD_ROW_BCAST, [src, vec, dst, rows, cols], fn=_fn(fn),
                          dtype=DType.of(dtype), dtype2=out_dtype, wait=wait, signal=signal)

    def simd_mx_quant(self, src: int, dst: int, rows: int, cols: int, *, dtype="fp32", out_dtype="mxfp8",
                      wait=None, signal=None) -> int:
        """dst = the rows [rows, cols] of src (fp32 or bf16) in an MX block format ("mxfp8" or
        "mxfp4"; cols a multiple of 32): per 32-element block, the largest magnitude gives the
        shared e8m0 scale, and every element is scaled, rounded and saturated."""
        return self._emit(Op.SIMD_MX_QUANT, [src, dst, rows, cols], dtype=DType.of(dtype),
                          dtype2=DType.of(out_dtype), wait=wait, signal=signal)

    # --- MLU ------------------------------------------------------------------------------
    def mlu_transpose(self, src: int, dst: int, rows: int, cols: int, *, dtype="fp32",
                      wait=None, signal=None) -> int:
        """dst[cols, rows] = src[rows, cols].T"""
        return self._emit(Op.MLU_TRANSPOSE, [src, dst, rows, cols], dtype=DType.of(dtype),
                          wait=wait, signal=signal)

    def mlu_copy2d(self, src: int, dst: int, rows: int, row_bytes: int, *,
                   src_stride: int | None = None, dst_stride: int | None = None, wait=None,
                   signal=None) -> int:
        """Strided 2D copy inside local memory (slice, reshape)."""
        return self._emit(Op.MLU_COPY2D, [src, dst, rows, row_bytes,
                                          row_bytes if src_stride is None else src_stride,
                                          row_bytes if dst_stride is None else dst_stride],
                          wait=wait, signal=signal)

    def mlu_concat(self, a: int, b: int, dst: int, rows: int, a_row_bytes: int,
                   b_row_bytes: int, *, wait=None, signal=None) -> int:
        """dst = [a | b] along rows (row r of dst = row r of a, then row r of b)."""
        return self._emit(Op.MLU_CONCAT, [a, b, dst, rows, a_row_bytes, b_row_bytes],
                          wait=wait, signal=signal)


    # --- vector core ----------------------------------------------------------------------
    def vec_kernel(self, kernel, regions: Sequence[int], rows: int, param: int = 0, *, wait=None,
                   signal=None) -> int:
        """Run a vector-core kernel (simulator/isa/vector.py VectorKernel) on ``rows`` rows:
        ``regions`` are the local-memory addresses of its regions, in its order; ``param`` is
        the kernel's integer parameter. The simulator times it from its RVV code."""
        if len(regions) != len(kernel.regions):
            raise ValueError(f"vector kernel {kernel.name} takes {len(kernel.regions)} regions, got {len(regions)}")
        if kernel not in self.vector_kernels:
            self.vector_kernels.append(kernel)
        index = self.vector_kernels.index(kernel)
        args = [index, *regions, *([0] * (3 - len(regions))), rows, param, 0, 0]
        return self._emit(Op.VEC_KERNEL, args, dtype=DType.INT32, wait=wait, signal=signal)


def _fn(fn: "SimdFn | str") -> int:
    return int(fn if isinstance(fn, SimdFn) else SimdFn[fn.upper()])


class ProgramBuilder:
    """Builds a ChipProgram for a chip: ``b.pe(row, col).dma(...)``, tokens, barriers."""

    def __init__(self, chip, name: str = "program"):
        from simulator.spec import load_chip  # spec is the hardware contract; cheap import
        self.chip = load_chip(chip)
        self.rows, self.cols = self.chip.pe_grid.rows, self.chip.pe_grid.cols
        self.name = name
        self._vector_kernels: list = []
        self._streams = [PEStream(i, self.rows, self.cols, vector_kernels=self._vector_kernels)
                         for i in range(self.rows * self.cols)]
        self._next_token = 0

    def pe(self, row: int, col: int | None = None) -> PEStream:
        """The stream of PE (row, col), or of PE number ``row`` when col is None."""
        idx = row if col is None else row * self.cols + col
        if not 0 <= idx < len(self._streams):
            raise IndexError(f"PE {row, col} outside the {self.rows}x{self.cols} grid")
        return self._streams[idx]

    def token(self) -> int:
        """A fresh sync token (a chip-wide counter, starting at 0)."""
        self._next_token += 1
        return self._next_token - 1

    def barrier(self, pes: Iterable[int] | None = None, engine: Engine = Engine.DMA) -> None:
        """Every listed PE (default all) waits on ``engine`` until all have reached this point."""
        pes = list(range(len(self._streams))) if pes is None else list(pes)
        tok = self.token()
        for p in pes:
            self._streams[p].nop(engine, signal=tok)
        for p in pes:
            self._streams[p].nop(engine, wait=(tok, len(pes)))

    def build(self) -> ChipProgram:
        recs, strided, loops = [], {}, []
        for s in self._streams:
            loops += [(len(recs) + f, n, c) for f, n, c in s._loops]
            strided.update((len(recs) + i, st) for i, st in s._strides.items())
            recs += s._records
        arr = np.array(recs, dtype=CMD_DTYPE) if recs else np.zeros(0, CMD_DTYPE)
        st = np.zeros((len(recs), NUM_STRIDES), np.int64)
        if strided:
            rows = np.fromiter(strided, np.int64, len(strided))
            st[rows] = np.array(list(strided.values()), np.int64)
        return ChipProgram(arr, len(self._streams), self.name, np.array(loops, LOOP_DTYPE), st,
                           self._vector_kernels)
