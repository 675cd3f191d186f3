"""Building vector-core kernels in LLVM IR (llvmlite.ir): the function signature of
`simulator.isa.vector`, the loop over rows every kernel has, and loads that widen an ISA dtype
to the 32-bit lanes the kernels compute in.

A kernel computes on vectors of ``lanes = vlen_bytes / 4`` 32-bit elements (one vector register
at LMUL 1): fp32 for float inputs (bf16 and fp16 widened exactly), i32 for integer inputs (int8
sign-extended; the chip holds int64 values as int32).
"""
from __future__ import annotations

from llvmlite import ir

from simulator.isa.vector import Region, VectorKernel

I1, I16, I32, I64, F32 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
I8P = ir.IntType(8).as_pointer()
INT_MAX = 2 ** 31 - 1
INT_MIN = -2 ** 31
#: Integer ISA dtypes and their storage type; every other dtype is a float widened to fp32.
_INT_BITS = {"int32": 32, "int8": 8}
_FLOAT_STORAGE = {"fp32": F32, "bf16": I16, "fp16": ir.HalfType()}


def is_int(dtype: str) -> bool:
    return dtype in _INT_BITS


def lane_type(dtype: str):
    """The 32-bit type a dtype's elements are computed in."""
    return I32 if is_int(dtype) else F32


def const(t, v):
    return ir.Constant(t, v)


def splat(t, v, n: int):
    return ir.Constant(ir.VectorType(t, n), [v] * n)


