"""Greedy generation with the KV cache in device memory: what `ember.generate` runs.

One session holds the weights (loaded once) and the caches (made on the device, zeros). Both
graphs end in the greedy pick (`GreedyHead`: argmax over the vocabulary, on the vector core), so
logits never leave the chip. The prompt goes up, the prefill writes the caches and picks the
first token; each decode step takes the token the step before picked (it stays on the device)
and the position (up), runs, and sends its token down to the host. Nothing else crosses the host
link: per step, a token id per sequence each way and the position.

Reported times are the session's modelled seconds:
- `ttft_s`: from the prompt's upload to the first token on the host;
- `step_s`: each decode step, from its token's upload to the next token on the host;
- `tpot_s`: their mean; `tokens_per_s`: batch / tpot_s;
- `breakdown`: for "prefill" and for a mean decode "step", seconds in GEMMs ("weights": in
  decode, streaming the weights), "attention" (over the cache), "other" kernels, "host_link",
  "host".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from compiler.errors import DeviceMemoryError, EmberError, format_bytes
from ember.compiled import compile as ember_compile
from models.serving import ServingGraphs, prompt_positions, serving_graphs
from simulator.isa.mx import FORMATS as MX_FORMATS

#: kernel ops whose time is the weights' (GEMMs: in decode they stream every weight once)
GEMM_OPS = frozenset({"linear", "matmul"})
#: bytes per element of the weights and the KV cache per compile dtype (contraction operands)
_NARROW_BYTES = {"fp32": 4, "bf16": 2, "int8": 1, "fp8": 1, **{n: f.value_bytes for n, f in MX_FORMATS.items()}}


class GreedyHead(torch.nn.Module):
    """A serving graph (logits (B, 1, vocab)) followed by the greedy pick: token ids (B, 1)."""

    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.lm = graph

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.lm(*args)[:, -1].argmax(dim=-1, keepdim=True)


class CacheTooShortError(EmberError, ValueError):
    """The prompt and the tokens to generate need more cache positions than there are."""


@dataclass
class Generation:
    """What `ember.generate` returns (see the module docstring)."""
    tokens: torch.Tensor | None          # (batch, max_new_tokens) int64; None when timing-only
    ttft_s: float
    step_s: list[float]
    batch: int
    prompt_len: int
    max_cache_len: int
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    prefill: Any = None                  # the compiled models, for their IR and Programs
    decode: Any = None
    # the device's RunResult of the prefill and of the last decode step (stats, energy)
    runs: dict[str, Any] = field(default_factory=dict)

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (seconds per decode step)."""
        return sum(self.step_s) / len(self.step_s) if self.step_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: tokens of every sequence of the batch per second."""
        return self.batch / self.tpot_s if self.tpot_s else 0.0

    def __repr__(self) -> str:
        return (f"Generation(batch={self.batch}, new_tokens={len(self.step_s) + 1}, ttft={self.ttft_s * 1e3:.3f} ms, "
                f"tpot={self.tpot_s * 1e3:.3f} ms, {self.tokens_per_s:,.1f} tokens/s)")


def _where(run: Any) -> dict[str, float]:
    """A run's seconds by kind of work (see the module docstring)."""
    out = {"weights": 0.0, "attention": 0.0, "other": 0.0, "host_link": 0.0, "host": 0.0}
    clock = run.chip.clock_hz
    for s in run.steps:
        if s.kind == "transfer":
            out["host_link"] += s.cycles / clock
        elif s.kind == "host":
            out["host"] += s.cycles / clock
        elif s.op in GEMM_OPS:
            out["weights"] += s.cycles / clock
        elif s.op == "attention":
            out["attention"] += s.cycles / clock
        else:
            out["other"] += s.cycles / clock
    return out


