"""Chip specs: a validated, frozen description of one accelerator variant.

A chip is a YAML file under ``simulator/chips/`` (or anywhere on disk). Every number the
simulator uses comes from here, so "what if local memory were 512 KiB" is a one-line change:

    chip = load_chip("mtia2i").with_(local_mem__bytes=512 * 1024)

``with_`` takes top-level fields (``clock_hz=2e9``) and nested fields written as
``section__field=value`` (``dram__bytes_per_s=409.6e9``, ``dpe__macs_per_cycle__bf16=2048``);
a whole section can also be given as a dict (``pe_grid={"rows": 4, "cols": 4}``), which is
merged into the current one.

Sizes may be written as integers or as strings with a binary unit (``"384 KiB"``, ``"128 GiB"``).
Rates are bytes (or cycles) per second and must be whole numbers, so that the timing engines can
do exact integer arithmetic.
"""
from __future__ import annotations

import enum
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

CHIPS_DIR = Path(__file__).parent / "chips"
DTYPES = ("fp32", "bf16", "fp16", "int8")
#: Narrow formats a chip may have or not: a chip file lists the ones its DPE multiplies.
OPTIONAL_DTYPES = ("fp8", "mxfp8", "mxfp4")


class ChipSpecError(ValueError):
    """A chip file or a change to a chip is invalid; the message names field, value and rule."""


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def _parse_size(value: Any) -> Any:
    """'384 KiB' -> 393216; numbers pass through (pydantic checks them)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"expected a size such as 393216 or '384 KiB', got {value!r}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if n != int(n):
            raise ValueError(f"size {value!r} is not a whole number of bytes")
        return int(n)
    return value


def _whole(value: float) -> float:
    if value != int(value):
        raise ValueError(f"must be a whole number (exact integer timing), got {value!r}")
    return value


Size = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]
Rate = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Energy = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PerDtype(_Section):
    """One number per accelerator dtype: every chip has the first four; fp8 (OCP e4m3) and the
    OCP MX block formats mxfp8 and mxfp4 (simulator/isa/mx.py) only where the chip file lists them."""
    fp32: float = Field(ge=0)
    bf16: float = Field(ge=0)
    fp16: float = Field(ge=0)
    int8: float = Field(ge=0)
    fp8: float | None = Field(default=None, ge=0)
    mxfp8: float | None = Field(default=None, ge=0)
    mxfp4: float | None = Field(default=None, ge=0)

    def __getitem__(self, dtype: str) -> float:
        value = self.get(dtype)
        if value is None:
            raise KeyError(f"the chip has no {dtype} ({dtype} is not listed)")
        return value

    def get(self, dtype: str) -> float | None:
        """The number for `dtype`, or None where the chip does not list it."""
        if dtype not in DTYPES + OPTIONAL_DTYPES:
            raise KeyError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES + OPTIONAL_DTYPES)}")
        return getattr(self, dtype)

    def listed(self) -> tuple[str, ...]:
        """The dtypes this chip has."""
        return tuple(d for d in DTYPES + OPTIONAL_DTYPES if getattr(self, d) is not None)


class DpeModel(str, enum.Enum):
    """How the dot-product engine maps a GEMM onto its MACs.

    - cached_stream: MTIA-style; a K x N tile of one operand is cached in the engine and rows of
      the other are streamed from local memory, one row per cycle.
    - systolic_os / systolic_ws: an R x C systolic array, output or weight stationary; cycle
      counts follow SCALE-Sim's analytical model.
    """
    cached_stream = "cached_stream"
    systolic_os = "systolic_os"
    systolic_ws = "systolic_ws"


class PEGrid(_Section):
    """The 2D mesh of processing elements."""
    rows: PosInt
    cols: PosInt


class LocalMem(_Section):
    """Per-PE local memory (read + write combined bandwidth)."""
    bytes: Size
    bytes_per_s: Rate
    energy_pj_per_byte: Energy = 0.5
    check_whole_rate = field_validator("bytes_per_s")(_whole)


class Dpe(_Section):
    """Dot-product engine of one PE."""
    model: DpeModel = DpeModel.cached_stream
    macs_per_cycle: PerDtype
    n_tile: PosInt = 32                 # cached_stream: columns of the cached operand tile
    array_rows: PosInt = 32             # systolic: array shape R x C
    array_cols: PosInt = 32
    pass_overhead_cycles: NonNegInt = 8  # cached_stream: reload + pipeline per tile pass
    energy_pj_per_mac: PerDtype

    @model_validator(mode="after")
    def _shape_matches_macs(self) -> "Dpe":
        for d in self.macs_per_cycle.listed():
            macs = self.macs_per_cycle[d]
            if self.model is DpeModel.cached_stream:
                if macs != int(macs) or int(macs) % self.n_tile:
                    raise ValueError(f"macs_per_cycle.{d}={macs} must be a whole multiple of "
                                     f"n_tile={self.n_tile} for the cached_stream model")
            elif macs != self.array_rows * self.array_cols:
                raise ValueError(f"macs_per_cycle.{d}={macs} must equal array_rows*array_cols="
                                 f"{self.array_rows * self.array_cols}: a systolic cell does one "
                                 f"MAC per cycle in every dtype")
        if missing := [d for d in self.macs_per_cycle.listed() if self.energy_pj_per_mac.get(d) is None]:
            raise ValueError(f"energy_pj_per_mac.{missing[0]} is missing: macs_per_cycle lists {missing[0]}")
        return self


class Simd(_Section):
    """SIMD engine: elementwise ops, lookup-table functions, row reductions."""
    elems_per_cycle: PosInt
    lut_cycles: PosInt = 2              # cycles per vector for exp/gelu/... (table + interpolate)
    latency_cycles: NonNegInt = 4
    energy_pj_per_elem: Energy = 0.5


class Mlu(_Section):
    """Memory layout unit: transpose, slice, concat inside local memory."""
    bytes_per_cycle: PosInt
    latency_cycles: NonNegInt = 4
    energy_pj_per_byte: Energy = 0.2


class Reduce(_Section):
    """Reduction engine: accumulate partial sums and forward them to a neighbour PE."""
    elems_per_cycle: PosInt
    latency_cycles: NonNegInt = 2
    energy_pj_per_elem: Energy = 0.3


class VectorCycles(_Section):
    """Cycles per instruction of the vector core, by instruction class (simulator/isa/vector.py
    sorts RVV assembly into these). One instruction of a class issues per that many cycles; a
    vector instruction works on a whole register (`vlen_bytes`) at once."""
    scalar: PosInt = 1                  # integer ALU, moves, address arithmetic
    scalar_mem: PosInt = 2              # scalar loads and stores (local memory)
    branch: PosInt = 2                  # taken or not: an in-order core without prediction
    vector_config: PosInt = 1           # vsetvli / vsetivli
    vector_alu: PosInt = 1              # elementwise integer and float ops, moves, compares, merges
    vector_mem: PosInt = 2              # unit-stride vector loads and stores (local memory)
    vector_indexed: PosInt = 8          # indexed (gather / scatter) vector loads and stores
    vector_reduce: PosInt = 4           # reductions across a register, slides, permutes, moves to scalars
    divide: PosInt = 8                  # divides, remainders, square roots (scalar or vector)


class VectorCore(_Section):
    """The PE's RISC-V scalar core with its vector unit (RVV 1.0), which runs kernels compiled
    from LLVM IR for what the fixed-function engines cannot do (arg reductions, scans, gathers
    within local memory, sampling). Its time is its instructions' cycles (`cycles`), counted per
    loop body from the RVV assembly, plus `launch_cycles` per kernel call."""
    vlen_bytes: PosInt = 64             # the vector register length (VLEN / 8)
    launch_cycles: NonNegInt = 16       # the command processor hands a kernel to the core
    cycles: VectorCycles = VectorCycles()
    energy_pj_per_cycle: Energy = 2.0

    @field_validator("vlen_bytes")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 16 or v & (v - 1):
            raise ValueError(f"must be a power of two of at least 16 bytes (RVV's VLEN >= 128 bits), got {v}")
        return v


class Sram(_Section):
    """On-chip SRAM reached over the NoC; banks are independent bandwidth servers."""
    bytes: Size
    bytes_per_s: Rate
    banks: PosInt = 8
    interleave_bytes: PosInt = 256
    energy_pj_per_byte: Energy = 2.0
    check_whole_rate = field_validator("bytes_per_s")(_whole)


class Dram(_Section):
    """Off-chip DRAM; each channel is a bandwidth server of bytes_per_s / channels."""
    kind: str = "LPDDR5"
    bytes: Size
    bytes_per_s: Rate
    channels: PosInt
    interleave_bytes: PosInt = 256
    energy_pj_per_byte: Energy = 20.0
    check_whole_rate = field_validator("bytes_per_s")(_whole)


class Noc(_Section):
    """2D mesh NoC with XY routing; memory attaches at the north edge of each column."""
    link_bytes_per_s: Rate
    hop_latency_cycles: NonNegInt = 2
    energy_pj_per_byte_hop: Energy = 0.1
    check_whole_rate = field_validator("link_bytes_per_s")(_whole)


class HostLink(_Section):
    """Link to the host (PCIe): one bandwidth server, reached like memory at the north edge."""
    kind: str = "PCIe Gen5 x8"
    bytes_per_s: Rate
    energy_pj_per_byte: Energy = 10.0
    check_whole_rate = field_validator("bytes_per_s")(_whole)


class Dma(_Section):
    """Per-PE DMA engine."""
    latency_cycles: NonNegInt = 64


class Host(_Section):
    """The host CPU that runs the ops the chip does not (host steps), and sampling.

    A host step takes max(its FLOPs / flops_per_s, its bytes / bytes_per_s) plus
    op_overhead_s (framework dispatch); FLOPs are counted where the op has a kernel template
    to count them, otherwise a step is charged for its bytes only.
    """
    kind: str = "server CPU"
    flops_per_s: Rate
    bytes_per_s: Rate
    op_overhead_s: Annotated[float, Field(ge=0)] = 5.0e-6

    def step_seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.flops_per_s, nbytes / self.bytes_per_s) + self.op_overhead_s


class Area(_Section):
    """Die-area coefficients of the chip's process, in mm² (`simulator.area`): `ChipSpec.area_mm2`
    sums each block's count times its coefficient and divides by `utilization`, the share of the
    die the blocks fill (the rest: routing channels, power grid, pad ring). The defaults are
    TSMC N5-class estimates; chip files cite where theirs come from."""
    mac_mm2: Annotated[float, Field(ge=0)] = 4.2e-4           # per DPE MAC (counted in bf16)
    sram_mm2_per_mib: Annotated[float, Field(ge=0)] = 0.30
    local_mem_mm2_per_mib: Annotated[float, Field(ge=0)] = 0.60
    pe_logic_mm2: Annotated[float, Field(ge=0)] = 2.0         # per PE: its cores, SIMD, MLU, reduce, DMA
    noc_mm2_per_link_byte: Annotated[float, Field(ge=0)] = 1.0e-3   # per router, per byte/cycle of link
    dram_phy_mm2_per_gb_s: Annotated[float, Field(ge=0)] = 0.10
    host_phy_mm2_per_gb_s: Annotated[float, Field(ge=0)] = 0.125
    fixed_mm2: Annotated[float, Field(ge=0)] = 10.0            # control processor, PLLs, other I/O
    utilization: Annotated[float, Field(gt=0, le=1)] = 0.72


#: The host a chip file without a `host` section is attached to (mtia2i's).
DEFAULT_HOST = {"kind": "one socket of a 56-core server CPU", "flops_per_s": 3.6e12, "bytes_per_s": 153.6e9,
                "op_overhead_s": 5.0e-6}


class ChipSpec(BaseModel):
    """One accelerator variant. Frozen and hashable; ``fingerprint()`` keys compile caches."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    clock_hz: Rate
    pe_grid: PEGrid
    local_mem: LocalMem
    dpe: Dpe
    simd: Simd
    mlu: Mlu
    reduce: Reduce
    vector_core: VectorCore = VectorCore()
    sram: Sram
    dram: Dram
    noc: Noc
    host_link: HostLink
    host: Host = Host(**DEFAULT_HOST)
    dma: Dma = Dma()
    static_power_w: Energy = 0.0
    area: Area = Area()
    tdp_w: Annotated[float, Field(gt=0)] | None = None      # published thermal design power, if any

    check_whole_rate = field_validator("clock_hz")(_whole)

    # --- derived numbers -------------------------------------------------------------------
    @property
    def num_pes(self) -> int:
        return self.pe_grid.rows * self.pe_grid.cols

    def require_dtype(self, dtype: str) -> None:
        """A ChipSpecError naming the field when this chip's DPE does not multiply `dtype`."""
        if self.dpe.macs_per_cycle.get(dtype) is None:
            raise ChipSpecError(f"chip {self.name!r} has no {dtype} MACs: dpe.macs_per_cycle.{dtype} is not "
                                f"set (it lists {', '.join(self.dpe.macs_per_cycle.listed())})")

    def peak_ops_per_s(self, dtype: str) -> float:
        """Dense peak over all PEs; an op is a multiply or an add (2 per MAC)."""
        return 2.0 * self.dpe.macs_per_cycle[dtype] * self.num_pes * self.clock_hz

    @property
    def area_mm2(self) -> float:
        """Estimated die area (`simulator.area.area_breakdown`)."""
        from simulator.area import area_breakdown
        return area_breakdown(self)["total"]

    @property
    def dram_bytes_per_s(self) -> float:
        return self.dram.bytes_per_s

    @property
    def sram_bytes(self) -> int:
        return self.sram.bytes

    @property
    def local_mem_bytes(self) -> int:
        return self.local_mem.bytes

    # --- identity --------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Stable content hash (hex) of every field."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChipSpec) and self._fingerprint == other._fingerprint

    def with_(self, **changes: Any) -> "ChipSpec":
        """A new validated chip with some fields changed (see the module docstring)."""
        data = self.model_dump(mode="python")
        for key, value in changes.items():
            path = key.split("__")
            node = data
            for part in path[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise ChipSpecError(f"{self.name}: unknown field {key!r} in with_()")
                node = node[part]
            leaf = path[-1]
            if not isinstance(node, dict) or leaf not in node:
                raise ChipSpecError(f"{self.name}: unknown field {key!r} in with_()")
            if isinstance(value, dict) and isinstance(node[leaf], dict):
                node[leaf] = {**node[leaf], **value}
            else:
                node[leaf] = value
        return _validate(data, source=f"{self.name}.with_({', '.join(changes)})")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid chip spec {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<top level>"
        value = e.get("input")
        if isinstance(value, dict):
            value = "{...}"
        lines.append(f"  {field} = {value!r}: {e['msg']}")
    return "\n".join(lines)


def _validate(data: Any, source: str) -> ChipSpec:
    try:
        return ChipSpec.model_validate(data)
    except ValidationError as err:
        raise ChipSpecError(_format_errors(err, source)) from None


def list_chips() -> list[str]:
    """Names of the chips shipped under simulator/chips/."""
    return sorted(p.stem for p in CHIPS_DIR.glob("*.yaml"))


def load_chip(chip: "str | Path | ChipSpec") -> ChipSpec:
    """A ChipSpec from a chip name, a YAML path, or a ChipSpec (returned as is)."""
    if isinstance(chip, ChipSpec):
        return chip
    path = Path(chip)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = CHIPS_DIR / f"{chip}.yaml"
        if not path.exists():
            raise ChipSpecError(f"unknown chip {str(chip)!r}; known chips: {', '.join(list_chips())}"
                                f" (or give a path to a YAML file)")
    if not path.exists():
        raise ChipSpecError(f"chip file {str(path)!r} does not exist; known chips: "
                            f"{', '.join(list_chips())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ChipSpecError(f"invalid chip spec {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ChipSpecError(f"invalid chip spec {path}: expected a mapping of fields at top level")
    data.setdefault("name", path.stem)
    return _validate(data, source=str(path))
