"""Sessions: device memory across runs, device state updated in place, the host link charged
once, and what a session refuses."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

import ember
from compiler.errors import DeviceMemoryError
from runtime.host import HostCallError
from runtime.session import DeviceTensor, SessionError
from simulator.isa import artifact
from tests.helpers import Mlp, rel_err


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = Mlp().eval()
    return model, ember.compile(model, (torch.randn(8, 32),), chip="tiny", dtype="fp32")


def test_put_run_get_matches_eager_and_charges_the_link_once(mlp):
    model, cm = mlp
    x = torch.randn(8, 32)
    with cm.session("sim") as sess:
        assert sess.load_seconds > 0                      # the weights went up once, at load
        xd = sess.put(x)
        assert sess.totals["host_link"] == pytest.approx(8 * 32 * 4 / cm.chip.host_link.bytes_per_s)
        yd = sess.run(xd)
        assert isinstance(yd, DeviceTensor) and yd.shape == (8, 16) and yd.dtype == torch.float32
        assert sess.last_run.breakdown["host_link"] == 0.0   # nothing crosses during the run
        yd2 = sess.run(xd)                                    # the input stays on the device
        assert sess.last_run.breakdown["host_link"] == 0.0
        y = sess.get(yd2)
        assert sess.totals["host_link"] > 8 * 32 * 4 / cm.chip.host_link.bytes_per_s
    with torch.no_grad():
        assert rel_err(y, model(x)) <= 1e-5
    # one shot: the same run, with the input up and the output down
    out = cm.run(x, device="sim")
    assert rel_err(out, y) == 0.0
    b = cm.last_run.breakdown
    link = (8 * 32 + 8 * 16) * 4 / cm.chip.host_link.bytes_per_s
    assert b["host_link"] == pytest.approx(link, rel=0.05) and b["device"] > 0
    assert cm.last_run.seconds == pytest.approx(sum(b.values()), rel=1e-6)


def test_cpu_session_matches_sim(mlp):
    _, cm = mlp
    x = torch.randn(8, 32)
    with cm.session("cpu") as sess:
        y = sess.get(sess.run(sess.put(x)))
    assert rel_err(y, cm.run(x, device="sim")) <= 1e-5


class CacheStep(torch.nn.Module):
    """One decode-like step: new rows into a cache input at `pos`, in place; read the cache."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x, pos, cache):
        cache.index_copy_(1, pos, self.proj(x))
        return cache.sum(dim=-1)


def _cache_inputs(length=12):
    return torch.randn(2, 1, 16), torch.tensor([3]), torch.randn(2, length, 16)


@pytest.fixture(scope="module")
def cache_step():
    torch.manual_seed(1)
    model = CacheStep().eval()
    return model, ember.compile(model, _cache_inputs(), chip="tiny", dtype="fp32")


def test_state_is_updated_in_place_on_the_device(cache_step):
    model, cm = cache_step
    assert cm.mutated_inputs == [2]
    program = cm.program
    new = program.outputs[-1]
    old = program.inputs[2]
    assert (program.tensors[new]["space"], program.tensors[new]["addr"]) == \
        (program.tensors[old]["space"], program.tensors[old]["addr"])      # one buffer: no copy
    x1, _, cache = _cache_inputs()
    x2 = torch.randn(2, 1, 16)
    eager_cache = cache.clone()
    with torch.no_grad():
        ref1 = model(x1, torch.tensor([3]), eager_cache)
        ref2 = model(x2, torch.tensor([7]), eager_cache)
    with cm.session("sim") as sess:
        cd = sess.put(cache)
        y1 = sess.run(sess.put(x1), sess.put(torch.tensor([3])), cd)
        y2 = sess.run(sess.put(x2), sess.put(torch.tensor([7])), cd)
        run = sess.last_run
        assert not [s for s in run.steps if s.kind in ("copy", "host", "transfer")]
        assert rel_err(sess.get(y1), ref1) <= 1e-5 and rel_err(sess.get(y2), ref2) <= 1e-5
        assert rel_err(sess.get(cd), eager_cache) <= 1e-6
    # one shot: the input tensor is updated, as eager updates it
    c = cache.clone()
    cm.run(x1, torch.tensor([3]), c, device="sim")
    expected = cache.clone()
    with torch.no_grad():
        model(x1, torch.tensor([3]), expected)
    assert rel_err(c, expected) <= 1e-6
    assert cm.last_run.breakdown["host_link"] > 2 * cache.numel() * 4 / cm.chip.host_link.bytes_per_s


