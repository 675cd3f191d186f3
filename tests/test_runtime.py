"""The runtime: the cpu/cuda devices, partitioned Programs with host segments, input checking,
the torch.compile backend and `ember run`. Every comparison is against eager PyTorch on fresh
random inputs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ember
from compiler.errors import EmberError
from runtime.host import HostCallError, decode_host_call
from tests.helpers import rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_CUDA = torch.cuda.is_available()
TOL = {"fp32": 1e-4, "bf16": 2e-2}


def _fresh(spec):
    return ember.load_model(spec)[1]      # same seeded weights, new random inputs


def _eager(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def _to_cpu(tree):
    return torch.utils._pytree.tree_map(lambda t: t.cpu(), tree)


# ---------------------------------------------------------------------- one model, every device
@pytest.mark.parametrize("spec,dtype", [("models:multimodal-tiny", "fp32"), ("models:multimodal-tiny-decode", "fp32"),
                                        ("models:resnet-tiny", "fp32"), ("models:multimodal-tiny", "bf16")])
def test_same_compiled_model_on_sim_cpu_and_cuda(spec, dtype):
    model, example = ember.load_model(spec)
    cm = ember.compile(model, example, chip="tiny", dtype=dtype, to="program")
    fresh = _fresh(spec)
    ref = _eager(model, fresh)
    outs = {"sim": cm.run(*fresh, device="sim"), "cpu": cm.run(*fresh, device="cpu")}
    if HAS_CUDA:
        outs["cuda"] = _to_cpu(cm.run(*(x.cuda() for x in fresh), device="cuda"))
    for device, out in outs.items():
        assert rel_err(out, ref) <= TOL[dtype], f"{device}: {rel_err(out, ref):.2e}"
    assert rel_err(outs["cpu"], outs["sim"]) <= TOL[dtype]
    if dtype == "bf16":   # kernel steps round to bf16 on cpu as on the chip: not fp32 results
        assert rel_err(outs["cpu"], ref) > 1e-5


@pytest.mark.parametrize("activations,steps", [("per-row", ("quantize_rows",)),
                                               ("per-tensor", ("quantize",))])
def test_int8_program_on_cpu_computes_what_the_chip_does(activations, steps):
    """Quantize steps and int8 GEMMs (integer accumulators, dequantized in fp32, a fused epilogue)
    on the cpu device give the simulator's numbers."""
    from tests.helpers import Mlp
    torch.manual_seed(0)
    model = Mlp().eval()
    rows = torch.logspace(-1, 1, 8)[:, None]        # rows of different magnitudes
    cm = ember.compile(model, (torch.randn(8, 32) * rows,), chip="tiny", dtype="int8", int8_activations=activations,
                       quantize_head=True)
    ops = [s["op"] for s in cm.program.steps]
    assert all(ops.count(op) == 2 for op in steps)
    x = torch.randn(8, 32) * rows
    sim, cpu = cm.run(x, device="sim"), cm.run(x, device="cpu")
    assert rel_err(cpu, sim) <= 1e-6
    assert 1e-4 < rel_err(cpu, _eager(model, (x,))) <= 5e-2      # int8, not fp32, numbers


def test_cpu_runs_a_graph_phase_compile():
    model, example = ember.load_model("models:multimodal-tiny")
    cm = ember.compile(model, example, chip="tiny", dtype="fp32", to="graph")
    fresh = _fresh("models:multimodal-tiny")
    assert rel_err(cm.run(*fresh, device="cpu"), _eager(model, fresh)) <= 1e-4


@pytest.mark.skipif(HAS_CUDA, reason="checks the message given where there is no GPU")
def test_cuda_without_a_gpu_says_so():
    model, example = ember.load_model("models:resnet-tiny")
    cm = ember.compile(model, example, chip="tiny", dtype="fp32", to="graph")
    with pytest.raises(ValueError, match="on 'cuda'"):       # cpu inputs are refused first
        cm.run(*example, device="cuda")


