"""A trained byte-level decoder: the reference model whose numerics are judged as a trained
model's are (top-1 agreement, KL divergence and perplexity on held-out text), not only by SQNR.

The decoder is the text path of `models/multimodal.py` (its `DecoderLayer`: RMSNorm, rotary
embeddings, grouped-query attention through sdpa, SwiGLU) with a byte vocabulary, trained by
`models/train_lm.py` on the Python standard library's own sources, text every machine with a
Python has offline. The weights are `models/checkpoints/trained-lm.safetensors` (fp32); the
JSON beside it records the config, the training settings and seed, what the data was, the
parameter count and the held-out perplexity the training script measured.

Two graphs share the weights:
- `TextLM.forward(ids) -> logits (B, T, 256)`, every position's next-byte logits;
- `MultimodalDecode(model).forward(token_ids, position, *caches) -> logits (B, 1, 256)`: one
  decode step writing into preallocated per-layer caches in place (see `models/multimodal.py`).

The data split is a function of this module (`corpus_files`, `held_out_bytes`,
`held_out_windows`), so the training script, `benchmarks/numerics.py` and the tests read the
same held-out files: every `HOLD_OUT_EVERY`-th file of the sorted list.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from models.multimodal import DecoderLayer, MultimodalDecode, MultimodalModel, RMSNorm, RotaryEmbedding
from models.registry import register_model

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT = CHECKPOINT_DIR / "trained-lm.safetensors"
CHECKPOINT_CARD = CHECKPOINT.with_suffix(".json")
TRAIN_COMMAND = ".venv/bin/python models/train_lm.py"

#: every this-many-th file of the sorted corpus is held out of training
HOLD_OUT_EVERY = 20
#: corpus files larger than this (generated tables and docs, e.g. pydoc_data/topics.py) are left out
MAX_FILE_BYTES = 256 * 1024
#: path parts under the stdlib that are left out: tests, installed packages, codec tables
EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "encodings", "__pycache__"})
#: bytes between two files in the concatenated stream (a NUL byte never occurs in source text)
FILE_SEPARATOR = b"\0"


@dataclass(frozen=True)
class TextLMConfig:
    """The decoder's sizes. `DecoderLayer` and `RotaryEmbedding` read these fields (the same names
    as `MultimodalConfig`'s decoder fields); a text model has no modality fields."""

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 384
    context: int = 128          # positions trained on, and of the example inputs
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"bad TextLMConfig: d_model {self.d_model} over {self.n_heads} heads "
                             f"({self.n_kv_heads} kv heads) needs an even head_dim and whole groups")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class TextLM(nn.Module):
    """A decoder-only byte LM: embed_tokens, `DecoderLayer`s, RMSNorm, lm_head."""

    def __init__(self, cfg: TextLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = RotaryEmbedding(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, T) int64 -> logits (B, T, vocab): at each position, the next byte's."""
        h = self.embed_tokens(ids)
        cos, sin = self.rotary(torch.arange(ids.shape[1], device=ids.device).unsqueeze(0))
        for layer in self.layers:
            h, _, _ = layer(h, cos, sin)
        return self.lm_head(self.norm(h))

    # The decode step reads only the decoder's parts (embed_tokens, rotary, layers, norm,
    # lm_head), which this model has under the multimodal model's names: one graph, not two.
    decode = MultimodalModel.decode
    cache_shape = MultimodalModel.cache_shape

    def prefill_caches(self, ids: Tensor, max_len: int) -> tuple[Tensor, ...]:
        """Per-layer caches (k0, v0, k1, v1, ...: (B, n_kv_heads, max_len, head_dim)) holding
        the keys and values of `ids` (B, T) at positions 0..T-1, zeros after."""
        caches = tuple(torch.zeros(self.cache_shape(ids.shape[0], max_len)) for _ in range(2 * self.cfg.n_layers))
        positions = torch.arange(ids.shape[1], device=ids.device)
        with torch.no_grad():
            h = self.embed_tokens(ids)
            cos, sin = self.rotary(positions.unsqueeze(0))
            for i, layer in enumerate(self.layers):
                h = layer.forward_cached(h, cos, sin, caches[2 * i], caches[2 * i + 1], positions, None)
        return caches


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- data: the standard library's sources


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def corpus_files() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training files, held-out files): relative posix paths of the stdlib's `*.py` files,
    sorted, without tests, site-packages, codec tables and files over `MAX_FILE_BYTES`; every
    `HOLD_OUT_EVERY`-th one (counting from the first) held out."""
    root = stdlib_root()
    paths = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.py")
        if not EXCLUDED_PARTS & set(p.relative_to(root).parts) and p.stat().st_size <= MAX_FILE_BYTES
    )
    held = tuple(p for i, p in enumerate(paths) if i % HOLD_OUT_EVERY == 0)
    train = tuple(p for i, p in enumerate(paths) if i % HOLD_OUT_EVERY != 0)
    return train, held


def corpus_bytes(files: tuple[str, ...]) -> bytes:
    """The files' bytes, concatenated in order with `FILE_SEPARATOR` after each."""
    root = stdlib_root()
    return b"".join((root / f).read_bytes() + FILE_SEPARATOR for f in files)