def check_fits(graphs: ServingGraphs, chip: Any, dtype: str) -> None:
    """Refuse, before compiling, weights and caches that cannot fit the chip's memories."""
    itemsize = _NARROW_BYTES[dtype]
    weights = graphs.weight_elements * itemsize
    caches = sum(torch.Size(s).numel() for s in graphs.cache_shapes) * itemsize
    capacity = chip.sram_bytes + chip.dram.bytes
    if weights + caches > capacity:
        raise DeviceMemoryError(
            f"{graphs.name} at batch {graphs.batch} with {graphs.cache_shapes[0][2]} cache positions does not fit "
            f"{chip.name}: weights {format_bytes(weights)} + KV cache {format_bytes(caches)} > "
            f"{format_bytes(capacity)} (SRAM {format_bytes(chip.sram_bytes)} + DRAM {format_bytes(chip.dram.bytes)})")


def generate(model: torch.nn.Module, prompt: Any, max_new_tokens: int = 16, *, chip: Any, dtype: str = "bf16",
             device: str = "sim", timing_only: bool = False, max_cache_len: int | None = None,
             cache: Any = None, routing: Any = None) -> Generation:
    """See `ember.generate`."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if timing_only and device != "sim":
        raise ValueError("timing_only=True runs on device='sim' (the other devices compute numbers)")
    positions = prompt_positions(model, prompt)
    needed = positions + max_new_tokens - 1          # the last token is sampled, never written
    length = needed if max_cache_len is None else max_cache_len
    if needed > length:
        raise CacheTooShortError(f"the prompt ({positions} positions) and {max_new_tokens} new tokens need "
                                 f"{needed} cache positions, but the cache holds {length} (max_cache_len)")
    graphs = serving_graphs(model, prompt, length)
    if graphs.max_positions is not None and needed > graphs.max_positions:
        raise CacheTooShortError(f"the prompt ({positions} positions) and {max_new_tokens} new tokens need {needed} "
                                 f"positions, but {graphs.name} has {graphs.max_positions} "
                                 "(max_position_embeddings)")
    check_fits(graphs, chip, dtype)
    meta = timing_only or any(t.is_meta for t in graphs.prompt)
    where = "meta" if meta else "cpu"
    caches = [torch.zeros(s, dtype=graphs.cache_dtype, device=where) for s in graphs.cache_shapes]
    token = torch.zeros(graphs.batch, 1, dtype=torch.int64, device=where)
    position = torch.tensor([positions], dtype=torch.int64, device=where)
    prompt_in = tuple(t.to(where) if t.is_meta != meta else t for t in graphs.prompt)
    cm_prefill = ember_compile(GreedyHead(graphs.prefill).eval(), (*prompt_in, *caches), chip=chip, dtype=dtype,
                               cache=cache)
    cm_decode = ember_compile(GreedyHead(graphs.decode).eval(), (token, position, *caches), chip=chip, dtype=dtype,
                              cache=cache, share=cm_prefill)
    del caches
    with cm_prefill.session(device) as sess:
        dsess = cm_decode.session(device, share=sess)
        state = [sess.zeros(s, graphs.cache_dtype) for s in graphs.cache_shapes]

        start = sess.seconds
        picked = sess.run(*(sess.put(t) for t in prompt_in), *state, timing_only=meta, routing=routing)
        tokens = [sess.get(picked)]
        ttft = sess.seconds - start
        runs = {"prefill": sess.last_run}
        prefill_where = _where(sess.last_run)
        prefill_where["host_link"] += ttft - sess.last_run.seconds
        steps, step_where = [], {}
        for i in range(1, max_new_tokens):
            start = dsess.seconds
            pos = torch.tensor([positions + i - 1], dtype=torch.int64, device=where)
            picked = dsess.run(picked, dsess.put(pos), *state, timing_only=meta, routing=routing)
            tokens.append(dsess.get(picked))
            steps.append(dsess.seconds - start)
            runs["step"] = dsess.last_run
            w = _where(dsess.last_run)
            w["host_link"] += steps[-1] - dsess.last_run.seconds
            for k, v in w.items():
                step_where[k] = step_where.get(k, 0.0) + v / (max_new_tokens - 1)
    out = None if meta else torch.cat(tokens, dim=1)
    breakdown = {"prefill": prefill_where}
    if step_where:
        breakdown["step"] = step_where
    return Generation(out, ttft, steps, graphs.batch, positions, length, breakdown, cm_prefill, cm_decode, runs)
