"""The sweep file (YAML):

    base: mtia2i                          # a chip name or a chip file (relative to this file)
    vary:                                 # every combination is one chip variant (a grid)
      pe_grid.rows: [4, 8]
      local_mem.bytes: [256 KiB, 384 KiB, 512 KiB]
      dram.bytes_per_s: [102.4e9, 204.8e9, 409.6e9]
    workloads:
      - {spec: models:multimodal-small, dtype: bf16}
      - {spec: models:multimodal-7b-decode, dtype: bf16, timing_only: true}
      - {spec: models:hf-llama, generate: {prompt_len: 16, new_tokens: 4}}

A field is named by its dotted path in the chip file; its values are what the chip file takes
there (sizes with units, rates). A `generate` workload serves a causal LM through
`ember.generate` and gives two rows, its prefill (TTFT) and a decode step (TPOT).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compiler.errors import EmberError
from simulator.spec import ChipSpec, ChipSpecError, load_chip


class SweepFileError(EmberError, ValueError):
    """A sweep file that cannot be read; the message names the file and the field."""


class Generate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    prompt_len: int = Field(16, gt=0)
    new_tokens: int = Field(4, gt=1)
    batch: int = Field(1, gt=0)


class Workload(BaseModel):
    """One model to run on every chip variant."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: str
    dtype: str = "bf16"
    timing_only: bool = False
    generate: Generate | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        from compiler.pipeline import DTYPES
        if v not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {v!r}")
        return v

    @property
    def name(self) -> str:
        label = self.spec.removeprefix("models:")
        return f"{label} {self.dtype}" + (" generate" if self.generate else "")

    def key(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


class SweepFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    base: str
    vary: dict[str, list[Any]] = Field(default_factory=dict)
    workloads: list[Workload] = Field(min_length=1)

    @field_validator("vary")
    @classmethod
    def _values(cls, vary: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in vary.items():
            if not values:
                raise ValueError(f"vary.{path}: give at least one value")
        return vary


class Point:
    """One chip variant (its field values) and one workload."""

    def __init__(self, base: ChipSpec, values: dict[str, Any], workload: Workload):
        self.base, self.values, self.workload = base, values, workload

    def chip(self) -> ChipSpec:
        """The variant; a value the chip schema refuses raises ChipSpecError naming the field."""
        changes = {path.replace(".", "__"): value for path, value in self.values.items()}
        chip = self.base.with_(**changes) if changes else self.base
        return chip

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return f"{self.workload.name} on {self.base.name}" + (f" [{fields}]" if fields else "")


class Sweep:
    """A parsed sweep file: its base chip, grid and workloads, and the points they make."""

    def __init__(self, data: SweepFile, base: ChipSpec, source: str):
        self.file, self.base, self.source = data, base, source

    @property
    def fields(self) -> list[str]:
        return list(self.file.vary)

    def grid(self) -> list[dict[str, Any]]:
        names = self.fields
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.file.vary[n] for n in names))]

    def points(self) -> list[Point]:
        return [Point(self.base, values, w) for w in self.file.workloads for values in self.grid()]

    def base_values(self) -> dict[str, Any]:
        """The base chip's value of every varied field (None where the path names no field)."""
        data = self.base.model_dump(mode="python")
        out = {}
        for path in self.fields:
            node: Any = data
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[path] = node
        return out


def _resolve(spec: str, folder: Path) -> str:
    """A `path/to/file.py:factory` spec with its path taken from the sweep file's folder."""
    source, sep, factory = spec.rpartition(":")
    if sep and source.endswith(".py") and not Path(source).is_absolute():
        return f"{folder / source}:{factory}"
    return spec


def load_sweep(source: str | Path | dict) -> Sweep:
    """A Sweep from a YAML file (or its content as a dict); errors name the file and the field."""
    if isinstance(source, dict):
        raw, where, folder = source, "<sweep>", Path.cwd()
    else:
        path = Path(source)
        if not path.exists():
            raise SweepFileError(f"sweep file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SweepFileError(f"sweep file {path}: not valid YAML: {err}") from None
        where, folder = str(path), path.parent
    if not isinstance(raw, dict):
        raise SweepFileError(f"sweep file {where}: expected a mapping with base, vary and workloads")
    try:
        data = SweepFile.model_validate(raw)
    except ValidationError as err:
        lines = [f"sweep file {where}:"]
        for e in err.errors():
            lines.append(f"  {'.'.join(str(p) for p in e['loc']) or '<top level>'}: {e['msg']}")
        raise SweepFileError("\n".join(lines)) from None
    base_ref = data.base
    if base_ref.endswith((".yaml", ".yml")) and not Path(base_ref).is_absolute():
        base_ref = str(folder / base_ref)
    try:
        base = load_chip(base_ref)
    except ChipSpecError as err:
        raise SweepFileError(f"sweep file {where}: base: {err}") from None
    workloads = [w.model_copy(update={"spec": _resolve(w.spec, folder)}) for w in data.workloads]
    data = data.model_copy(update={"workloads": workloads})
    sweep = Sweep(data, base, where)
    unknown = [p for p, v in sweep.base_values().items() if v is None]
    if unknown:
        raise SweepFileError(f"sweep file {where}: vary: {', '.join(unknown)} name no field of the chip file "
                             f"(fields are dotted paths, e.g. dram.bytes_per_s)")
    return sweep
