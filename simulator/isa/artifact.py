"""The Program file: the versioned, checksummed artifact a compiler writes and a runtime loads.

It is the only contract between compiler and runtime (as a vmfb is in IREE), so it lives with the
ISA, the hardware contract both sides already share; loading one needs neither the compiler nor
torch. A Program holds:

- the chip spec it was compiled for, and the compute dtype;
- a tensor table: every value by id, with its shape, element type and, for values that live on
  the chip, where (space, address);
- the model's inputs and outputs (tensor ids), and its constants (weights), as arrays; the
  inputs it updates in place (device state such as a KV cache: `mutated_inputs`, positions in
  `inputs`), whose new contents are the last outputs, in that order;
- steps in order: `kernel` steps (an `ember` op run on the chip: its per-PE `ChipProgram`) and
  `host` steps (an op run on the host: the op name and attributes);
- kernels as command arrays with the LLVM modules their vector-core calls run (their table, in
  the header), or as another kernel's commands relocated (`RelocatedProgram`:
  the base kernel's index and one address delta per operand; the base stores its address
  slots), so a model's repeated layers are stored once;
- a SHA-256 checksum over everything else.

A file from another format version, or whose checksum does not match, is refused before
anything is read from it.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from simulator.isa.program import ChipProgram, RelocatedProgram
from simulator.isa.vector import VectorKernel, parse

#: Element types numpy files cannot hold, stored as their bits: the numpy dtype they are read back as.
_RAW_DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "f8E4M3FN": np.dtype(ml_dtypes.float8_e4m3fn)}

FORMAT = "ember-program"
VERSION = 6     # 2: relocated kernels (base + deltas), base kernels' address slots; 3: mutated inputs
#          4: indexed DMAs (gathers / scatters, DMA flags bits 3-4, a[6], a[7]), SIMD functions 18-28
#          5: fp8 and the MX block formats (dtypes 5-7), SIMD_MX_QUANT (opcode 13)
#          6: vector-core kernels (engine VEC, VEC_KERNEL opcode 14, a kernel's table of LLVM modules)


class ProgramFileError(ValueError):
    """A Program file that cannot be loaded: wrong format, version or checksum."""


@dataclass
class Program:
    """A compiled model, ready to run (see the module docstring)."""
    chip: dict[str, Any]                      # the ChipSpec as plain data
    dtype: str
    tensors: dict[int, dict[str, Any]]        # id -> {"shape", "dtype", "space"?, "addr"?, "isa_dtype"?}
    inputs: list[int]
    outputs: list[int]
    steps: list[dict[str, Any]]               # JSON-able step records
    kernels: list[ChipProgram] = field(default_factory=list)     # kernel steps refer by index
    constants: dict[int, np.ndarray] = field(default_factory=dict)  # tensor id -> value
    meta: dict[str, Any] = field(default_factory=dict)
    mutated_inputs: list[int] = field(default_factory=list)   # positions in `inputs` updated in place

    @property
    def user_outputs(self) -> list[int]:
        """The model's own outputs (the new contents of the mutated inputs follow them)."""
        return self.outputs[:len(self.outputs) - len(self.mutated_inputs)]

    # ------------------------------------------------------------------ file format
    def save(self, path: str) -> None:
        """Write atomically (a temporary file renamed into place)."""
        import os
        import tempfile
        members = self._members()
        digest = _digest(members)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".ember")
        try:
            with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in members.items():
                    z.writestr(name, data)
                z.writestr("checksum", digest)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str) -> "Program":
        try:
            with zipfile.ZipFile(path) as z:
                members = {name: z.read(name) for name in z.namelist()}
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ProgramFileError(f"{path}: not an Ember Program file, or a damaged one ({e})") from e
        if "header.json" not in members or "checksum" not in members:
            raise ProgramFileError(f"{path}: not an Ember Program file (no header or checksum)")
        header = json.loads(members["header.json"])
        if header.get("format") != FORMAT:
            raise ProgramFileError(f"{path}: not an Ember Program file (format {header.get('format')!r})")
        if header.get("version") != VERSION:
            raise ProgramFileError(f"{path}: Program format version {header.get('version')} is not "
                                   f"supported by this runtime (it reads version {VERSION}); recompile the model")
        stored = members.pop("checksum").decode()
        if _digest(members) != stored:
            raise ProgramFileError(f"{path}: checksum mismatch: the file is corrupted or was modified")
        arrays = {name[len("arrays/"):-len(".npy")]: np.load(io.BytesIO(data), allow_pickle=False)
                  for name, data in members.items() if name.startswith("arrays/")}
        kernels: list[ChipProgram] = []
        for i, k in enumerate(header["kernels"]):
            if "base" in k:
                kernels.append(RelocatedProgram(kernels[k["base"]], k["deltas"], name=k["name"]))
                continue
            prog = ChipProgram(arrays[f"kernel{i}.commands"], int(k["num_pes"]), k["name"],
                               arrays[f"kernel{i}.loops"], arrays[f"kernel{i}.strides"],
                               _vector_kernels(path, k["name"], k.get("vector_kernels", [])))
            if f"kernel{i}.addr_slots" in arrays:
                prog.addr_slots = arrays[f"kernel{i}.addr_slots"]
            kernels.append(prog)
        constants = {int(name[len("const"):]): arr for name, arr in arrays.items() if name.startswith("const")}
        for tid, arr in constants.items():
            if (raw := _RAW_DTYPES.get(header["tensors"][str(tid)]["dtype"])) is not None:
                constants[tid] = arr.view(raw)
        return cls(header["chip"], header["dtype"], {int(k): v for k, v in header["tensors"].items()},
                   header["inputs"], header["outputs"], header["steps"], kernels, constants, header["meta"],
                   header["mutated_inputs"])

    def _members(self) -> dict[str, bytes]:
        header = {"format": FORMAT, "version": VERSION, "chip": self.chip, "dtype": self.dtype,
                  "tensors": {str(k): v for k, v in self.tensors.items()}, "inputs": self.inputs,
                  "outputs": self.outputs, "steps": self.steps, "meta": self.meta,
                  "mutated_inputs": self.mutated_inputs, "kernels": []}
        members = {}
        index = {id(k): i for i, k in enumerate(self.kernels)}
        for i, k in enumerate(self.kernels):
            entry = {"name": k.name, "num_pes": k.num_pes}
            if isinstance(k, RelocatedProgram) and index.get(id(k.base), i) < i:
                entry.update(base=index[id(k.base)], deltas=[int(d) for d in k.deltas])
            else:       # a relocated kernel whose base is not stored before it is stored whole
                members[f"arrays/kernel{i}.commands.npy"] = _npy(k.commands)
                members[f"arrays/kernel{i}.loops.npy"] = _npy(k.loops)
                members[f"arrays/kernel{i}.strides.npy"] = _npy(k.strides)
                if k.addr_slots is not None:
                    members[f"arrays/kernel{i}.addr_slots.npy"] = _npy(k.addr_slots)
                if k.vector_kernels:
                    entry["vector_kernels"] = [vk.to_json() for vk in k.vector_kernels]
            header["kernels"].append(entry)
        members["header.json"] = json.dumps(header, sort_keys=True).encode()
        for tid, arr in self.constants.items():
            # numpy files have no bf16 or fp8: store their bits, the tensor table says what they are
            bits = {"bfloat16": np.uint16, "float8_e4m3fn": np.uint8}.get(arr.dtype.name)
            members[f"arrays/const{tid}.npy"] = _npy(arr if bits is None else arr.view(bits))
        return members


def _vector_kernels(path: str, kernel: str, entries: list[dict]) -> list[VectorKernel]:
    """A kernel's vector-core table, each module parsed now: a bad one refuses the file."""
    out = []
    for j, e in enumerate(entries):
        try:
            vk = VectorKernel.from_json(e)
            parse(vk.ir)
        except (KeyError, TypeError, ValueError) as err:
            raise ProgramFileError(f"{path}: kernel {kernel}: vector kernel {j} cannot be used: {err}") from err
        out.append(vk)
    return out


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr) if arr.ndim else np.array(arr), allow_pickle=False)
    return buf.getvalue()


def _digest(members: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(members):
        h.update(name.encode())
        h.update(len(members[name]).to_bytes(8, "little"))
        h.update(members[name])
    return h.hexdigest()
