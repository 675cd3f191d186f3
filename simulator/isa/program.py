"""Per-PE command streams and the builder a compiler (or a test) uses to write them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from simulator.isa.encoding import CMD_DTYPE, FLAG_ACCUMULATE, NUM_ARGS, format_command
from simulator.isa.opcodes import ENGINE_OF_OP, DType, Dir, Engine, Mcast, Op, SimdFn, Space

Sync = "tuple[int, int] | None"


def _space(s: "str | Space") -> Space:
    return s if isinstance(s, Space) else Space[s.upper()]


class ChipProgram:
    """Command streams of every PE of a chip, stored as one structured array.

    ``commands`` holds every command (field ``pe`` says whose); within one PE, array order is
    program order. Each PE's engines are in-order queues; commands on different engines of a
    PE, or on different PEs, are ordered only by sync tokens.
    """

    def __init__(self, commands: np.ndarray, num_pes: int, name: str = "program"):
        if commands.dtype != CMD_DTYPE:
            raise TypeError(f"commands must have dtype CMD_DTYPE, got {commands.dtype}")
        self.commands = np.ascontiguousarray(commands)
        self.num_pes = num_pes
        self.name = name

    def __len__(self) -> int:
        return len(self.commands)

    def for_pe(self, pe: int) -> np.ndarray:
        """The command stream of one PE (a view in program order)."""
        return self.commands[self.commands["pe"] == pe]

    def dump(self, limit: int | None = None) -> str:
        """Readable text, one command per line, grouped by PE."""
        lines = [f"# {self.name}: {len(self)} commands on {self.num_pes} PEs"]
        order = np.argsort(self.commands["pe"], kind="stable")
        for n, i in enumerate(order[:limit]):
            lines.append(format_command(self.commands[i], int(i)))
        if limit is not None and len(order) > limit:
            lines.append(f"... {len(order) - limit} more")
        return "\n".join(lines)

    def save(self, path: str) -> None:
        np.savez_compressed(path, commands=self.commands, num_pes=self.num_pes, name=self.name)

    @classmethod
    def load(cls, path: str) -> "ChipProgram":
        z = np.load(path)
        return cls(z["commands"], int(z["num_pes"]), str(z["name"]))


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

    def _emit(self, op: Op, args: Sequence[int] = (), *, engine: Engine | None = None,
              dtype: DType = DType.FP32, dtype2: DType | None = None, fn: int = 0,
              src_space: Space = Space.LOCAL, dst_space: Space = Space.LOCAL, flags: int = 0,
              peer: int = -1, wait: "tuple[int, int] | None" = None,
              signal: int | None = None) -> int:
        a = [int(x) for x in args] + [0] * (NUM_ARGS - len(args))
        wt, wc = (int(wait[0]), int(wait[1])) if wait is not None else (-1, 0)
        eng = ENGINE_OF_OP[op] if engine is None else engine
        dtype = DType.of(dtype)
        self._records.append((a, wt, wc, -1 if signal is None else int(signal), peer, self.pe,
                              int(op), int(eng), int(dtype), int(dtype if dtype2 is None else DType.of(dtype2)),
                              int(fn), int(src_space), int(dst_space), flags))
        return len(self._records) - 1

    def pe_index(self, row: int, col: int) -> int:
        return row * self.cols + col

    # --- sync -----------------------------------------------------------------------------
    def nop(self, engine: Engine, *, wait=None, signal=None) -> int:
        """Sync point on one engine's queue: wait for a token and/or signal one."""
        return self._emit(Op.NOP, engine=engine, wait=wait, signal=signal)

    # --- DMA ------------------------------------------------------------------------------
    def dma(self, src: "str | Space", src_addr: int, dst: "str | Space", dst_addr: int,
            nbytes: int | None = None, *, rows: int = 1, row_bytes: int | None = None,
            src_stride: int | None = None, dst_stride: int | None = None, dst_pe: int = -1,
            mcast: Mcast | str = Mcast.NONE, wait=None, signal=None) -> int:
        """Copy ``rows`` rows of ``row_bytes`` bytes (strided) from one memory to another.

        Local memory means this PE's, except the destination when ``dst_pe`` is given. With
        ``mcast="row"``/``"col"`` the data lands at ``dst_addr`` in every PE of the
        destination PE's row/column, crossing each NoC link once (hardware broadcast).
        """
        if row_bytes is None:
            if nbytes is None:
                raise ValueError("give nbytes or row_bytes")
            row_bytes, rows = nbytes, 1
        mc = mcast if isinstance(mcast, Mcast) else Mcast[mcast.upper()]
        return self._emit(Op.DMA, [src_addr, dst_addr, rows, row_bytes,
                                   row_bytes if src_stride is None else src_stride,
                                   row_bytes if dst_stride is None else dst_stride],
                          src_space=_space(src), dst_space=_space(dst), flags=int(mc) << 1,
                          peer=dst_pe, wait=wait, signal=signal)

    # --- DPE ------------------------------------------------------------------------------
    def dpe_matmul(self, a_addr: int, b_addr: int, c_addr: int, m: int, k: int, n: int, *,
                   dtype="bf16", accumulate: bool = False, wait=None, signal=None) -> int:
        """C[M,N] (+)= A[M,K] @ B[K,N], row-major in local memory. C is fp32 (int32 for int8)."""
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


def _fn(fn: "SimdFn | str") -> int:
    return int(fn if isinstance(fn, SimdFn) else SimdFn[fn.upper()])


class ProgramBuilder:
    """Builds a ChipProgram for a chip: ``b.pe(row, col).dma(...)``, tokens, barriers."""

    def __init__(self, chip, name: str = "program"):
        from simulator.spec import load_chip  # spec is the hardware contract; cheap import
        self.chip = load_chip(chip)
        self.rows, self.cols = self.chip.pe_grid.rows, self.chip.pe_grid.cols
        self.name = name
        self._streams = [PEStream(i, self.rows, self.cols) for i in range(self.rows * self.cols)]
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
        recs = [r for s in self._streams for r in s._records]
        arr = np.array(recs, dtype=CMD_DTYPE) if recs else np.zeros(0, CMD_DTYPE)
        return ChipProgram(arr, len(self._streams), self.name)
