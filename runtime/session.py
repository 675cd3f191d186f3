"""Sessions: device memory that lives across runs, as a served model's does.

    sess = cm.session(device="sim")     # loads the Program's weights once
    xd = sess.put(x)                    # host -> device, charged to the host link once
    yd = sess.run(xd)                   # device tensors in, device tensors out: no host link
    y = sess.get(yd)                    # device -> host, charged

A session belongs to one device (`sim`, `cpu`, `cuda`); each device module under
`runtime/devices/` supplies a `Backend` (how a tensor is held there, how a Program runs on
held tensors, and what a transfer costs). Inputs the model updates in place (device state,
such as a KV cache) are updated in their device tensors: `sess.run` changes their contents,
as the eager model changes its input tensors.

Sessions that serve several Programs from one copy of their weights and state (prefill and
decode) share one `DeviceMemory`: `cm_decode.session(share=prefill_session)`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from compiler.errors import DeviceMemoryError, EmberError, format_bytes
from ops.registry import DTYPE_TO_TORCH, TensorSpec


class SessionError(EmberError):
    """A device tensor used where it cannot be: from another session, after its session closed,
    or not a device tensor at all."""


_session_ids = itertools.count(1)


def torch_name(dtype: str) -> str:
    """`ember` element type -> PyTorch's name for it (`i64` -> `torch.int64`)."""
    return str(DTYPE_TO_TORCH.get(dtype, dtype))


def describe(spec: TensorSpec) -> str:
    """A tensor's shape and dtype in PyTorch's words: `(2, 8) torch.int64`."""
    return f"{tuple(spec.shape)} {torch_name(spec.dtype)}"


#: Bytes per element a tensor takes in device memory: integers and booleans are held as int32.
DEVICE_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "i64": 4, "i32": 4, "i16": 4, "i8": 1, "ui8": 1,
                   "i1": 4, "f8E4M3FN": 1}


def device_bytes(spec: TensorSpec) -> int:
    return spec.numel * DEVICE_ITEMSIZE.get(spec.dtype, 4)


@dataclass(eq=False)
class DeviceTensor:
    """A tensor held in a session's device memory (`payload` is the backend's own form)."""
    session: "Session"
    spec: TensorSpec
    payload: Any

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.spec.shape)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPE_TO_TORCH[self.spec.dtype]

    @property
    def nbytes(self) -> int:
        return device_bytes(self.spec)

    def __repr__(self) -> str:
        return f"DeviceTensor({describe(self.spec)}, session {self.session.id} on '{self.session.device}')"


@dataclass
class DeviceMemory:
    """What a group of sessions holds on one device: weights loaded (by name), and the bytes
    each space must hold. A served model's weights are loaded once for all its Programs."""
    device: str
    chip: Any = None
    loaded: set[tuple] = field(default_factory=set)       # (weight name, space, address)
    footprint: dict[str, int] = field(default_factory=dict)      # space -> bytes the Programs need
    tensors: int = 0                                             # bytes of tensors put or made
    #: device state of the Programs (inputs they update in place), by input name: its bytes are
    #: in `footprint`, so a tensor made on the device to be that state takes no more
    state: dict[str, TensorSpec] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)
    closed: bool = False

    def bind_state(self, spec: TensorSpec) -> bool:
        """Take a free state slot of `spec` (True), or say there is none (False)."""
        for name, s in self.state.items():
            if s == spec and name not in self.bound:
                self.bound.add(name)
                return True
        return False

    def capacity(self) -> int | None:
        if self.chip is None:
            return None
        return self.chip.sram_bytes + self.chip.dram.bytes

    def need(self, space: str, nbytes: int) -> None:
        self.footprint[space] = max(self.footprint.get(space, 0), nbytes)

    def take(self, nbytes: int, what: str) -> None:
        """Account `nbytes` more of tensors; refuse what would not fit, naming the sizes."""
        cap = self.capacity()
        used = sum(self.footprint.values()) + self.tensors
        if cap is not None and used + nbytes > cap:
            raise DeviceMemoryError(
                f"{what} ({format_bytes(nbytes)}) does not fit the device memory of {self.chip.name}: the "
                f"session's Programs need {format_bytes(sum(self.footprint.values()))} and its tensors "
                f"{format_bytes(self.tensors)}, of {format_bytes(cap)} (SRAM + DRAM)")
        self.tensors += nbytes


