"""The compiled multimodal model on the `cuda` device, against eager PyTorch on the same GPU.

    .venv/bin/python benchmarks/gpu_check.py [SPEC ...] [--runs N] [--dtype fp32|bf16]

For each model: compile to the graph phase, run on `cuda` and eagerly on fresh inputs, compare
(relative error), then time both properly: warm-up runs, CUDA events around each run, the median
of `--runs`. Without a CUDA GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

DEFAULT = ("models:multimodal-small", "models:multimodal-small-decode", "models:resnet-small")
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


def cuda_times(fn, runs: int, warmup: int = 5) -> list[float]:
    """Milliseconds per call, from CUDA events, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def check(spec: str, runs: int, dtype: str) -> dict:
    import ember
    from ember.demo import max_relative_error
    model, args = ember.load_model(spec)
    cm = ember.compile(model, args, chip="mtia2i", dtype=dtype, to="program", allow_unsupported=True)
    _, fresh = ember.load_model(spec)
    with torch.no_grad():
        ref_cpu = model(*fresh)
        sim = cm.run(*fresh, device="sim") if dtype == "bf16" else None
        model = model.to("cuda")
        gpu_in = tuple(x.to("cuda") for x in fresh)
        eager = model(*gpu_in)
        out = cm.run(*gpu_in, device="cuda")
        eager_ms = cuda_times(lambda: model(*gpu_in), runs)
        ember_ms = cuda_times(lambda: cm.run(*gpu_in, device="cuda"), runs)
    return {"spec": spec,
            "err_eager": max_relative_error(_cpu(out), ref_cpu),
            "err_gpu_eager": max_relative_error(_cpu(out), _cpu(eager)),
            "err_sim": None if sim is None else max_relative_error(_cpu(out), sim),
            "eager_ms": statistics.median(eager_ms), "ember_ms": statistics.median(ember_ms)}


def _cpu(tree):
    return torch.utils._pytree.tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dtype", default="fp32", choices=sorted(TOLERANCE))
    a = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch on this machine; nothing to check")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()}, dtype {a.dtype}, median of {a.runs} runs after warm-up (CUDA events)")
    print(f"{'model':34s} {'eager ms':>9s} {'cuda ms':>9s} {'ratio':>7s} {'err vs cpu eager':>17s} "
          f"{'err vs gpu eager':>17s} {'err vs sim':>11s}")
    failed = False
    for spec in a.specs:
        r = check(spec, a.runs, a.dtype)
        ok = r["err_eager"] <= TOLERANCE[a.dtype]
        failed |= not ok
        sim = "-" if r["err_sim"] is None else f"{r['err_sim']:.1e}"
        print(f"{spec:34s} {r['eager_ms']:9.3f} {r['ember_ms']:9.3f} {r['ember_ms'] / r['eager_ms']:6.2f}x "
              f"{r['err_eager']:17.1e} {r['err_gpu_eager']:17.1e} {sim:>11s} {'ok' if ok else 'OVER TOLERANCE'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
