"""fuse-epilogues: elementwise ops folded into the epilogue of the contraction they follow.

`linear -> gelu` or `matmul -> add(residual)` would otherwise be two kernels: the GEMM stores
its result and an elementwise kernel reads it back. Where the GEMM's result has exactly one
reader, and that reader is an on-chip `unary` or `binary` the GEMM's template can apply to each
output tile (`accepts_epilogue`), the GEMM takes over the elementwise op's result, records the
step in `attrs["epilogue"]`, and the elementwise op leaves the graph; so does the intermediate
value, which the memory plan then never allocates. A binary step's other operand (result-shaped:
a residual, the other half of a gated unit) becomes an added operand of the GEMM, at the first
position past the ones its kernel declares (data, weight, bias, dequantization vector, row
scales):

    ("unary", kind, alpha, beta)            kind(acc)
    ("binary", kind, position, side)        acc kind other (side 0) or other kind acc (side 1)

Steps chain (linear -> silu -> mul), each applied in order. The fused GEMM runs where the last
op it absorbed ran, so that every added operand exists by then.

An elementwise op the vector core runs (`ops/kernels/vector_elementwise.py`: sqrt, integer
division, ...) takes an epilogue the same way, where its template accepts the step: the chain
(`a % n // d`, `x.sqrt().floor()`) becomes one vector-core kernel. Its steps also name how the
value they read is held (a fifth entry, the ISA dtype), so that the kernel rounds between steps
as the separate ops' stores did; a binary step's operand goes at the first position past the
op's own.

Meaning is kept: the GEMM's result must be held in fp32 (the dtype pass's storage; an int8
GEMM's epilogue dequantizes to fp32 first), as the elementwise kernel would have read it, and
only the last step rounds to the stored result's dtype, as the elementwise kernel's store did.
Runs after dtype lowering (it reads `graph.storage`), before the memory plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.graph_ops import GraphOp, GraphOps
from compiler.passes.base import Fusion, OpsPass
from ops.kernel import kernel_for

#: Contractions whose epilogue can take elementwise steps.
CONTRACTIONS = ("linear", "matmul")
#: Every op whose template may take an epilogue (`accepts_epilogue`).
HEADS = (*CONTRACTIONS, "unary", "binary")
#: Operand positions a contraction's kernel declares (data, weight, bias, dequantization vector,
#: per-row activation scales); a fused step's added operands follow.
DECLARED_OPERANDS = 5


@dataclass(frozen=True)
class FuseEpilogues(Fusion, OpsPass):
    """Fold single-reader `unary` / `binary` ops into the epilogue of the linear / matmul (or
    vector-core elementwise op) whose result they read, where its template accepts the step."""
    name: str = "fuse-epilogues"

    def rewrite(self, graph: GraphOps) -> GraphOps:
        readers: dict[int, list[GraphOp]] = {}
        for op in graph.ops:
            for v in op.operands:
                if v is not None:
                    readers.setdefault(v, []).append(op)
        outputs = set(graph.outputs)
        absorbed: set[int] = set()               # id() of the elementwise ops taken in
        runs_at: dict[int, GraphOp] = {}         # id() of an absorbed op -> the GEMM that runs there
        for op in graph.ops:
            if op.target != "accelerator" or op.name not in HEADS or id(op) in absorbed:
                continue
            accepts = getattr(kernel_for(op.name), "accepts_epilogue", None)
            if accepts is None:
                continue
            last = None
            while (user := self._fusable(graph, op, readers, outputs, accepts)) is not None:
                self._absorb(graph, op, user, readers)
                absorbed.add(id(user))
                last = user
            if last is not None:
                runs_at[id(last)] = op
        if not runs_at:
            return graph
        moved = {id(op) for op in runs_at.values()}
        ops = []
        for op in graph.ops:
            if id(op) in runs_at:
                ops.append(runs_at[id(op)])
            elif id(op) not in absorbed and id(op) not in moved:
                ops.append(op)
        for i, op in enumerate(ops):
            op.index = i
        graph.ops = ops
        return graph

    @staticmethod
    def _declared(op: GraphOp) -> int:
        """Where a binary step's operand goes: past the operands `op`'s kernel declares."""
        return max(len(op.operands), DECLARED_OPERANDS if op.name in CONTRACTIONS else 0)

    @staticmethod
    def _step(graph: GraphOps, op: GraphOp, user: GraphOp, v: int) -> tuple | None:
        """The epilogue entry of `user` reading `v` (the result of `op`), or None."""
        held = () if op.name in CONTRACTIONS else (graph.storage.get(v),)
        if user.attrs.get("epilogue"):            # a head itself: its steps stay its own
            return None
        if user.name == "unary" and list(user.operands) == [v]:
            return ("unary", user.attrs["kind"], float(user.attrs.get("alpha") or 0.0),
                    float(user.attrs.get("beta") or 0.0), *held)
        if user.name == "binary" and len(user.operands) == 2 and user.operands.count(v) == 1:
            side = user.operands.index(v)
            return ("binary", user.attrs["kind"], FuseEpilogues._declared(op), side, *held)
        return None

    def _fusable(self, graph: GraphOps, op: GraphOp, readers, outputs, accepts) -> GraphOp | None:
        """The one reader of `op`'s result, if its step can join `op`'s epilogue."""
        v = op.results[0]
        users = readers.get(v, [])
        if v in outputs or len(users) != 1 or len(op.results) != 1:
            return None
        user = users[0]
        if user.target != "accelerator" or len(user.results) != 1:
            return None
        if graph.specs[user.results[0]].shape != graph.specs[v].shape:
            return None
        # the elementwise kernel read the value in fp32; the GEMM's epilogue holds it in fp32 too
        if op.name in CONTRACTIONS and (graph.storage.get(v) != "fp32" or not graph.specs[user.results[0]].is_float):
            return None
        step = self._step(graph, op, user, v)
        if step is None:
            return None
        other = None
        if step[0] == "binary":
            other = graph.specs[user.operands[1 - step[3]]]
        specs = [None if u is None else graph.specs[u] for u in op.operands]
        if not accepts(op.name, specs, graph.specs[v], step, other, attrs=op.attrs):
            return None
        return user

    @staticmethod
    def _absorb(graph: GraphOps, op: GraphOp, user: GraphOp, readers) -> None:
        v = op.results[0]
        step = FuseEpilogues._step(graph, op, user, v)
        if step[0] == "binary":
            other = user.operands[1 - step[3]]
            operands = list(op.operands) + [None] * (FuseEpilogues._declared(op) - len(op.operands))
            op.operands = operands + [other]
            readers[other] = [op if r is user else r for r in readers[other]]
        op.attrs = {**op.attrs, "epilogue": (*op.attrs.get("epilogue", ()), step)}
        op.results = list(user.results)
        readers.pop(v, None)
        graph.storage.pop(v, None)
