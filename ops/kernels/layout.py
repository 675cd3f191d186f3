"""Data-movement kernels: `ember.transpose`, `ember.slice`, `ember.concat`, `ember.pad`
(constant), `ember.broadcast` and `ember.cast`, as DMA-engine programs. They move bytes, so they
take integer and boolean tensors (int32 on the chip) as they take floats.

Most of these ops are one or two N-d strided box copies between SRAM/DRAM buffers: an output
box and the input elements it takes, each with its own byte strides (a stride of 0 repeats an
element, which is how a broadcast reads). A box is simplified (size-1 dims dropped, adjacent
dims merged where both sides are contiguous across them), its innermost contiguous run becomes
the DMA row, the next dim the DMA's strided rows, and the remaining dims a list of DMAs that
`repeat` loops walk. The DMAs are spread evenly over the PEs; each PE's DMA queue runs its
share in order, so DMA latency is hidden by the other PEs, not within one.

Three cases go through local memory instead, double-buffered as the elementwise kernels are:
- transposes that move the last dim: tiles are loaded with strided DMAs, transposed by the
  MLU, and stored with strided DMAs;
- broadcasts of the last dim ([.., M, 1] -> [.., M, N]): a tile of N copies of a piece of x
  (a DMA with source row stride 0) transposed by the MLU is a block of the output, so no DMA
  moves one element at a time (other broadcasts are stride-0 box copies);
- casts to a narrower float than the tensors are held in on chip (fp32 -> bf16 when computing
  in fp32): two SIMD COPYs round each tile through the narrow type, as torch does;
- casts between integers, booleans and floats: SIMD passes per tile (`cast_passes`): COPY from
  an integer to a float (through the narrow type when the graph's type is bf16/f16 but the
  chip holds fp32), TRUNC from a float to an integer (toward zero, as torch), NE 0 to a
  boolean. A cast between two types the chip holds alike (i64 -> i32, i1 -> i64) is a copy.

Constant padding copies the input into the interior and fills the border boxes from a tile of
the pad value that each PE builds in local memory. There is no immediate-load command, so the
tile is made from input bytes read as int8 (always finite), multiplied by 0 and plus `value`.

`ember.embedding` / `index_select` / `index_put` are in ops/kernels/gather.py (indexed DMAs).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ops.kernel import ISA_ITEMSIZE, KernelCall, KernelTemplate, Placement, register_kernel
from simulator.isa import Engine

#: float element types narrower than fp32 -> the ISA dtype a rounding cast goes through
NARROW = {"bf16": "bf16", "f16": "fp16"}
FLOAT_TYPES = frozenset({"f32", "f64", "f16", "bf16"})
#: Graph types the chip holds as int32 (compiler/passes/dtype.py); "i8" is held as int8.
INT32_TYPES = frozenset({"i64", "i32", "i16", "ui8", "i1"})


def cast_passes(x_isa: str, out_isa: str, target: str) -> list[tuple[str, str, str, str]] | None:
    """The SIMD passes of a cast of a tile held as `x_isa` to graph type `target` held as
    `out_isa`: (opcode "unary" | "scalar", function, input dtype, output dtype) in order; [] for
    a plain copy; None when no cast of this kind runs here."""
    if target in FLOAT_TYPES:
        narrow = NARROW.get(target)
        if out_isa == "fp32" and narrow is not None and x_isa != narrow:    # round as torch does
            return [("unary", "COPY", x_isa, narrow), ("unary", "COPY", narrow, "fp32")]
        return [] if x_isa == out_isa else [("unary", "COPY", x_isa, out_isa)]
    if out_isa != "int32" or target not in INT32_TYPES:
        return None
    if target == "i1":
        return [("scalar", "NE", x_isa, "int32")]
    if x_isa == "int32":
        return []
    if x_isa == "int8":
        return [("unary", "COPY", "int8", "int32")]
    return [("unary", "TRUNC", x_isa, "int32")]
FILL_ELEMS = 1024           # elements of the pad-value tile in local memory
MIN_DMA_BYTES = 4096        # a dense run is cut for several PEs only into pieces this large


# ------------------------------------------------------------------------------ box copies
@dataclass(frozen=True)
class Box:
    """Copy `shape` elements from src_addr + sum(i * src_strides) to dst_addr + sum(i * dst_strides)
    (byte strides; src/dst spaces as the ISA names them)."""
    src: str
    src_addr: int
    dst: str
    dst_addr: int
    shape: tuple[int, ...]
    src_strides: tuple[int, ...]
    dst_strides: tuple[int, ...]
    item: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.item


@dataclass(frozen=True)
class DmaGroup:
    """`count` DMAs of `rows` rows of `row_bytes`; DMA i starts at src + i*src_step, dst + i*dst_step."""
    src: str
    src_addr: int
    dst: str
    dst_addr: int
    rows: int
    row_bytes: int
    src_stride: int
    dst_stride: int
    count: int
    src_step: int
    dst_step: int

    @property
    def dma_bytes(self) -> int:
        return self.rows * self.row_bytes


def row_major_strides(shape: tuple[int, ...], item: int) -> tuple[int, ...]:
    strides, acc = [], item
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _simplify(box: Box) -> list[tuple[int, int, int]]:
    """(size, src stride, dst stride) per dim, size-1 dims dropped and mergeable dims merged."""
    dims = [(n, s, d) for n, s, d in zip(box.shape, box.src_strides, box.dst_strides) if n != 1]
    merged: list[tuple[int, int, int]] = []
    for n, s, d in dims:
        if merged:
            pn, ps, pd = merged[-1]
            if ps == n * s and pd == n * d:
                merged[-1] = (pn * n, s, d)
                continue
        merged.append((n, s, d))
    return merged


def _rows_groups(box: Box, min_dmas: int) -> list[DmaGroup]:
    """A 2-d box of dense rows as DMAs of whole rows, the rows cut into `min_dmas` pieces."""
    rows, chunk = box.shape
    per = math.ceil(rows / min(rows, min_dmas))
    rs, rd = box.src_strides[0], box.dst_strides[0]
    return [DmaGroup(box.src, box.src_addr + r * rs, box.dst, box.dst_addr + r * rd, min(per, rows - r),
                     chunk * box.item, rs, rd, 1, 0, 0) for r in range(0, rows, per)]


def dma_groups(box: Box, min_dmas: int = 1) -> list[DmaGroup]:
    """The box as groups of 2D DMAs; the strided-rows dim is cut into pieces while there are
    fewer than `min_dmas` DMAs (so that every PE gets work)."""
    if math.prod(box.shape) == 0:
        return []
    dims = _simplify(box)
    if dims and dims[-1][1] == box.item and dims[-1][2] == box.item:
        row_bytes = dims[-1][0] * box.item
        dims = dims[:-1]
    else:
        row_bytes = box.item          # no contiguous run: one element per DMA row
    if not dims and min_dmas > 1 and row_bytes >= 2 * MIN_DMA_BYTES:
        # one dense run: cut it into rows (and a tail) so that the PEs can share it
        n = row_bytes // box.item
        chunk = max(MIN_DMA_BYTES // box.item, math.ceil(n / min_dmas))
        tail = n % chunk
        head = Box(box.src, box.src_addr, box.dst, box.dst_addr, (n // chunk, chunk),
                   (chunk * box.item, box.item), (chunk * box.item, box.item), box.item)
        rest = [] if not tail else dma_groups(Box(box.src, box.src_addr + (n - tail) * box.item, box.dst,
                                                  box.dst_addr + (n - tail) * box.item, (tail,), (box.item,),
                                                  (box.item,), box.item))
        return _rows_groups(head, min_dmas) + rest
    rows, rs, rd = dims.pop() if dims else (1, row_bytes, row_bytes)
    outer = dims
    n_outer = math.prod(n for n, _, _ in outer)
    pieces = [(0, rows)]
    if n_outer < min_dmas and rows > 1:
        chunk = math.ceil(rows / min(rows, math.ceil(min_dmas / n_outer)))
        pieces = [(r, min(chunk, rows - r)) for r in range(0, rows, chunk)]
    groups = []
    # every outer dim but the last is enumerated; the last is a loop (count, step)
    if outer:
        *enum, (ln, ls, ld) = outer
    else:
        enum, (ln, ls, ld) = [], (1, 0, 0)
    for idx in _ndindex(tuple(n for n, _, _ in enum)):
        so = sum(i * s for i, (_, s, _) in zip(idx, enum))
        do = sum(i * d for i, (_, _, d) in zip(idx, enum))
        for r0, nr in pieces:
            groups.append(DmaGroup(box.src, box.src_addr + so + r0 * rs, box.dst, box.dst_addr + do + r0 * rd,
                                   nr, row_bytes, rs, rd, ln, ls, ld))
    return groups


def _ndindex(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    if not shape:
        yield ()
        return
    for i in range(shape[0]):
        for rest in _ndindex(shape[1:]):
            yield (i, *rest)


def split_over_pes(groups: list[DmaGroup], pes: int) -> list[list[DmaGroup]]:
    """Contiguous ranges of the DMAs, balanced by bytes, one list per PE."""
    total = sum(g.count * g.dma_bytes for g in groups)
    share = [[] for _ in range(pes)]
    if total == 0:
        return share
    per = total / pes
    done = 0.0
    for g in groups:
        i = 0
        while i < g.count:
            p = min(pes - 1, int(done // per)) if per else 0
            # DMAs of this group that still fit PE p's share (at least one)
            room = max(1, round(((p + 1) * per - done) / g.dma_bytes)) if p < pes - 1 else g.count - i
            n = min(g.count - i, room)
            share[p].append(DmaGroup(g.src, g.src_addr + i * g.src_step, g.dst, g.dst_addr + i * g.dst_step,
                                     g.rows, g.row_bytes, g.src_stride, g.dst_stride, n, g.src_step, g.dst_step))
            done += n * g.dma_bytes
            i += n
    return share


def emit_groups(pe, groups: list[DmaGroup], *, wait=None) -> None:
    """Append a PE's DMA groups (a `repeat` loop for each group of more than one DMA)."""
    for k, g in enumerate(groups):
        w = wait if k == 0 else None
        if g.count == 1:
            pe.dma(g.src, g.src_addr, g.dst, g.dst_addr, rows=g.rows, row_bytes=g.row_bytes,
                   src_stride=g.src_stride, dst_stride=g.dst_stride, wait=w)
            continue
        with pe.repeat(g.count) as loop:
            pe.dma(g.src, loop.step(g.src_addr, g.src_step), g.dst, loop.step(g.dst_addr, g.dst_step),
                   rows=g.rows, row_bytes=g.row_bytes, src_stride=g.src_stride, dst_stride=g.dst_stride,
                   wait=w)


