"""Design-space sweeps (ember/dse): rows that obey physics across chip variants, invalid points as
rows, the same rows serially, on a process pool and on Ray, and a killed sweep that resumes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import ember
from ember.dse.point import full_load
from ember.dse.spec import SweepFileError, load_sweep
from simulator.area import area_breakdown, peak_power_w
from simulator.spec import load_chip

MLP = '''
import torch

class Stack(torch.nn.Module):
    def __init__(self, d=256, layers=3):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x

def prefill():
    torch.manual_seed(0)
    return Stack().eval(), (torch.randn(512, 256),)
'''


def _sweep(tmp_path: Path, name: str, content: dict, **kw) -> list[dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return ember.sweep(path, progress=False, **kw)


@pytest.fixture
def mlp(tmp_path: Path) -> str:
    (tmp_path / "mlp.py").write_text(MLP)
    return "mlp.py:prefill"


def test_more_dram_bandwidth_never_slows_a_decode(tmp_path):
    # SRAM too small for the weights: the decode streams them from DRAM
    rows = _sweep(tmp_path, "dram", {"base": "tiny", "vary": {"sram.bytes": ["64 KiB"],
                  "dram.bytes_per_s": [4.0e9, 8.0e9, 16.0e9, 32.0e9, 64.0e9]},
                  "workloads": [{"spec": "models:multimodal-tiny-decode", "dtype": "bf16"}]}, workers=1)
    assert all(r["fits"] for r in rows) and all(r["bytes_dram"] > 0 for r in rows)
    times = [r["seconds"] for r in sorted(rows, key=lambda r: r["dram.bytes_per_s"])]
    assert all(b <= a for a, b in zip(times, times[1:])), times
    assert times[0] > 2 * times[-1]            # the bandwidth matters: the test can fail
    assert all(r["seconds"] >= r["floor_seconds"] for r in rows)


def test_more_pes_never_slow_a_compute_bound_prefill(tmp_path, mlp):
    rows = _sweep(tmp_path, "pes", {"base": "tiny", "vary": {"pe_grid.rows": [1, 2, 4], "pe_grid.cols": [1, 2, 4]},
                  "workloads": [{"spec": mlp, "dtype": "bf16", "timing_only": True}]}, workers=1)
    by_grid = {(r["pe_grid.rows"], r["pe_grid.cols"]): r for r in rows}
    assert by_grid[1, 1]["util_dpe"] > 0.9          # compute bound
    for (r1, c1), a in by_grid.items():
        for (r2, c2), b in by_grid.items():
            if r2 >= r1 and c2 >= c1:
                assert b["seconds"] <= a["seconds"], ((r1, c1), (r2, c2))
    assert by_grid[4, 4]["seconds"] < by_grid[1, 1]["seconds"] / 4


def test_a_smaller_local_memory_refuses_or_is_slower(tmp_path, mlp):
    sizes = ["4 KiB", "8 KiB", "12 KiB", "16 KiB", "32 KiB", "64 KiB"]
    rows = _sweep(tmp_path, "lmem", {"base": "tiny", "vary": {"local_mem.bytes": sizes},
                  "workloads": [{"spec": mlp, "dtype": "bf16", "timing_only": True}]}, workers=1)
    rows = sorted(rows, key=lambda r: r["local_mem.bytes"])
    assert not rows[0]["fits"] and "local_mem.bytes" in rows[0]["reason"] and "ember.linear" in rows[0]["reason"]
    fit = [r for r in rows if r["fits"]]
    assert len(fit) >= 4
    # the plans the compiler can choose from only grow with the memory, so the cost model's
    # total for its choice never rises; the simulated time follows within the cost model's
    # error (the choice is by prediction)
    predicted = [r["predicted_cycles"] for r in fit]
    assert all(b <= a for a, b in zip(predicted, predicted[1:])), predicted
    for small, large in zip(fit, fit[1:]):
        assert small["seconds"] >= 0.97 * large["seconds"], (small["local_mem.bytes"], large["local_mem.bytes"])
    assert fit[0]["seconds"] > 1.3 * fit[-1]["seconds"]


def test_invalid_points_are_rows_with_their_reason(tmp_path):
    rows = _sweep(tmp_path, "bad", {"base": "tiny", "vary": {"sram.bytes": ["64 KiB"], "dram.bytes": ["16 MiB", "64 KiB", "-3"]},
                  "workloads": [{"spec": "models:multimodal-tiny", "dtype": "fp32", "timing_only": True}]}, workers=1)
    by_size = {str(r["dram.bytes"]): r for r in rows}
    assert by_size[str(16 << 20)]["fits"]
    small = by_size[str(64 << 10)]
    assert not small["fits"] and "does not fit" in small["reason"] and small["seconds"] is None
    refused = by_size["-3"]
    assert not refused["fits"] and refused["reason"].startswith("chip: ") and "dram.bytes" in refused["reason"]
    out = tmp_path / "bad-sweep"
    assert {p.name for p in out.iterdir()} >= {"results.csv", "summary.md", "pareto.png", "sensitivity.png", "points"}
    assert "do not run" in (out / "summary.md").read_text()


@pytest.mark.parametrize("content, match", [
    ({"base": "tiny", "vary": {"dram.speed": [1]}, "workloads": [{"spec": "models:resnet-tiny"}]}, "dram.speed"),
    ({"base": "tiny", "workloads": []}, "workloads"),
    ({"base": "no-such-chip", "workloads": [{"spec": "models:resnet-tiny"}]}, "base"),
    ({"base": "tiny", "workloads": [{"spec": "models:resnet-tiny", "dtype": "fp64"}]}, "dtype"),
])
def test_a_bad_sweep_file_names_the_field(tmp_path, content, match):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(SweepFileError, match=match) as err:
        load_sweep(path)
    assert str(path) in str(err.value)


def test_serial_pool_and_ray_give_the_same_rows_and_a_rerun_computes_nothing(tmp_path):
    pytest.importorskip("ray")
    content = {"base": "tiny", "vary": {"dram.bytes_per_s": [16.0e9, 32.0e9]},
               "workloads": [{"spec": "models:multimodal-tiny-decode", "dtype": "bf16"}]}
    serial = _sweep(tmp_path, "a", content, workers=1, out=tmp_path / "serial")
    pool = _sweep(tmp_path, "a", content, workers=2, out=tmp_path / "pool")
    ray_rows = _sweep(tmp_path, "a", content, ray="local", out=tmp_path / "ray")
    assert (serial.mode, pool.mode, ray_rows.mode) == ("serial", "2 workers", "ray local")
    assert json.dumps(list(serial)) == json.dumps(list(pool)) == json.dumps(list(ray_rows))
    again = _sweep(tmp_path, "a", content, workers=2, out=tmp_path / "pool")
    assert (again.computed, again.reused) == (0, 2) and list(again) == list(pool)
    assert (tmp_path / "serial" / "results.csv").read_text() == (tmp_path / "ray" / "results.csv").read_text()


KILLED = {"base": "tiny", "vary": {"dram.bytes_per_s": [8.0e9, 16.0e9, 32.0e9]},
          "workloads": [{"spec": "models:multimodal-tiny-decode", "dtype": "bf16"},
                        {"spec": "models:multimodal-tiny", "dtype": "bf16"}]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """results.csv of the sweep below, run without a stop."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    (folder / "k.yaml").write_text(yaml.safe_dump(KILLED))
    ember.sweep(folder / "k.yaml", out=folder / "out", workers=1, progress=False)
    return (folder / "out" / "results.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [
    # in the full suite a serial sweep can run past one SIGINT to its end (alone it stops): open
    pytest.param(signal.SIGINT, marks=pytest.mark.xfail(reason="a serial sweep can miss one SIGINT in the full "
                                                               "suite", strict=False)),
    signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, sig, uninterrupted):
    sweep = tmp_path / "k.yaml"
    sweep.write_text(yaml.safe_dump(KILLED))
    ember_cli = [sys.executable, "-c", "from ember.cli import main; main()"]
    out = tmp_path / "run"
    proc = subprocess.Popen([*ember_cli, "sweep", str(sweep), "-o", str(out), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    points = out / "points"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(points.glob("*.json")) if points.exists() else []) < 2:
        time.sleep(0.2)
    proc.send_signal(sig)
    log = proc.communicate(timeout=60)[0].decode()
    stored = len(list(points.glob("*.json")))
    assert 2 <= stored < 6, log
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run it again to resume" in " ".join(log.split()), log
    assert not list(points.glob(".*.tmp")) or sig == signal.SIGKILL
    resumed = ember.sweep(sweep, out=out, workers=1, progress=False)
    assert resumed.reused == stored and resumed.computed == 6 - stored
    assert (out / "results.csv").read_text() == uninterrupted


def test_mtia2i_area_and_power_against_its_published_figures():
    chip = load_chip("mtia2i")
    assert abs(chip.area_mm2 - 421) <= 0.10 * 421        # 421 mm² die (Meta, 2024)
    blocks = area_breakdown(chip)
    assert abs(sum(v for k, v in blocks.items() if k != "total") / chip.area.utilization - chip.area_mm2) < 1e-9
    # more SRAM costs area; a chip file's coefficients change it
    assert chip.with_(sram__bytes="512 MiB").area_mm2 > chip.area_mm2
    assert chip.with_(area__sram_mm2_per_mib=0.6).area_mm2 > chip.area_mm2
    assert peak_power_w(chip)["static"] == chip.static_power_w


def test_full_load_power_is_within_the_tdp():
    chip = load_chip("mtia2i")
    run = full_load(chip, 1024)
    watts = run.stats["energy_j"]["total"] / run.seconds
    assert run.stats["engine_utilization"]["dpe"] > 0.8           # full load
    assert chip.static_power_w < watts <= chip.tdp_w


def test_a_generate_workload_gives_prefill_and_decode_rows(tmp_path):
    pytest.importorskip("transformers")
    rows = _sweep(tmp_path, "gen", {"base": "tiny", "vary": {"dram.bytes_per_s": [32.0e9]},
                  "workloads": [{"spec": "models:hf-llama", "dtype": "fp32",
                                 "generate": {"prompt_len": 8, "new_tokens": 3}}]}, workers=1)
    prefill, decode = rows
    assert (prefill["phase"], decode["phase"]) == ("prefill", "decode") and prefill["fits"] and decode["fits"]
    model, _ = ember.load_model("models:hf-llama")
    from models.serving import random_prompt
    torch.manual_seed(0)
    gen = ember.generate(model, random_prompt(model, 8, 1), 3, chip="tiny", dtype="fp32")
    assert prefill["seconds"] == gen.ttft_s and decode["seconds"] == gen.tpot_s
    assert prefill["energy_j"] > decode["energy_j"] > 0
    assert decode["floor_seconds"] <= decode["seconds"]


def test_a_reused_capture_compiles_what_a_fresh_one_does():
    from compiler.capture import reusing_captures
    model, example = ember.load_model("models:multimodal-tiny")
    store: dict = {}
    with reusing_captures(store):
        reused = [ember.compile(model, example, chip=c, dtype="bf16") for c in ("tiny", "mtia2i", "tiny")]
    assert len(store) == 1
    fresh = {c: ember.compile(model, example, chip=c, dtype="bf16") for c in ("tiny", "mtia2i")}
    for cm, chip in zip(reused, ("tiny", "mtia2i", "tiny")):
        out, ref = cm.run(*example, device="sim"), fresh[chip].run(*example, device="sim")
        flat = torch.utils._pytree.tree_leaves
        assert all(torch.equal(a, b) for a, b in zip(flat(out), flat(ref), strict=True))
        assert cm.last_run.cycles == fresh[chip].last_run.cycles