class Session:
    """Device memory that lives across runs of one compiled model (see the module docstring)."""

    def __init__(self, compiled: Any, device: str = "sim", share: "Session | None" = None):
        from runtime.devices import get_device
        module = get_device(device)
        backend_cls = getattr(module, "Backend", None)
        if backend_cls is None:
            raise ValueError(f"device '{device}' has no sessions (it runs a graph once: use cm.run)")
        if share is not None:
            share._check_open()
            if share.device != device:
                raise SessionError(f"cannot share session {share.id} on '{share.device}' with a session on '{device}'")
        self.id = next(_session_ids)
        self.device = device
        self.compiled = compiled
        self.memory = share.memory if share is not None else DeviceMemory(device)
        self.backend = backend_cls(compiled, self.memory)
        names, specs = compiled.input_names, compiled.input_specs
        for i in compiled.mutated_inputs:
            self.memory.state.setdefault(names[i], specs[i])
        #: seconds spent so far, by where they went: device, host_link, host (and load: weights)
        self.totals: dict[str, float] = {"device": 0.0, "host_link": 0.0, "host": 0.0}
        self.load_seconds = self.backend.load()
        self.last_run = None

    # ------------------------------------------------------------------ handles
    def _check_open(self) -> None:
        if self.memory.closed:
            raise SessionError(f"session {self.id} on '{self.device}' is closed")

    def _own(self, x: Any, label: str) -> DeviceTensor:
        if not isinstance(x, DeviceTensor):
            kind = "a torch tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise SessionError(f"{label} is {kind}, not a device tensor: sess.run takes what sess.put returned "
                               "(cm.run takes host tensors)")
        if x.session.memory is not self.memory:
            raise SessionError(f"{label} belongs to session {x.session.id}, not to session {self.id}: a device "
                               "tensor lives in the memory of the session that made it")
        if self.memory.closed:
            raise SessionError(f"{label} was used after its session ({self.id} on '{self.device}') was closed")
        return x

    def _charge(self, seconds: float, where: str = "host_link") -> None:
        self.totals[where] += seconds

    # ------------------------------------------------------------------ transfers
    def put(self, x: torch.Tensor) -> DeviceTensor:
        """Copy `x` into device memory over the modelled host link (charged once)."""
        self._check_open()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"sess.put takes a torch.Tensor, got {type(x).__name__}")
        spec = TensorSpec.of(x)
        self.memory.take(device_bytes(spec), f"a tensor {describe(spec)}")
        payload, seconds = self.backend.put(x, spec)
        self._charge(seconds)
        return DeviceTensor(self, spec, payload)

    def zeros(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> DeviceTensor:
        """A device tensor of zeros made on the device (a memset: nothing crosses the host link),
        e.g. a KV cache before the first prompt."""
        self._check_open()
        spec = TensorSpec.of(torch.empty(0, dtype=dtype)).with_(shape=tuple(int(s) for s in shape))
        if not self.memory.bind_state(spec):
            self.memory.take(device_bytes(spec), f"a tensor {describe(spec)}")
        payload, seconds = self.backend.zeros(spec)
        self._charge(seconds, "device")
        return DeviceTensor(self, spec, payload)

    def get(self, x: DeviceTensor) -> torch.Tensor:
        """Copy a device tensor back to the host over the modelled host link (charged)."""
        x = self._own(x, "the tensor given to sess.get")
        tensor, seconds = self.backend.get(x.payload, x.spec)
        self._charge(seconds)
        return tensor

    # ------------------------------------------------------------------ running
    def run(self, *inputs: DeviceTensor, timing_only: bool = False, routing: Any = None) -> Any:
        """Run the compiled model on device tensors; its outputs stay on the device (device
        tensors, shaped as the model's outputs). Inputs the model updates in place (its device
        state) are updated in their device tensors. `routing`: what a timing-only run assumes
        for a mixture-of-experts layer ("uniform", "skewed" or weights; runtime/routing.py)."""
        self._check_open()
        compiled = self.compiled
        names = compiled.input_names
        held = [self._own(x, f"input {i} ('{names[i]}')" if i < len(names) else f"input {i}")
                for i, x in enumerate(inputs)]
        compiled.check_specs([x.spec for x in held])
        outs, states, result = self.backend.run([x.payload for x in held], timing_only=timing_only, routing=routing)
        for i, payload in zip(compiled.mutated_inputs, states):
            held[i].payload = payload
        for where, seconds in result.breakdown.items():
            self._charge(seconds, where)
        self.last_run = result
        specs = compiled.output_specs
        device_outs = [DeviceTensor(self, spec, p) for spec, p in zip(specs, outs)]
        return torch.utils._pytree.tree_unflatten(device_outs, compiled.out_spec)

    @property
    def seconds(self) -> float:
        """Seconds spent on this session's device memory so far (loads aside)."""
        return sum(self.totals.values())

    def close(self) -> None:
        """Free the device memory; device tensors of this session can no longer be used."""
        self.memory.closed = True

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.memory.closed else "open"
        return f"Session({self.id}, device='{self.device}', {state})"


__all__ = ["Session", "SessionError", "DeviceTensor", "DeviceMemory", "describe", "torch_name"]
