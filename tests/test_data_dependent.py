"""Shapes that depend on the data: compiled for the sizes the example gives, checked on the chip
each run (a clear error naming the op and its line when the data gives another size), listed
as assumptions by timing-only runs; a vision-language model that merges image features by
mask runs with nothing on the host."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ember

HERE = Path(__file__).resolve()


class MaskedRows(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x, ids):
        h = self.fc(x)
        kept = h[ids == 3]                                   # rows where the data says
        n = (ids[:, 0] > 1).sum().item()                     # a size read with .item()
        torch._check(n >= 1)
        torch._check(n <= h.shape[1])
        first = h.narrow(1, 0, n)
        return kept * 2.0, torch.nonzero(ids == 1), first.sum(1)


def _ids(threes: int) -> torch.Tensor:
    """[2, 5] ids of 0, 2 and 4 at random, two of them 1, the first column [2, 4] (two above 1:
    the .item() size) and `threes` of them 3, at fresh random places."""
    ids = torch.tensor([0, 2, 4])[torch.randint(0, 3, (2, 5))]
    ids[:, 0] = torch.tensor([2, 4])
    ids[:, 1] = 1
    at = torch.randperm(6)[:threes]
    rows, cols = at // 3, at % 3
    ids[rows, cols + 2] = 3
    return ids


@pytest.fixture(scope="module")
def masked():
    torch.manual_seed(0)
    model = MaskedRows().eval()
    x, ids = torch.randn(2, 5, 8), _ids(3)
    return model, ember.compile(model, (x, ids), chip="tiny", dtype="fp32"), ids


@pytest.mark.parametrize("device", ["sim", "reference", "cpu"])
def test_a_boolean_mask_nonzero_and_item_run_on_the_sizes_the_example_gives(masked, device):
    model, cm, ids = masked
    x, fresh = torch.randn(2, 5, 8), _ids(3)          # new values, new places, the same counts
    assert not torch.equal(fresh, ids)
    got, want = cm.run(x, fresh, device=device), model(x, fresh)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.allclose(g.to(w.dtype), w, atol=1e-5)
    if device == "sim":
        assert not [s for s in cm.program.steps if s["kind"] == "host"]


@pytest.mark.parametrize("device", ["sim", "reference", "cpu"])
def test_another_count_stops_the_run_naming_the_op_and_its_line(masked, device):
    _, cm, _ = masked
    with pytest.raises(ember.DataSizeError, match="compiled for the example's size 3; this input gives 4") as err:
        cm.run(torch.randn(2, 5, 8), _ids(4), device=device)
    path, line = str(err.value).split(" was compiled")[0].split(" at ")[1].rsplit(":", 1)
    assert Path(path).resolve() == HERE and "ids == 3" in HERE.read_text().splitlines()[int(line) - 1]


def test_the_chip_itself_checks_the_size(masked, monkeypatch):
    """The sim's error comes from the expect kernel's fault, not from a check on the host."""
    from simulator.errors import AddressOutOfRange
    import runtime.devices.sim as sim
    _, cm, _ = masked
    monkeypatch.setattr(sim, "check_size", lambda *a, **k: None)
    with pytest.raises(AddressOutOfRange, match="expect.*compiled for the example's size 3"):
        cm.run(torch.randn(2, 5, 8), _ids(4), device="sim")


def test_a_timing_only_run_says_what_it_assumed(masked):
    _, cm, _ = masked
    cm.run(torch.randn(2, 5, 8), _ids(4), device="sim", timing_only=True)
    assumed = cm.last_run.assumed
    assert any("aten.index.Tensor" in a and "size 3" in a for a in assumed), assumed
    assert any("_local_scalar_dense" in a and "size 2" in a for a in assumed), assumed
    assert any("aten.nonzero" in a for a in assumed), assumed


def test_with_nothing_to_run_the_example_on_a_data_dependent_op_is_named():
    model = MaskedRows().to("meta").eval()
    with pytest.raises(ember.UnsupportedOpsError) as err:
        ember.compile(model, (torch.randn(2, 5, 8, device="meta"), _ids(3).to("meta")), chip="tiny", dtype="fp32",
                      to="graph")
    named = {u.target: u for u in err.value.unsupported}
    assert "no example input fixes it" in named["aten.index.Tensor"].reason
    assert all(u.source.startswith("tests/test_data_dependent.py:") or Path(u.source.rsplit(":", 1)[0]).resolve() == HERE
               for u in err.value.unsupported)


def _smolvlm():
    t = pytest.importorskip("transformers")
    cfg = t.SmolVLMConfig(
        text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        scale_factor=2, image_token_id=255)
    torch.manual_seed(0)
    vlm = t.SmolVLMForConditionalGeneration(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vlm = vlm

        def forward(self, ids, pixels):
            return self.vlm(input_ids=ids, pixel_values=pixels).logits

    image_tokens = (32 // 8) ** 2 // (2 * 2)

    def inputs():
        ids = torch.cat([torch.randint(0, 200, (1, 4)), torch.full((1, image_tokens), 255),
                         torch.randint(0, 200, (1, 4))], 1)
        return ids, torch.randn(1, 1, 3, 32, 32)
    return Logits().eval(), inputs


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_a_vision_language_model_merging_image_features_by_mask_runs_on_the_chip(dtype, tol):
    model, inputs = _smolvlm()
    cm = ember.compile(model, inputs(), chip="tiny", dtype=dtype)
    assert not cm.unsupported
    assert not [s for s in cm.program.steps if s["kind"] == "host"]
    fresh = inputs()
    got, want = cm.run(*fresh, device="sim").float(), model(*fresh)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= tol, err