@lru_cache(maxsize=1)
def held_out_bytes() -> bytes:
    """The held-out text: the held-out files' bytes, concatenated (see `corpus_bytes`)."""
    return corpus_bytes(corpus_files()[1])


def held_out_digest() -> str:
    """sha256 of the held-out text: which text a recorded perplexity was measured on."""
    return hashlib.sha256(held_out_bytes()).hexdigest()


def held_out_windows(n: int, length: int) -> Tensor:
    """`n` windows of `length + 1` consecutive held-out bytes, (n, length + 1) int64, spread
    evenly over the held-out text; always the same. Inputs are `w[:, :-1]`, targets `w[:, 1:]`."""
    data = held_out_bytes()
    span = length + 1
    if n * span > len(data):
        raise ValueError(f"{n} windows of {span} bytes need {n * span} bytes; the held-out text has {len(data)}")
    stride = (len(data) - span) // max(n - 1, 1)
    text = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return torch.stack([text[i * stride:i * stride + span] for i in range(n)]).long()


def random_held_out_windows(n: int, length: int) -> Tensor:
    """`n` windows of `length` held-out bytes at random offsets (torch's global RNG), (n, length) int64."""
    data = held_out_bytes()
    text = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    starts = torch.randint(0, len(data) - length, (n,))
    return torch.stack([text[s:s + length] for s in starts.tolist()]).long()


# ---------------------------------------------------------------- the checkpoint


class MissingCheckpointError(FileNotFoundError):
    """The trained weights are not on disk."""


def checkpoint_card() -> dict:
    """What `models/train_lm.py` recorded with the weights (config, training, data, perplexity)."""
    if not CHECKPOINT_CARD.is_file():
        raise MissingCheckpointError(f"{CHECKPOINT_CARD} not found; `{TRAIN_COMMAND}` trains the model and writes it")
    return json.loads(CHECKPOINT_CARD.read_text())


def load_trained_lm() -> TextLM:
    """The trained `TextLM` (fp32, eval mode) from `CHECKPOINT`."""
    from safetensors.torch import load_file

    if not CHECKPOINT.is_file():
        raise MissingCheckpointError(f"{CHECKPOINT} not found; `{TRAIN_COMMAND}` trains the model and writes it")
    cfg = TextLMConfig(**checkpoint_card()["config"])
    model = TextLM(cfg)
    model.load_state_dict(load_file(str(CHECKPOINT)))
    return model.eval()


#: batch of the registered example inputs
EXAMPLE_BATCH = 2
#: filled cache positions before the registered decode step
DECODE_CACHE_LEN = 64


@register_model("trained-lm")
def trained_lm():
    """The trained byte-level decoder (fp32) on 2 x 128 held-out bytes at random offsets."""
    model = load_trained_lm()
    return model, (random_held_out_windows(EXAMPLE_BATCH, model.cfg.context),)


@register_model("trained-lm-decode")
def trained_lm_decode():
    """One decode step of the trained decoder after 64 held-out bytes at random offsets, whose
    keys and values the prefill wrote into the caches (65 slots): a step on real text."""
    model = load_trained_lm()
    window = random_held_out_windows(EXAMPLE_BATCH, DECODE_CACHE_LEN + 1)
    caches = model.prefill_caches(window[:, :DECODE_CACHE_LEN], DECODE_CACHE_LEN + 1)
    position = torch.tensor([DECODE_CACHE_LEN], dtype=torch.int64)
    return MultimodalDecode(model), (window[:, DECODE_CACHE_LEN:], position, *caches)