# ---------------------------------------------------------------------- partitioned Programs
class WithHostOps(torch.nn.Module):
    """Two layers around ops no chip here has (`i0`, `cumsum`)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 8)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.up(x))
        h = torch.special.i0(0.1 * torch.cumsum(h, dim=-1))
        return self.down(h)


def test_partitioned_program_saves_loads_and_runs_its_host_segments(tmp_path):
    torch.manual_seed(0)
    model = WithHostOps().eval()
    x = torch.randn(4, 16)
    cm = ember.compile(model, (x,), chip="tiny", dtype="fp32", allow_unsupported=True)
    assert [u.target for u in cm.unsupported] == ["aten.i0.default"]
    kinds = {s["kind"] for s in cm.program.steps}
    assert {"kernel", "host"} <= kinds
    path = str(tmp_path / "m.ember")
    cm.save(path)
    loaded = ember.load(path)
    assert loaded.host_calls is None and loaded.graph is None     # nothing from the compile but the file
    fresh = torch.randn(4, 16)
    ref = _eager(model, (fresh,))
    for device in ("cpu", "sim"):
        assert rel_err(loaded.run(fresh, device=device), ref) <= 1e-4, device
    run = loaded.last_run
    transfers = [s for s in run.steps if s.kind == "transfer"]
    assert transfers and run.stats["bytes"]["host_link"] > 0
    assert sum(s.cycles for s in transfers) > 0                # the host link costs time


@pytest.mark.parametrize("timing_only", [False, True])
def test_a_run_counts_the_commands_it_simulated(timing_only):
    model, example = ember.load_model("models:multimodal-tiny")
    cm = ember.compile(model, example, chip="tiny", dtype="fp32")
    cm.run(*_fresh("models:multimodal-tiny"), device="sim", timing_only=timing_only)
    kernels = [cm.program.kernels[s["kernel"]] for s in cm.program.steps if s["kind"] == "kernel"]
    assert cm.last_run.stats["commands"] == sum(len(k.expand().commands) for k in kernels) > 0


def test_host_call_that_this_process_cannot_run_is_refused_by_name():
    with pytest.raises(HostCallError, match="nosuchlib.frobnicate.default"):
        decode_host_call({"target": "nosuchlib.frobnicate.default", "args": [{"$tensor": 0}], "kwargs": {}})
    with pytest.raises(HostCallError, match="not written"):
        decode_host_call("host call 'f' is not a registered torch op")


def test_unwritable_host_call_refuses_save(tmp_path):
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) + 1

    cm = ember.compile(M().eval(), (torch.randn(3, 4),), chip="tiny", dtype="fp32")
    # what codegen records for a host call it cannot write down (see compiler/hostcalls.py)
    cm.program.meta["host_calls"] = ["host call 'python_only' is not a registered torch op"]
    with pytest.raises(EmberError, match="python_only"):
        cm.save(str(tmp_path / "m.ember"))
    assert not os.path.exists(tmp_path / "m.ember")


# ---------------------------------------------------------------------- input checking
class Two(torch.nn.Module):
    def forward(self, tokens, image):
        return image.mean(dim=(1, 2)) + tokens.float().sum()


@pytest.fixture(scope="module")
def two():
    return ember.compile(Two().eval(), (torch.randint(0, 9, (2,)), torch.randn(3, 4, 5)), chip="tiny",
                         dtype="fp32", to="graph")


@pytest.mark.parametrize("device", ["reference", "cpu"])
def test_wrong_inputs_are_named_before_anything_runs(two, device):
    good = (torch.randint(0, 9, (2,)), torch.randn(3, 4, 5))
    assert rel_err(two.run(*good, device=device), Two()(*good)) <= 1e-5
    with pytest.raises(ValueError, match=r"input 1 \('image'\) is \(3, 4, 6\) torch.float32, but the model was "
                                         r"compiled for \(3, 4, 5\) torch.float32"):
        two.run(good[0], torch.randn(3, 4, 6), device=device)
    with pytest.raises(ValueError, match=r"input 0 \('tokens'\) is \(2,\) torch.float32, .* torch.int64$"):
        two.run(good[0].float(), good[1], device=device)
    with pytest.raises(ValueError, match=r"input 1 \('image'\) is on device 'meta'.*'cpu'"):
        two.run(good[0], torch.empty(3, 4, 5, device="meta"), device=device)
    with pytest.raises(TypeError, match=r"takes 2 input\(s\) \(tokens, image\), got 1"):
        two.run(good[0], device=device)


# ---------------------------------------------------------------------- torch.compile
@pytest.fixture
def report():
    ember.torch_compile_report(reset=True)
    torch._dynamo.reset()
    yield
    ember.torch_compile_report(reset=True)
    torch._dynamo.reset()


@pytest.mark.parametrize("spec,device", [("models:multimodal-tiny", "sim"), ("models:resnet-tiny", "sim"),
                                         ("models:multimodal-tiny-decode", "cpu")])
def test_torch_compile_matches_eager(report, spec, device):
    model, example = ember.load_model(spec)
    fn = torch.compile(model, backend="ember", options={"chip": "tiny", "dtype": "fp32", "device": device})
    fresh = _fresh(spec)
    assert rel_err(_eager(fn, fresh), _eager(model, fresh)) <= 1e-4
    rep = ember.torch_compile_report()
    assert rep.subgraphs and all(s.fallback is None and s.runs == 1 for s in rep.subgraphs)
    assert sum(s.on_device for s in rep.subgraphs) > 0
    if device == "sim":
        assert rep.cycles > 0 and f"{rep.subgraphs[0].last_cycles:,} cycles" in str(rep)


def test_torch_compile_puts_missing_ops_on_the_host_and_says_so(report):
    torch.manual_seed(0)
    model = WithHostOps().eval()
    fn = torch.compile(model, backend="ember", options={"chip": "tiny", "dtype": "fp32"})
    x = torch.randn(4, 16)
    assert rel_err(_eager(fn, (x,)), _eager(model, (x,))) <= 1e-4
    (sub,) = ember.torch_compile_report().subgraphs
    assert sub.on_host.get("host:aten.i0.default") == 1 and sub.on_device >= 2
    assert sub.last_cycles > 0
    assert "host:aten.i0.default x1" in str(ember.torch_compile_report())


def test_torch_compile_in_bf16_and_from_the_compile_cache(report, tmp_path):
    model, _ = ember.load_model("models:multimodal-tiny")
    options = {"chip": "tiny", "dtype": "bf16", "device": "sim", "cache": str(tmp_path)}
    fresh = _fresh("models:multimodal-tiny")
    ref = _eager(model, fresh)
    first = _eager(torch.compile(model, backend="ember", options=options), fresh)
    torch._dynamo.reset()                    # as a new process would: dynamo compiles again
    second = _eager(torch.compile(model, backend="ember", options=options), fresh)
    assert rel_err(first, ref) <= 2e-2 and rel_err(second, first) == 0.0
    subs = ember.torch_compile_report().subgraphs
    built = [s.compiled.timings for s in subs[: len(subs) // 2]]
    loaded = [s.compiled.timings for s in subs[len(subs) // 2:]]
    assert all("codegen" in t for t in built) and not any("codegen" in t for t in loaded)


@pytest.mark.parametrize("dtype,low,high", [("bf16", 1e-5, 2e-2), ("int8", 1e-4, 5e-2)])
def test_torch_compile_on_cpu_keeps_the_compile_dtype(report, dtype, low, high):
    from tests.helpers import Mlp
    torch.manual_seed(0)
    model = Mlp().eval()
    fn = torch.compile(model, backend="ember", options={"chip": "tiny", "dtype": dtype, "device": "cpu"})
    x = torch.randn(8, 32)
    assert low < rel_err(_eager(fn, (x,)), _eager(model, (x,))) <= high


def test_torch_compile_with_a_graph_break(report):
    class Breaks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            torch._dynamo.graph_break()
            return self.b(torch.tanh(h))

    torch.manual_seed(0)
    model = Breaks().eval()
    fn = torch.compile(model, backend="ember", options={"chip": "tiny", "dtype": "fp32", "device": "cpu"})
    x = torch.randn(2, 8)
    assert rel_err(_eager(fn, (x,)), _eager(model, (x,))) <= 1e-4
    assert len(ember.torch_compile_report().subgraphs) == 2


def test_torch_compile_refuses_unknown_options(report):
    fn = torch.compile(torch.nn.Linear(2, 2), backend="ember", options={"chips": "tiny"})
    with pytest.raises(Exception, match="unknown ember backend option"):
        fn(torch.randn(1, 2))


# ---------------------------------------------------------------------- command line, GPU check
def test_ember_run_on_cpu():
    exe = os.path.join(os.path.dirname(sys.executable), "ember")
    proc = subprocess.run([exe, "run", "models:resnet-tiny", "--device", "cpu"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "device 'cpu' vs PyTorch eager" in proc.stdout
    err = float(proc.stdout.split("│")[-2].strip()) if "│" in proc.stdout else None
    assert err is not None and err <= 1e-4


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present: the check runs for real (benchmarks/gpu_check.py)")
def test_gpu_check_skips_cleanly_without_a_gpu():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "no CUDA GPU" in proc.stdout, proc.stderr[-2000:]
