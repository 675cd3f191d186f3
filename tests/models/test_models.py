"""Reference models: they run, capture with torch.export, decode agrees with prefill, the 7B
config stays on meta, and SPECs resolve (or fail with messages that name what is wrong)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from models import list_models, load_model, register_model
from models.multimodal import CONFIGS, MultimodalDecode, MultimodalPrefill, build_multimodal, prefill_inputs
from models.registry import model_entry

TINY = ["multimodal-tiny", "multimodal-tiny-decode", "resnet-tiny"]


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def test_registry_lists_every_model():
    names = set(list_models())
    for base in ("multimodal-tiny", "multimodal-small", "multimodal-7b"):
        assert {base, f"{base}-decode"} <= names
    assert {"resnet-tiny", "resnet-small"} <= names
    assert set(list_models(meta=True)) == {"multimodal-7b", "multimodal-7b-decode", "hf-llama-2-7b", "hf-qwen3-moe-30b-a3b"}
    assert set(list_models(meta=False)) | set(list_models(meta=True)) == names


@pytest.mark.parametrize("name", list_models(meta=False))
def test_model_runs_eager(name):
    model, args = load_model(f"models:{name}")
    assert not model.training
    assert isinstance(args, tuple) and args
    for a in args:
        assert a.device.type == "cpu"
        if a.is_floating_point():
            assert a.abs().sum() > 0, "example inputs must not be zeros"
    with torch.no_grad():
        outs = _outputs(model(*args))
    for o in outs:
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_exports_and_matches_eager(name):
    model, args = load_model(f"models:{name}")
    ep = torch.export.export(model, args)
    with torch.no_grad():
        expected = _outputs(model(*args))
        got = _outputs(ep.module()(*args))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_token_ids_in_range_and_inputs_fresh():
    cfg = CONFIGS["multimodal-tiny"]
    _, a = load_model("models:multimodal-tiny")
    _, b = load_model("models:multimodal-tiny")
    text_ids = a[0]
    assert text_ids.dtype == torch.int64
    assert 0 <= int(text_ids.min()) and int(text_ids.max()) < cfg.vocab_size
    assert not torch.equal(a[1], b[1]), "example inputs are drawn fresh on each load"


def test_weights_are_deterministic():
    m1, _ = load_model("models:multimodal-tiny")
    m2, _ = load_model("models:multimodal-tiny-decode")
    s1, s2 = m1.state_dict(), m2.model.state_dict()
    assert s1.keys() == s2.keys()
    for key in s1:
        torch.testing.assert_close(s1[key], s2[key], rtol=0, atol=0)
    r1, _ = load_model("models:resnet-tiny")
    r2, _ = load_model("models:resnet-tiny")
    for (k, v1), v2 in zip(r1.state_dict().items(), r2.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=0, atol=0, msg=k)


def test_batch_norm_is_not_identity():
    model, _ = load_model("models:resnet-tiny")
    bn = model.stem[1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def _serving_caches(model, cfg, slots):
    # poisoned with large finite values (not NaN: a masked score's zero weight times NaN is NaN in
    # torch too): a slot the mask should hide but does not shows up as a wrong logit
    return [1e4 * torch.randn(model.cache_shape(cfg.batch, slots)) for _ in range(2 * cfg.n_layers)]


@pytest.mark.parametrize("name", ["multimodal-tiny", "multimodal-small"])
def test_decode_matches_prefill(name):
    """Serving prefill into preallocated caches, then decode of token t+1 in place = the plain
    prefill over the extended sequence; the caches hold the plain prefill's keys and values."""
    cfg = CONFIGS[name]
    model = build_multimodal(cfg)
    text_ids, image, audio, video = prefill_inputs(cfg, text_len=cfg.text_len + 1)
    s = cfg.prefill_len
    caches = _serving_caches(model, cfg, s + 3)
    with torch.no_grad():
        full_logits, full_k, full_v = model(text_ids, image, audio, video)
        first = MultimodalPrefill(model)(text_ids[:, :-1], image, audio, video, *caches)
        step_logits = MultimodalDecode(model)(text_ids[:, -1:], torch.tensor([s]), *caches)
    torch.testing.assert_close(first, model(text_ids[:, :-1], image, audio, video)[0][:, -1:], rtol=1e-4, atol=1e-4)
    ref = full_logits[:, -1:]
    assert step_logits.shape == ref.shape == (cfg.batch, 1, cfg.vocab_size)
    scale = ref.abs().max().item()
    torch.testing.assert_close(step_logits, ref, rtol=1e-4, atol=1e-4 * scale)
    assert (step_logits - ref).norm() / ref.norm() < 1e-4
    for i in range(cfg.n_layers):
        torch.testing.assert_close(caches[2 * i][:, :, : s + 1], full_k[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(caches[2 * i + 1][:, :, : s + 1], full_v[i], rtol=1e-4, atol=1e-5)


def test_exported_decode_updates_its_caches_in_place():
    cfg = CONFIGS["multimodal-tiny"]
    model = build_multimodal(cfg)
    text_ids, image, audio, video = prefill_inputs(cfg, text_len=cfg.text_len + 1)
    s = cfg.prefill_len
    caches = [torch.zeros(model.cache_shape(cfg.batch, s + 1)) for _ in range(2 * cfg.n_layers)]
    with torch.no_grad():
        full_logits, _, _ = model(text_ids, image, audio, video)
        MultimodalPrefill(model)(text_ids[:, :-1], image, audio, video, *caches)
    args = (text_ids[:, -1:], torch.tensor([s]), *caches)
    ep = torch.export.export(MultimodalDecode(model), args).run_decompositions()
    kinds = [spec.kind.name for spec in ep.graph_signature.output_specs]
    assert kinds == ["USER_INPUT_MUTATION"] * (2 * cfg.n_layers) + ["USER_OUTPUT"]
    step_logits = ep.module()(*args)
    ref = full_logits[:, -1:]
    torch.testing.assert_close(step_logits, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("name", ["multimodal-7b", "multimodal-7b-decode"])
def test_7b_builds_on_meta(name):
    assert model_entry(name).meta
    before = _rss_bytes()
    model, args = load_model(f"models:{name}")
    grown = _rss_bytes() - before
    n_params = sum(p.numel() for p in model.parameters())
    assert 6.5e9 <= n_params <= 8e9, n_params
    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())
    assert all(a.is_meta for a in args)
    assert grown < 2**30, f"RSS grew by {grown / 2**20:.0f} MiB"


@pytest.mark.slow
def test_7b_decode_exports_on_meta():
    model, args = load_model("models:multimodal-7b-decode")
    ep = torch.export.export(model, args).run_decompositions()
    *caches, logits = (n.meta["val"] for n in ep.graph.output_node().args[0])
    assert tuple(logits.shape) == (1, 1, 32000)
    assert len(caches) == 64 and tuple(caches[0].shape) == (1, 8, 2049, 128)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="no-such-model") as info:
        load_model("models:no-such-model")
    for name in list_models():
        assert name in str(info.value)


def test_bad_spec_shape():
    with pytest.raises(ValueError, match="models:NAME"):
        load_model("multimodal-tiny")


def test_missing_file_names_file_and_factory(tmp_path):
    path = tmp_path / "nowhere.py"
    with pytest.raises(ValueError) as info:
        load_model(f"{path}:make")
    assert str(path) in str(info.value) and "make" in str(info.value)


def test_missing_factory_names_file_and_factory(tmp_path):
    path = tmp_path / "spec_model.py"
    path.write_text("def other():\n    return None\n")
    with pytest.raises(ValueError) as info:
        load_model(f"{path}:make")
    assert str(path) in str(info.value) and "'make'" in str(info.value) and "other" in str(info.value)


def test_file_factory_spec(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch

            def make():
                model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
                return model, (torch.randn(3, 8),)

            def wrong():
                return 42
            """
        )
    )
    model, args = load_model(f"{path}:make")
    assert not model.training
    assert len(args) == 1 and args[0].shape == (3, 8)
    assert model(*args).shape == (3, 4)
    with pytest.raises(ValueError, match="wrong"):
        load_model(f"{path}:wrong")


def test_register_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet-tiny")(lambda: None)