def test_the_in_place_write_costs_the_new_rows_not_the_cache(cache_step):
    _, cm = cache_step
    long = ember.compile(CacheStep().eval(), _cache_inputs(length=1024), chip="tiny", dtype="fp32")
    def write_cycles(c):
        c.run(*_cache_inputs(length=c.input_specs[2].shape[1]), device="sim", timing_only=False)
        return [s.cycles for s in c.last_run.steps if s.op == "index_put"][0]
    assert write_cycles(long) <= 1.5 * write_cycles(cm)       # 85x the cache, about the same write


def test_device_tensors_are_checked(cache_step, mlp):
    _, cm = cache_step
    _, other = mlp
    x, pos, cache = _cache_inputs()
    a, b = cm.session("sim"), other.session("sim")
    xb = b.put(torch.randn(8, 32))
    with pytest.raises(SessionError, match=rf"belongs to session {b.id}, not to session {a.id}"):
        a.run(xb, a.put(pos), a.put(cache))
    with pytest.raises(SessionError, match="is a torch tensor, not a device tensor"):
        a.run(x, a.put(pos), a.put(cache))
    with pytest.raises(ValueError, match=r"input 2 \('cache'\) is \(2, 5, 16\) torch.float32, but the model was "
                                         r"compiled for \(2, 12, 16\) torch.float32"):
        a.run(a.put(x), a.put(pos), a.put(torch.randn(2, 5, 16)))
    xd = a.put(x)
    a.close()
    with pytest.raises(SessionError, match="after its session .* was closed"):
        a.get(xd)
    with pytest.raises(SessionError, match="is closed"):
        a.put(x)
    b.close()


def test_integers_out_of_the_chips_range_are_refused(cache_step):
    _, cm = cache_step
    with cm.session("sim") as sess:
        with pytest.raises(ValueError, match=r"integers in \[0, 8589934592\].*int32"):
            sess.put(torch.tensor([0, 2**33]))


def test_device_memory_is_accounted():
    chip = ember.load_chip("tiny")         # 16 MiB of DRAM, 1 MiB of SRAM
    big = torch.nn.Linear(2048, 4096, bias=False).eval()      # 32 MiB of fp32 weights
    with pytest.raises(DeviceMemoryError, match=r"weights 32.0 MiB.*tiny has SRAM .* and DRAM"):
        ember.compile(big, (torch.randn(4, 2048),), chip=chip, dtype="fp32")
    small = ember.compile(Mlp().eval(), (torch.randn(8, 32),), chip=chip, dtype="fp32")
    with small.session("sim") as sess:
        with pytest.raises(DeviceMemoryError, match=r"a tensor \(2048, 2560\) torch.float32 \(20.0 MiB\) does not "
                                                    "fit the device memory of tiny"):
            sess.put(torch.randn(2048, 2560))


def test_host_steps_take_modelled_host_time():
    class WithHost(torch.nn.Module):
        def forward(self, x):
            return torch.special.i0(x) + 1

    cm = ember.compile(WithHost().eval(), (torch.randn(64, 64),), chip="tiny", dtype="fp32",
                       allow_unsupported=True)
    cm.run(torch.randn(64, 64), device="sim")
    host = [s for s in cm.last_run.steps if s.kind == "host"]
    expected = cm.chip.host.step_seconds(0, 2 * 64 * 64 * 4)      # an aten op: its bytes, and the dispatch
    assert host and host[0].cycles == pytest.approx(expected * cm.chip.clock_hz, abs=1)
    assert cm.last_run.breakdown["host"] == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------------- crafted Program files
class WithHostOps(torch.nn.Module):
    def forward(self, x):
        return torch.special.i0(x.to(torch.float32)) * 2


def _rewrite(path, change) -> None:
    """Edit a Program file's header and seal it again with a valid checksum."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "checksum"}
    header = json.loads(members["header.json"])
    change(header)
    members["header.json"] = json.dumps(header, sort_keys=True).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("checksum", artifact._digest(members))
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("change,message", [
    (lambda calls: calls[0].update(target="builtins.eval.default"), "not a registered torch op"),
    (lambda calls: calls[0].update(target="os"), "not a torch op overload"),
    (lambda calls: calls[0]["args"].append({"$dtype": "load"}), r"\$dtype 'load', which is not a torch.dtype"),
    (lambda calls: calls[0]["args"].append({"$layout": "float32"}), r"\$layout 'float32', which is not a torch.layout"),
])
def test_a_crafted_program_file_is_refused_on_load(tmp_path, change, message):
    cm = ember.compile(WithHostOps().eval(), (torch.randn(4, 4),), chip="tiny", dtype="fp32", allow_unsupported=True)
    path = tmp_path / "m.ember"
    cm.save(str(path))
    ember.load(str(path))                                    # as written, it loads
    _rewrite(path, lambda header: change(header["meta"]["host_calls"]))
    with pytest.raises(HostCallError, match=message):
        ember.load(str(path))
