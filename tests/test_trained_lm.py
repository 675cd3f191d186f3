"""The trained reference model (`models:trained-lm`): its checkpoint matches its card, it has
learned the held-out text (perplexity far below uniform, and the one its card records), its two
graphs agree in eager, int8 and fp8 on the simulated chip agree with fp32 eager on held-out
text, and the decode step on the chip is eager's."""
from __future__ import annotations

import math

import pytest
import torch

import ember
from models import load_model, trained_lm
from models.multimodal import MultimodalDecode
from models.train_lm import perplexity
from models.trained_lm import (
    CHECKPOINT, CHECKPOINT_CARD, MissingCheckpointError, TextLMConfig, checkpoint_card, corpus_files,
    held_out_digest, held_out_windows, load_trained_lm, parameter_count,
)


@pytest.fixture(scope="module")
def model():
    return load_trained_lm()


@pytest.fixture(scope="module")
def card():
    return checkpoint_card()


def test_checkpoint_matches_its_card(model, card):
    assert model.cfg == TextLMConfig(**card["config"])
    assert parameter_count(model) == card["parameters"]
    assert CHECKPOINT.stat().st_size == card["checkpoint_bytes"] <= 10 * 2**20
    assert all(p.dtype == torch.float32 for p in model.state_dict().values())


def test_held_out_files_are_not_trained_on():
    train, held = corpus_files()
    assert held and train and not set(train) & set(held)
    assert len(held) >= 20


def test_held_out_perplexity_is_the_cards(model, card):
    """Far below uniform over bytes (256), and what the training script measured, where this
    machine's standard library is the one it was measured on."""
    rec = card["held_out"]
    if held_out_digest() != card["data"]["held_out_sha256"]:
        pytest.skip(f"this Python's standard library is not the one trained on (Python {card['data']['python']})")
    ppl = perplexity(model, held_out_windows(rec["windows"], rec["length"]))
    assert ppl < 16
    assert math.isclose(ppl, rec["perplexity"], rel_tol=1e-3), (ppl, rec["perplexity"])


def test_example_inputs_are_held_out_text_drawn_fresh():
    m, (a,) = load_model("models:trained-lm")
    _, (b,) = load_model("models:trained-lm")
    assert a.shape == (trained_lm.EXAMPLE_BATCH, m.cfg.context) and a.dtype == torch.int64
    assert not torch.equal(a, b)
    text = trained_lm.held_out_bytes()
    assert all(bytes(row.tolist()) in text for row in a)


def test_decode_step_agrees_with_forward(model):
    """A decode step over caches the prefill wrote gives the forward pass's logits there."""
    window = held_out_windows(2, 48)
    n = window.shape[1] - 1
    caches = model.prefill_caches(window[:, :n], n + 1)
    with torch.no_grad():
        full = model(window)[:, -1:]
        step = MultimodalDecode(model)(window[:, n:], torch.tensor([n]), *caches)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_missing_checkpoint_names_the_file_and_the_command(monkeypatch, tmp_path):
    missing = tmp_path / "trained-lm.safetensors"
    monkeypatch.setattr(trained_lm, "CHECKPOINT", missing)
    with pytest.raises(MissingCheckpointError) as info:
        load_model("models:trained-lm")
    assert str(missing) in str(info.value) and "models/train_lm.py" in str(info.value)
    monkeypatch.setattr(trained_lm, "CHECKPOINT_CARD", tmp_path / "trained-lm.json")
    with pytest.raises(MissingCheckpointError, match="train_lm.py"):
        checkpoint_card()
    assert CHECKPOINT_CARD.is_file()


def _held_out_agreement(model, cm, windows, batch):
    """(top-1 agreement, mean KL(p_eager || p_chip) in nats) over every position of `windows`."""
    agree = kl = count = 0
    for chunk in windows.split(batch):
        ids = chunk[:, :-1]
        with torch.no_grad():
            ref = torch.log_softmax(model(ids).double(), -1)
        out = torch.log_softmax(cm.run(ids, device="sim").double(), -1)
        agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        kl += float((ref.exp() * (ref - out)).sum())
        count += ids.numel()
    return agree / count, kl / count


@pytest.mark.parametrize("dtype,windows", [("int8", 2), pytest.param("fp8", 4, marks=pytest.mark.slow)])
def test_quantized_model_on_the_sim_agrees_with_eager(model, dtype, windows):
    """A regression guard on a few hundred positions, looser than the bars that
    benchmarks/numerics.py measures on 2,048 (int8 there: top-1 99.1%, KL 2e-4)."""
    text = held_out_windows(windows, model.cfg.context)
    cm = ember.compile(model, (text[:2, :-1],), chip="tiny", dtype=dtype)
    top1, kl = _held_out_agreement(model, cm, text, 2)
    assert top1 >= 0.97 and kl <= 2e-3, (top1, kl)


def test_decode_on_the_sim_is_eager(model):
    decode, (token, position, *caches) = load_model("models:trained-lm-decode")
    cm = ember.compile(decode, (token, position, *caches), chip="tiny", dtype="fp32")
    eager_caches = [c.clone() for c in caches]
    with torch.no_grad():
        ref = decode(token, position, *eager_caches)
    for c in caches:                                    # an unwritten cache slot must not pass
        c[:, :, int(position)] = float("nan")
    out = cm.run(token, position, *caches, device="sim")
    assert float((out - ref).norm() / ref.norm()) <= 1e-4
    for got, want in zip(caches, eager_caches):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