class KernelIR:
    """One kernel function under construction: ``i64 @name(ptr x regions, i64 rows, i64 param)``,
    with a loop over the rows already open (`row`: the row number, `builder` inside the row's
    body). Blocks made with `block` are named; `trip` records how often each runs."""

    def __init__(self, name: str, regions: tuple[Region, ...], vlen_bytes: int):
        self.name = name
        self.regions = regions
        self.vlen_bytes = vlen_bytes
        self.lanes = vlen_bytes // 4
        self.module = ir.Module(name=name)
        self.fn = ir.Function(self.module, ir.FunctionType(I64, [I8P] * len(regions) + [I64, I64]), name=name)
        self.ptrs = self.fn.args[:len(regions)]
        self.rows, self.param = self.fn.args[len(regions):]
        self._trips: list[tuple[str, int, int]] = []
        self._decls: dict[str, ir.Function] = {}
        entry = self.block("entry", 1, 0)
        self.fault = self.fn.append_basic_block("fault")
        self._fault_pos = None
        row = self.row_block = self.block("row", 0, 1)
        ir.IRBuilder(entry).branch(row)
        self.builder = ir.IRBuilder(row)
        self.row = self.builder.phi(I64, "r")
        self.row.add_incoming(const(I64, 0), entry)

    def block(self, name: str, per_call: int, per_row: int) -> ir.Block:
        """A new basic block that runs ``per_call + per_row * rows`` times."""
        self._trips.append((name, per_call, per_row))
        return self.fn.append_basic_block(name)

    def intrinsic(self, name: str, ret, args) -> ir.Function:
        if name not in self._decls:
            self._decls[name] = ir.Function(self.module, ir.FunctionType(ret, args), name=name)
        return self._decls[name]

    def vec(self, t):
        return ir.VectorType(t, self.lanes)

    def iota(self):
        """<0, 1, ..., lanes-1> as i32."""
        return ir.Constant(self.vec(I32), list(range(self.lanes)))

    # ---- memory ---------------------------------------------------------------------------
    def elem_ptr(self, b: ir.IRBuilder, region: int, dtype: str, index, t=None):
        """Pointer to element ``index`` (i64) of a region holding ``dtype`` (as ``t``, default
        the dtype's storage type)."""
        t = t or _storage(dtype)
        return b.gep(b.bitcast(self.ptrs[region], t.as_pointer()), [index])

    def load(self, b: ir.IRBuilder, region: int, dtype: str, index):
        """One element, widened to its lane type."""
        return self.widen(b, b.load(self.elem_ptr(b, region, dtype, index)), dtype)

    def store(self, b: ir.IRBuilder, region: int, dtype: str, index, value) -> None:
        """Store a lane-type value as ``dtype`` (fp32 / int32 only: kernels write those)."""
        if dtype not in ("fp32", "int32"):
            raise ValueError(f"vector kernels store fp32 or int32, not {dtype}")
        b.store(value, self.elem_ptr(b, region, dtype, index))

    def narrow(self, b: ir.IRBuilder, value, dtype: str):
        """A lane-type value (or vector) in ``dtype``'s stored form: bf16 and fp16 rounded to
        nearest even (a NaN stays NaN), int8 wrapped as int32 -> int8 does."""
        vector = isinstance(value.type, ir.VectorType)
        wrap = (lambda t: ir.VectorType(t, value.type.count)) if vector else (lambda t: t)
        if dtype == "bf16":
            bits = b.bitcast(value, wrap(I32))
            lsb = b.and_(b.lshr(bits, _splat_like(bits, I32, 16)), _splat_like(bits, I32, 1))
            rounded = b.add(bits, b.add(lsb, _splat_like(bits, I32, 0x7FFF)))
            quiet = b.or_(bits, _splat_like(bits, I32, 0x400000))
            nan = b.fcmp_unordered("uno", value, value)
            return b.trunc(b.lshr(b.select(nan, quiet, rounded), _splat_like(bits, I32, 16)), wrap(I16))
        if dtype == "fp16":
            return b.fptrunc(value, wrap(ir.HalfType()))
        if dtype == "int8":
            return b.trunc(value, wrap(ir.IntType(8)))
        return value

    def store_masked(self, b: ir.IRBuilder, region: int, dtype: str, index, value, mask) -> None:
        """Store a lane-type vector as ``dtype`` at element ``index``, in lanes where ``mask`` is set."""
        self.store_raw(b, region, dtype, index, self.narrow(b, value, dtype), mask)

    def gather_raw(self, b: ir.IRBuilder, region: int, dtype: str, base, idx, mask):
        """The stored elements ``base + idx[l]`` (i64 base, <lanes x i32> idx) of a region, in
        lanes where ``mask`` is set (a masked gather: indexed loads)."""
        st = _storage(dtype)
        vt, pt = self.vec(st), ir.VectorType(st.as_pointer(), self.lanes)
        start = b.ptrtoint(self.elem_ptr(b, region, dtype, base), I64)
        offs = b.mul(b.sext(idx, self.vec(I64)), ir.Constant(self.vec(I64), [_size(dtype)] * self.lanes))
        ptrs = b.inttoptr(b.add(broadcast(b, start, self.vec(I64)), offs), pt)
        fn = self.intrinsic(f"llvm.masked.gather.v{self.lanes}{_suffix(st)}.v{self.lanes}p0", vt,
                            [pt, I32, self.vec(I1), vt])
        return b.call(fn, [ptrs, const(I32, _size(dtype)), mask, ir.Constant(vt, ir.Undefined)])

    def store_raw(self, b: ir.IRBuilder, region: int, dtype: str, index, value, mask) -> None:
        """Store stored-type lanes at element ``index`` where ``mask`` is set."""
        vt = value.type
        ptr = b.bitcast(self.elem_ptr(b, region, dtype, index), vt.as_pointer())
        fn = self.intrinsic(f"llvm.masked.store.v{self.lanes}{_suffix(vt.element)}.p0", ir.VoidType(),
                            [vt, vt.as_pointer(), I32, self.vec(I1)])
        b.call(fn, [value, ptr, const(I32, _size(dtype)), mask])

    def load_vec(self, b: ir.IRBuilder, region: int, dtype: str, index, mask=None, fill=None):
        """``lanes`` consecutive elements from element ``index``, widened; with ``mask`` (an
        <lanes x i1>) a masked load whose off lanes hold ``fill`` (a lane-type value)."""
        st = _storage(dtype)
        vt = self.vec(st)
        ptr = b.bitcast(self.elem_ptr(b, region, dtype, index), vt.as_pointer())
        if mask is None:
            raw = b.load(ptr, align=_size(dtype))
        else:
            passthru = ir.Constant(vt, [_raw_fill(dtype, fill)] * self.lanes)
            name = f"llvm.masked.load.v{self.lanes}{_suffix(st)}.p0"
            fn = self.intrinsic(name, vt, [vt.as_pointer(), I32, self.vec(I1), vt])
            raw = b.call(fn, [ptr, const(I32, _size(dtype)), mask, passthru])
        return self.widen(b, raw, dtype)

    def widen(self, b: ir.IRBuilder, raw, dtype: str):
        vector = isinstance(raw.type, ir.VectorType)
        wrap = (lambda t: ir.VectorType(t, raw.type.count)) if vector else (lambda t: t)
        if dtype == "fp32" or dtype == "int32":
            return raw
        if dtype == "int8":
            return b.sext(raw, wrap(I32))
        if dtype == "bf16":       # the bf16 bits are the top half of the fp32 bits
            return b.bitcast(b.shl(b.zext(raw, wrap(I32)), _splat_like(raw, I32, 16)), wrap(F32))
        if dtype == "fp16":
            return b.fpext(raw, wrap(F32))
        raise ValueError(f"vector kernels do not read {dtype}")

    # ---- control --------------------------------------------------------------------------
    def fail_at(self, b: ir.IRBuilder, position) -> None:
        """Leave the function returning ``position`` (i64): the element at fault."""
        if self._fault_pos is None:
            fb = ir.IRBuilder(self.fault)
            self._fault_pos = fb.phi(I64, "at")
            fb.ret(self._fault_pos)
        self._fault_pos.add_incoming(position, b.block)
        b.branch(self.fault)

    def fail_where(self, b: ir.IRBuilder, bad, at, trips: int, name: str) -> ir.IRBuilder:
        """Leave at the first lane where ``bad`` (<lanes x i1>) is set, returning the position
        ``at`` (i64) plus that lane; returns the builder of the block that goes on (block
        ``name``, run ``trips`` times per row) when no lane is."""
        n, vi = self.lanes, self.vec(I32)
        any_bad = b.call(self.intrinsic(f"llvm.vector.reduce.or.v{n}i1", I1, [self.vec(I1)]), [bad])
        fault, ok = self.block(f"{name}_fault", 0, 0), self.block(name, 0, trips)
        b.cbranch(any_bad, fault, ok)
        fb = ir.IRBuilder(fault)
        first = fb.call(self.intrinsic(f"llvm.vector.reduce.umin.v{n}i32", I32, [vi]),
                        [fb.select(bad, self.iota(), ir.Constant(vi, [INT_MAX] * n))])
        self.fail_at(fb, fb.add(at, fb.zext(first, I64)))
        return ir.IRBuilder(ok)

    def lanes_loop(self, b: ir.IRBuilder, count: int):
        """A loop over ``count`` elements of each row in vectors of ``lanes``, from the block
        ``b`` ends: returns (builder of its body, the first element j (i32), the mask of lanes
        below ``count``). Close it with `end_lanes_loop`."""
        trips = -(-count // self.lanes)
        loop = self.block("vec", 0, trips)
        b.branch(loop)
        lb = ir.IRBuilder(loop)
        j = lb.phi(I32, "j")
        j.add_incoming(const(I32, 0), b.block)
        vi = self.vec(I32)
        live = lb.icmp_signed("<", lb.add(broadcast(lb, j, vi), self.iota()), ir.Constant(vi, [count] * self.lanes))
        return lb, j, live

    def end_lanes_loop(self, b: ir.IRBuilder, j, count: int) -> ir.IRBuilder:
        """Close the loop `lanes_loop` opened from the block ``b`` ends; returns the builder of the
        block after it (once per row)."""
        j2 = b.add(j, const(I32, self.lanes))
        j.add_incoming(j2, b.block)
        end = self.block("row_end", 0, 1)
        b.cbranch(b.icmp_signed("<", j2, const(I32, count)), j.parent, end)
        return ir.IRBuilder(end)

    def finish(self, b: ir.IRBuilder, fault: str = "") -> VectorKernel:
        """Close the row loop from the block ``b`` ends and return the kernel."""
        nxt = b.add(self.row, const(I64, 1))
        self.row.add_incoming(nxt, b.block)
        done = self.block("done", 1, 0)
        b.cbranch(b.icmp_unsigned("<", nxt, self.rows), self.row_block, done)
        ir.IRBuilder(done).ret(const(I64, -1))
        if self._fault_pos is None:
            ir.IRBuilder(self.fault).unreachable()
        self._trips.append(("fault", 0, 0))
        return VectorKernel(self.name, str(self.module), self.regions, tuple(self._trips), self.vlen_bytes, fault)


def _storage(dtype: str):
    if dtype in _INT_BITS:
        return ir.IntType(_INT_BITS[dtype])
    if dtype in _FLOAT_STORAGE:
        return _FLOAT_STORAGE[dtype]
    raise ValueError(f"vector kernels do not read {dtype}")


def _size(dtype: str) -> int:
    return {"fp32": 4, "int32": 4, "bf16": 2, "fp16": 2, "int8": 1}[dtype]


def _suffix(t) -> str:
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {"float": "f32", "half": "f16", "double": "f64"}[str(t)]


def _raw_fill(dtype: str, fill):
    """The stored bits of a fill value given in the lane type."""
    import struct
    if dtype == "bf16":
        return struct.unpack("<I", struct.pack("<f", fill))[0] >> 16
    if dtype == "int8":
        return max(-128, min(127, int(fill)))
    return fill


def broadcast(b: ir.IRBuilder, x, vt):
    """A vector of type ``vt`` with every lane ``x``."""
    undef = ir.Constant(vt, ir.Undefined)
    one = b.insert_element(undef, x, const(I32, 0))
    return b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(I32, vt.count), [0] * vt.count))


def _splat_like(v, t, value):
    return ir.Constant(ir.VectorType(t, v.type.count), [value] * v.type.count) if isinstance(v.type, ir.VectorType) \
        else ir.Constant(t, value)