def _bandwidth(chip, space: str) -> float:
    """Bytes per cycle of a memory space (read + write combined)."""
    per_s = {"dram": chip.dram_bytes_per_s, "sram": chip.sram.bytes_per_s, "local": chip.local_mem.bytes_per_s}
    return per_s[space] / chip.clock_hz


def _servers(chip, space: str) -> tuple[int, int]:
    """(channels or banks, interleave bytes) of DRAM or SRAM."""
    if space == "dram":
        return chip.dram.channels, chip.dram.interleave_bytes
    return chip.sram.banks, chip.sram.interleave_bytes


def _add_server_load(load: dict[str, np.ndarray], chip, space: str, addrs: np.ndarray, nbytes: int) -> None:
    """Spread each DMA's bytes over the channels/banks from its start address on, as the
    simulator charges them (whatever the strides)."""
    n, il = _servers(chip, space)
    arr = load.setdefault(space, np.zeros(n))
    nch = min(n, -(-nbytes // il))
    per = -(-nbytes // nch)
    if len(addrs) == 1:                       # the common case, without numpy's per-call cost
        first = int(addrs[0]) // il
        for k in range(nch):
            arr[(first + k) % n] += per
        return
    # DMA i covers channels first_i .. first_i + nch - 1 (mod n)
    first = (addrs // il) % n
    counts = np.bincount(first, minlength=n).astype(float)
    for k in range(nch):
        arr += np.roll(counts, k) * per


def predict_groups(share: list[list[DmaGroup]], chip, latency_hidden: bool = False) -> float:
    """Cycles of the PEs' DMA lists: the busiest memory channel/bank (every byte read from and
    written to DRAM/SRAM counts against it) plus the DMA latencies one PE pays in turn, or the
    busiest PE's serial DMAs alone, whichever is longer. With `latency_hidden`, the other PEs'
    DMAs keep the busiest server busy while one PE waits out its latency (many PEs streaming
    onto one hot server), so only one latency adds to it."""
    load: dict[str, np.ndarray] = {}
    lat = chip.dma.latency_cycles
    busiest, dmas = 0.0, 0
    for groups in share:
        t = 0.0
        for g in groups:
            b = g.count * g.dma_bytes
            moved = 0.0
            for space, base, step in ((g.src, g.src_addr, g.src_step), (g.dst, g.dst_addr, g.dst_step)):
                if space != "local":
                    addrs = (base,) if g.count == 1 else base + step * np.arange(g.count)
                    _add_server_load(load, chip, space, addrs, g.dma_bytes)
                    moved += b / _bandwidth(chip, space)
            t += g.count * lat + moved
            dmas += g.count
        busiest = max(busiest, t)
    per_server = max((arr.max() * len(arr) / _bandwidth(chip, space) for space, arr in load.items()), default=0.0)
    active = max(1, sum(1 for groups in share if groups))
    return max(per_server + (lat if latency_hidden else lat * dmas / active), busiest)


# ------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class CopyPlan:
    """Box copies spread over `pes` PEs."""
    pes: int


@dataclass(frozen=True)
class TilePlan:
    """Tiles of rows x cols elements through local memory, double-buffered, over `pes` PEs."""
    pes: int
    rows: int
    cols: int


def _pe_choices(chip) -> list[int]:
    """PE counts to try, most first (a tie goes to spreading the DMAs)."""
    return sorted({1, max(1, chip.num_pes // 2), chip.num_pes}, reverse=True)


# ------------------------------------------------------------------------------ the template
class LayoutKernel(KernelTemplate):
    ops = ("transpose", "slice", "concat", "pad", "broadcast", "cast")
    integer_operands = True

    def accepts(self, op: str, operands, result, attrs, chip=None) -> bool:
        x = operands[0]
        if any(o is None or o.numel == 0 for o in operands) or result.numel == 0:
            return False
        if op == "pad":
            return attrs["mode"] == "constant"
        if op == "cast":
            held = {**{t: "fp32" for t in FLOAT_TYPES}, **{t: "int32" for t in INT32_TYPES}, "i8": "int8"}
            if x.dtype not in held or attrs["dtype"] not in held:
                return False
            # the graph's float types are held as fp32 or narrower; either way the passes exist
            return cast_passes(held[x.dtype], held[attrs["dtype"]], attrs["dtype"]) is not None
        return True

    def bytes_moved(self, call: KernelCall) -> dict[str, int]:
        """A slice, or a pad that crops, reads only what lands in the output."""
        if call.op not in ("slice", "pad"):
            return super().bytes_moved(call)
        x, out = call.inputs[0], call.output
        moved = {x.space: min(x.nbytes, out.nbytes)}
        moved[out.space] = moved.get(out.space, 0) + out.nbytes
        return moved

    # --- what each op moves ---------------------------------------------------------------
    def _boxes(self, call: KernelCall) -> list[Box]:
        """The op as box copies (transposes that move the last dim and rounding casts excluded)."""
        x, out = call.inputs[0], call.output
        item = ISA_ITEMSIZE[out.dtype]
        xs, os_ = row_major_strides(x.shape, item), row_major_strides(out.shape, item)
        if call.op == "transpose":
            perm = call.attrs["perm"]
            return [Box(x.space, x.addr, out.space, out.addr, out.shape, tuple(xs[p] for p in perm), os_, item)]
        if call.op == "slice":
            st, sp = call.attrs["starts"], call.attrs["steps"]
            off = sum(s * k for s, k in zip(st, xs))
            return [Box(x.space, x.addr + off, out.space, out.addr, out.shape,
                        tuple(k * s for k, s in zip(xs, sp)), os_, item)]
        if call.op == "concat":
            dim, y = call.attrs["dim"], call.inputs[1]
            return [Box(x.space, x.addr, out.space, out.addr, x.shape, xs, os_, item),
                    Box(y.space, y.addr, out.space, out.addr + x.shape[dim] * os_[dim], y.shape,
                        row_major_strides(y.shape, item), os_, item)]
        if call.op == "broadcast":
            lead = len(out.shape) - len(x.shape)
            src = [0] * lead + [0 if n == 1 and m != 1 else s for n, m, s in zip(x.shape, out.shape[lead:], xs)]
            return [Box(x.space, x.addr, out.space, out.addr, out.shape, tuple(src), os_, item)]
        if call.op == "cast":
            return [Box(x.space, x.addr, out.space, out.addr, out.shape, os_, os_, item)]
        if call.op == "pad":
            low, high = call.attrs["low"], call.attrs["high"]
            crop = [max(-lo, 0) for lo in low]
            shape = tuple(n - max(-lo, 0) - max(-hi, 0) for n, lo, hi in zip(x.shape, low, high))
            src_off = sum(c * s for c, s in zip(crop, xs))
            dst_off = sum(max(lo, 0) * s for lo, s in zip(low, os_))
            return [Box(x.space, x.addr + src_off, out.space, out.addr + dst_off, shape, xs, os_, item)]
        raise AssertionError(call.op)

    def _fill_boxes(self, call: KernelCall, fill_addr: int) -> list[Box]:
        """The border of a constant pad: for each dim d, the boxes before and after the interior
        in d, interior in dims < d and whole in dims > d; read from a local tile (stride 0)."""
        out = call.output
        item = ISA_ITEMSIZE[out.dtype]
        os_ = row_major_strides(out.shape, item)
        low, high = call.attrs["low"], call.attrs["high"]
        lo_ = [max(v, 0) for v in low]
        inner = [n - max(v, 0) - max(h, 0) for n, v, h in zip(out.shape, low, high)]
        boxes = []
        for d in range(len(out.shape)):
            for start, size in ((0, lo_[d]), (lo_[d] + inner[d], max(high[d], 0))):
                if size <= 0:
                    continue
                shape = tuple(inner[:d]) + (size,) + tuple(out.shape[d + 1:])
                dst = out.addr + sum(lo_[k] * os_[k] for k in range(d)) + start * os_[d]
                boxes.append(Box("local", fill_addr, out.space, dst, shape, (0,) * len(shape), os_, item))
        return boxes

    def _fill_runs(self, call: KernelCall) -> list[tuple[int, list[tuple[int, int, int]], int]]:
        """Each border box as (dst address, outer dims (size, 0, dst stride), dense run in elements)."""
        item = ISA_ITEMSIZE[call.output.dtype]
        runs = []
        for box in self._fill_boxes(call, 0):
            dims = _simplify(box)
            if dims and dims[-1][2] == item:
                runs.append((box.dst_addr, dims[:-1], dims[-1][0]))
            else:
                runs.append((box.dst_addr, dims, 1))      # a border one element wide
        return runs

    def _fill_elems(self, call: KernelCall) -> int:
        """Elements of the pad-value tile: the longest dense border run, at most FILL_ELEMS."""
        return min(FILL_ELEMS, max((n for _, _, n in self._fill_runs(call)), default=1))

    def _fill_groups(self, call: KernelCall, fill_addr: int, min_dmas: int) -> list[DmaGroup]:
        """The border as DMAs from the pad-value tile (rows of at most the tile's size, stride 0)."""
        item = ISA_ITEMSIZE[call.output.dtype]
        tile = self._fill_elems(call)
        groups = []
        for dst, outer, n in self._fill_runs(call):
            if n <= tile:
                shape = tuple(k for k, _, _ in outer) + (n,)
                box = Box("local", fill_addr, call.output.space, dst, shape, (0,) * len(outer) + (item,),
                          tuple(d for _, _, d in outer) + (item,), item)
                groups += dma_groups(box, min_dmas)
                continue
            # a long run: rows of `tile` elements, all read from the tile (stride 0), and a tail
            parts = [(0, n // tile, tile)] + ([(n // tile * tile, 1, n % tile)] if n % tile else [])
            for idx in _ndindex(tuple(k for k, _, _ in outer)):
                do = sum(i * d for i, (_, _, d) in zip(idx, outer))
                for off, rows, elems in parts:
                    groups.append(DmaGroup("local", fill_addr, call.output.space, dst + do + off * item,
                                           rows, elems * item, 0, elems * item, 1, 0, 0))
        return groups

    def _cast_passes(self, call: KernelCall) -> list[tuple[str, str, str, str]]:
        passes = cast_passes(call.inputs[0].dtype, call.output.dtype, call.attrs["dtype"])
        if passes is None:
            raise ValueError(f"ember.cast: no cast of a tile held as {call.inputs[0].dtype} to "
                             f"{call.attrs['dtype']} held as {call.output.dtype}")
        return passes

    def _through_local(self, call: KernelCall) -> str | None:
        """'transpose' / 'convert' when the op needs local memory, else None (box copies)."""
        if call.op == "transpose" and call.attrs["perm"][-1] != len(call.attrs["perm"]) - 1:
            return "transpose"
        if call.op == "cast" and self._cast_passes(call):
            return "convert"
        if call.op == "broadcast":
            x, out = call.inputs[0].shape, call.output.shape
            if len(x) >= 2 and x[-1] == 1 and out[-1] > 1 and x[-2] == out[-2] > 1:
                return "transpose"      # [.., M, 1] -> [.., M, N]: see _tiles
        return None

    # --- plans and cost ---------------------------------------------------------------------
    def plans(self, call: KernelCall, chip):
        mode = self._through_local(call)
        item = ISA_ITEMSIZE[call.output.dtype]
        if mode is None:
            for pes in _pe_choices(chip):
                yield CopyPlan(pes)
            return
        tiles = ((32, 32), (64, 64), (32, 128), (128, 32), (128, 128)) if mode == "transpose" else \
            ((1, 1024), (1, 4096), (1, 16384))
        for rows, cols in tiles:
            # 2 input + 2 output buffers (+ one between two conversion passes)
            if 5 * rows * cols * max(item, 4) > chip.local_mem.bytes:
                continue
            # with a tile for every PE, fewer PEs only lengthen the pipeline: not worth costing
            many = len(self._tiles(call, TilePlan(1, rows, cols))) >= chip.num_pes
            for pes in [chip.num_pes] if many else _pe_choices(chip):
                yield TilePlan(pes, rows, cols)

    def predict(self, call: KernelCall, plan, chip) -> int:
        if isinstance(plan, CopyPlan):
            groups = [g for b in self._boxes(call) for g in dma_groups(b, plan.pes)]
            copies = predict_groups(split_over_pes(groups, plan.pes), chip)
            if call.op == "pad":
                # the border DMAs wait for the pad-value tile (a DMA and two SIMD passes)
                k = self._fill_elems(call)
                setup = 2 * chip.dma.latency_cycles + 2 * (math.ceil(k / chip.simd.elems_per_cycle)
                                                           + chip.simd.latency_cycles)
                fills = split_over_pes(self._fill_groups(call, 0, plan.pes), plan.pes)
                copies = max(copies, setup) + predict_groups(fills, chip)
            return int(copies)
        work = self._tiles(call, plan)
        per_pe = [work[p::plan.pes] for p in range(plan.pes)]
        dmas = [self._tile_dmas(call, w) for w in per_pe]
        compute = max(sum(self._compute_cycles(call, t, chip) for t in w) for w in per_pe)
        # loads and stores overlap the compute of other tiles; the last tile's compute does not
        first = self._compute_cycles(call, work[0], chip)
        return int(max(predict_groups(dmas, chip), compute) + first)

    def _tile_dmas(self, call: KernelCall, tiles: list[dict]) -> list[DmaGroup]:
        """A PE's loads and stores of its tiles, as DMA groups (for the cost model)."""
        x, out = call.inputs[0], call.output
        item, x_item = ISA_ITEMSIZE[out.dtype], ISA_ITEMSIZE[x.dtype]
        groups = []
        for w in tiles:
            groups.append(DmaGroup(x.space, w["src"], "local", 0, w["rows"], w["cols"] * x_item,
                                   w.get("src_stride", w["cols"] * x_item), w["cols"] * x_item, 1, 0, 0))
            groups.append(DmaGroup("local", 0, out.space, w["dst"], 1, w["elems"] * item,
                                   w["elems"] * item, w.get("dst_stride", w["elems"] * item), 1, 0, 0))
        return groups

    def _compute_cycles(self, call, t, chip) -> float:
        item = ISA_ITEMSIZE[call.output.dtype]
        if self._through_local(call) == "transpose":
            return math.ceil(t["elems"] * item / chip.mlu.bytes_per_cycle) + chip.mlu.latency_cycles
        passes = len(self._cast_passes(call))
        return passes * (math.ceil(t["elems"] / chip.simd.elems_per_cycle) + chip.simd.latency_cycles)

    # --- emission ---------------------------------------------------------------------------
    def emit(self, call: KernelCall, plan, chip, builder) -> None:
        if isinstance(plan, CopyPlan):
            self._emit_copy(call, plan, builder)
        else:
            self._emit_tiles(call, plan, builder)

    def concat_call(self, leaves: list[Placement], out: Placement, dim: int) -> KernelCall:
        """A concatenation of any number of inputs along `dim` (for its bytes and roofline)."""
        return KernelCall("concat", tuple(leaves), out, {"dim": dim})

    def emit_concat(self, leaves: list[Placement], out: Placement, dim: int, pes: int, builder,
                    skip: frozenset | set = frozenset()) -> None:
        """Concatenate any number of inputs along `dim` as box copies spread over `pes` PEs: a
        chain of two-input concats whose intermediates nothing else reads, done as one copy
        (each input moves once instead of once per later link of the chain). Inputs in `skip`
        already are in their place in `out` and are not copied."""
        item = ISA_ITEMSIZE[out.dtype]
        os_ = row_major_strides(out.shape, item)
        boxes, at = [], 0
        for x in leaves:
            if x not in skip:
                boxes.append(Box(x.space, x.addr, out.space, out.addr + at * os_[dim], x.shape,
                                 row_major_strides(x.shape, item), os_, item))
            at += x.shape[dim]
        if at != out.shape[dim]:
            raise ValueError(f"inputs of {at} along dim {dim} do not fill an output of {out.shape[dim]}")
        share = split_over_pes([g for b in boxes for g in dma_groups(b, pes)], pes)
        for p in range(pes):
            emit_groups(builder.pe(p), share[p])

    def _emit_copy(self, call: KernelCall, plan: CopyPlan, builder) -> None:
        groups = [g for b in self._boxes(call) for g in dma_groups(b, plan.pes)]
        share = split_over_pes(groups, plan.pes)
        fill_addr = 0
        fills = split_over_pes(self._fill_groups(call, fill_addr, plan.pes), plan.pes) if call.op == "pad" else []
        for p in range(plan.pes):
            pe = builder.pe(p)
            ready = None
            if fills and fills[p]:
                ready = builder.token()
                self._emit_fill_tile(call, pe, fill_addr, ready)
            emit_groups(pe, share[p])
            if ready is not None:
                emit_groups(pe, fills[p], wait=(ready, 2))

    def _emit_fill_tile(self, call: KernelCall, pe, addr: int, ready: int) -> None:
        """`_fill_elems` copies of the pad value at `addr` in local memory; signals `ready` twice.

        Input bytes read as int8 are finite whatever they hold, so times 0 they are 0."""
        x, dt = call.inputs[0], call.output.dtype
        k = self._fill_elems(call)
        raw = addr + k * ISA_ITEMSIZE[dt]       # int8 scratch after the tile
        n = min(x.nbytes, k)
        pe.dma(x.space, x.addr, "local", raw, rows=math.ceil(k / n), row_bytes=n, src_stride=0,
               dst_stride=n, signal=ready)
        pe.simd_scalar("MUL", raw, addr, k, 0.0, dtype="int8", out_dtype=dt, wait=(ready, 1))
        pe.simd_scalar("ADD", addr, addr, k, float(call.attrs["value"]), dtype=dt, out_dtype=dt,
               signal=ready)

    def _tiles(self, call: KernelCall, plan: TilePlan) -> list[dict]:
        """Work items of a through-local plan: load/store DMAs and the compute's shape."""
        x, out = call.inputs[0], call.output
        item = ISA_ITEMSIZE[out.dtype]
        if self._through_local(call) == "convert":
            n = math.prod(out.shape)
            return [{"src": x.addr + s * ISA_ITEMSIZE[x.dtype], "dst": out.addr + s * item, "rows": 1,
                     "cols": min(plan.cols, n - s), "elems": min(plan.cols, n - s)}
                    for s in range(0, n, plan.cols)]
        if call.op == "broadcast":
            return self._broadcast_tiles(call, plan)
        perm = call.attrs["perm"]
        r = len(perm)
        xs, os_ = row_major_strides(x.shape, item), row_major_strides(out.shape, item)
        a = perm[-1]                  # input dim that becomes the output's last
        q = perm.index(r - 1)         # output dim that holds the input's last
        na, nl = x.shape[a], x.shape[-1]
        batch = [k for k in range(r) if k not in (q, r - 1)]
        work = []
        for idx in _ndindex(tuple(out.shape[k] for k in batch)):
            so = sum(i * xs[perm[k]] for i, k in zip(idx, batch))
            do = sum(i * os_[k] for i, k in zip(idx, batch))
            for i0 in range(0, na, plan.rows):
                m = min(plan.rows, na - i0)
                for j0 in range(0, nl, plan.cols):
                    n = min(plan.cols, nl - j0)
                    # load m rows (input dim a) of n elements; store n rows (output dim q) of m
                    work.append({"src": x.addr + so + i0 * xs[a] + j0 * item, "src_stride": xs[a],
                                 "dst": out.addr + do + j0 * os_[q] + i0 * item, "dst_stride": os_[q],
                                 "rows": m, "cols": n, "elems": m * n})
        return work

    def _broadcast_tiles(self, call: KernelCall, plan: TilePlan) -> list[dict]:
        """[.., M, 1] -> [.., M, N] as transposes: a tile of `rows` copies of x[m0:m0+cols]
        (a DMA whose rows all read the same bytes) transposed is the output's [cols, rows] block."""
        x, out = call.inputs[0], call.output
        item = ISA_ITEMSIZE[out.dtype]
        lead = len(out.shape) - len(x.shape)
        xs = (0,) * lead + row_major_strides(x.shape, item)
        xs = tuple(0 if n == 1 else st for n, st in zip((1,) * lead + x.shape, xs))
        os_ = row_major_strides(out.shape, item)
        m_size, n_size = out.shape[-2:]
        work = []
        for idx in _ndindex(out.shape[:-2]):
            so = sum(i * st for i, st in zip(idx, xs))
            do = sum(i * st for i, st in zip(idx, os_))
            for m0 in range(0, m_size, plan.cols):
                m = min(plan.cols, m_size - m0)
                for j0 in range(0, n_size, plan.rows):
                    n = min(plan.rows, n_size - j0)
                    work.append({"src": x.addr + so + m0 * item, "src_stride": 0,
                                 "dst": out.addr + do + m0 * os_[-2] + j0 * item, "dst_stride": os_[-2],
                                 "rows": n, "cols": m, "elems": m * n})
        return work

    def _emit_tiles(self, call: KernelCall, plan: TilePlan, builder) -> None:
        x, out = call.inputs[0], call.output
        item, x_item = ISA_ITEMSIZE[out.dtype], ISA_ITEMSIZE[x.dtype]
        tb = plan.rows * plan.cols * max(item, 4)
        in_buf, out_buf, mid = (0, tb), (2 * tb, 3 * tb), 4 * tb
        transpose = self._through_local(call) == "transpose"
        passes = [] if transpose else self._cast_passes(call)
        work = self._tiles(call, plan)
        for p in range(plan.pes):
            tiles = work[p::plan.pes]
            if not tiles:
                continue
            pe = builder.pe(p)
            loaded, computed, stored = builder.token(), builder.token(), builder.token()

            loads = [{"src": x.space, "src_addr": w["src"], "dst": "local", "dst_addr": in_buf[t % 2],
                      "rows": w["rows"], "row_bytes": w["cols"] * x_item,
                      "src_stride": w.get("src_stride", w["cols"] * x_item), "signal": loaded}
                     for t, w in enumerate(tiles)]
            pe.dma(**loads[0])
            for t, w in enumerate(tiles):
                if t + 1 < len(tiles):
                    pe.dma(**loads[t + 1])      # the next tile loads while this one is worked on
                eng = Engine.MLU if transpose else Engine.SIMD
                if t >= 2:
                    pe.nop(eng, wait=(stored, t - 1))
                if transpose:
                    pe.mlu_transpose(in_buf[t % 2], out_buf[t % 2], w["rows"], w["cols"], dtype=out.dtype,
                                     wait=(loaded, t + 1), signal=computed)
                    store_rows, store_bytes = w["cols"], w["rows"] * item
                else:
                    for i, (kind, fn, dt_in, dt_out) in enumerate(passes):
                        first, last = i == 0, i == len(passes) - 1
                        kw = dict(dtype=dt_in, out_dtype=dt_out, wait=(loaded, t + 1) if first else None,
                                  signal=computed if last else None)
                        src, dst = in_buf[t % 2] if first else mid, out_buf[t % 2] if last else mid
                        if kind == "scalar":
                            pe.simd_scalar(fn, src, dst, w["elems"], 0.0, **kw)
                        else:
                            pe.simd_unary(fn, src, dst, w["elems"], **kw)
                    store_rows, store_bytes = 1, w["elems"] * item
                pe.dma("local", out_buf[t % 2], out.space, w["dst"], rows=store_rows, row_bytes=store_bytes,
                       dst_stride=w.get("dst_stride", store_bytes), wait=(computed, t + 1), signal=stored)


register_kernel(LayoutKernel())
