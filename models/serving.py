"""The graphs a decoder is served with: a prefill and a one-token decode over preallocated KV caches.

`serving_graphs(model, prompt, max_cache_len)` takes a decoder-only language model and returns
`ServingGraphs`:

- `prefill(*prompt, *caches) -> logits (B, 1, vocab)`: writes the prompt's keys and values into
  the caches at positions 0..P-1, in place, and returns the logits of the last position only;
- `decode(token_ids (B, 1), position (1,), *caches) -> logits (B, 1, vocab)`: writes the new
  token's keys and values at `position`, in place, and attends to the filled slots.

Both take the caches as inputs that they update in place (k0, v0, k1, v1, ...: one tensor per
layer and kind, `(batch, kv_heads, max_cache_len, head_dim)`), so a session keeps them in device
memory from one step to the next and a step never copies them.

Two kinds of model are served:
- Hugging Face causal LMs (`transformers` `*ForCausalLM`), through transformers' own `StaticCache`
  (the cache ExecuTorch's export, `transformers.integrations.executorch`, uses). Its layers are
  given the caches the graph takes as inputs: the ExecuTorch wrapper registers them as buffers
  instead, and torch.export (2.13, non-strict) lifts those as constants, so the cache update is
  lost from the exported graph;
- the reference multimodal model (`models.multimodal.MultimodalModel`), whose prompt is text,
  image, audio and video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from compiler.errors import EmberError


class NotADecoderError(EmberError, TypeError):
    """`ember.generate` was given a model that does not generate text token by token."""


@dataclass
class ServingGraphs:
    """A decoder's serving graphs (see the module docstring) and the sizes of its caches."""
    name: str
    prefill: nn.Module
    prompt: tuple[Tensor, ...]          # the prefill's inputs before the caches
    decode: nn.Module
    cache_shapes: list[tuple[int, ...]]
    cache_dtype: torch.dtype
    prompt_len: int                     # cache positions the prompt fills
    batch: int
    vocab_size: int
    max_positions: int | None           # the model's own limit on positions, where it has one
    weight_elements: int                # parameters, for the memory check


def _text_ids(prompt: Any, what: str) -> Tensor:
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.dtype != torch.int64:
        got = f"a {type(prompt).__name__}" if not isinstance(prompt, Tensor) else \
            f"a tensor {tuple(prompt.shape)} {prompt.dtype}"
        raise TypeError(f"{what} takes its prompt as token ids, a (batch, length) torch.int64 tensor; got {got}")
    if prompt.shape[1] < 1:
        raise ValueError(f"{what}: the prompt is empty")
    return prompt


# ---------------------------------------------------------------------------- Hugging Face


class StaticCacheLM(nn.Module):
    """A transformers causal LM over caches given as inputs (see the module docstring)."""

    def __init__(self, model: nn.Module, max_cache_len: int):
        super().__init__()
        self.model, self.max_cache_len = model, max_cache_len

    def _cache(self, caches: tuple[Tensor, ...], start: Tensor) -> Any:
        from transformers.cache_utils import StaticCache
        cache = StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
        if len(caches) != 2 * len(cache.layers):
            raise ValueError(f"{type(self.model).__name__} takes {2 * len(cache.layers)} caches (k and v per "
                             f"layer), got {len(caches)}")
        for i, layer in enumerate(cache.layers):
            k, v = caches[2 * i], caches[2 * i + 1]
            layer.keys, layer.values = k, v
            layer.batch_size, layer.num_heads, _, layer.k_head_dim = k.shape
            layer.v_head_dim, layer.device, layer.dtype = v.shape[-1], k.device, k.dtype
            layer.cumulative_length = start.clone()       # where this call writes (advanced in place)
            layer.is_initialized = True
        return cache

    def logits(self, input_ids: Tensor, positions: Tensor, caches: tuple[Tensor, ...]) -> Tensor:
        cache = self._cache(caches, positions[0])
        out = self.model(input_ids=input_ids, cache=cache, cache_position=positions, use_cache=True,
                         logits_to_keep=1)
        return out.logits


class StaticCachePrefill(StaticCacheLM):
    """forward(input_ids, *caches): the prompt at positions 0..P-1 (constants of the graph, so the
    causal mask folds away), the last position's logits."""

    def forward(self, input_ids: Tensor, *caches: Tensor) -> Tensor:
        return self.logits(input_ids, torch.arange(input_ids.shape[1], device=input_ids.device), caches)


class StaticCacheDecode(StaticCacheLM):
    """forward(input_ids, cache_position, *caches): one token per sequence at `cache_position`."""

    def forward(self, input_ids: Tensor, cache_position: Tensor, *caches: Tensor) -> Tensor:
        return self.logits(input_ids, cache_position, caches)


def _is_hf_causal_lm(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _hf_graphs(model: nn.Module, prompt: Any, max_cache_len: int) -> ServingGraphs:
    name = type(model).__name__
    config = model.config
    can_generate = getattr(model, "can_generate", lambda: False)()
    if not can_generate or getattr(config, "is_encoder_decoder", False) or not name.endswith("ForCausalLM"):
        raise NotADecoderError(f"ember.generate serves decoder-only causal LMs (a transformers *ForCausalLM); "
                               f"{name} is not one")
    ids = _text_ids(prompt, "ember.generate")
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    batch = ids.shape[0]
    dtype = next(model.parameters()).dtype
    shapes = [(batch, kv_heads, max_cache_len, head_dim)] * (2 * text.num_hidden_layers)
    return ServingGraphs(name, StaticCachePrefill(model, max_cache_len).eval(), (ids,),
                         StaticCacheDecode(model, max_cache_len).eval(), shapes, dtype, ids.shape[1],
                         batch, text.vocab_size, getattr(text, "max_position_embeddings", None),
                         sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------------------- the reference model


def _multimodal_graphs(model: nn.Module, prompt: Any, max_cache_len: int) -> ServingGraphs:
    from models.multimodal import MultimodalDecode, MultimodalPrefill
    cfg = model.cfg
    if isinstance(prompt, Tensor):
        raise TypeError("the multimodal model takes its prompt as (text_ids, image, audio, video): "
                        "models.multimodal.prefill_inputs(cfg) makes one")
    if not (isinstance(prompt, (tuple, list)) and len(prompt) == 4 and all(isinstance(t, Tensor) for t in prompt)):
        raise TypeError("the multimodal model takes its prompt as a tuple (text_ids, image, audio, video)")
    text_ids = _text_ids(prompt[0], "the multimodal model")
    batch = text_ids.shape[0]
    want = {"image": (batch, cfg.image_channels, cfg.image_size, cfg.image_size),
            "audio": (batch, cfg.audio_mels, cfg.audio_frames),
            "video": (batch, cfg.video_frames, cfg.image_channels, cfg.video_size, cfg.video_size)}
    for (what, shape), x in zip(want.items(), prompt[1:]):
        if tuple(x.shape) != shape:
            raise ValueError(f"the multimodal model's {what} must be {shape} for this config, got {tuple(x.shape)}")
    prompt_len = cfg.image_tokens + cfg.video_tokens + cfg.audio_tokens + text_ids.shape[1]
    shapes = [model.cache_shape(batch, max_cache_len)] * (2 * cfg.n_layers)
    dtype = next(model.parameters()).dtype
    return ServingGraphs("multimodal", MultimodalPrefill(model).eval(), tuple(prompt), MultimodalDecode(model).eval(),
                         shapes, dtype, prompt_len, batch, cfg.vocab_size, None,
                         sum(p.numel() for p in model.parameters()))


def _unwrap(model: nn.Module) -> nn.Module:
    """The decoder a SPEC's wrapper holds (`models.huggingface.TransformersModel`, the reference
    model's decode and prefill graphs)."""
    inner = getattr(model, "model", None)
    if type(model).__name__ in ("TransformersModel", "MultimodalDecode", "MultimodalPrefill") \
            and isinstance(inner, nn.Module):
        return inner
    return model


def random_prompt(model: nn.Module, prompt_len: int | None = None, batch: int | None = None) -> Any:
    """A fresh random prompt for `model`: token ids (batch, prompt_len), or for the multimodal model
    (text_ids, image, audio, video) with `prompt_len` text tokens. On the meta device for a model
    built there (timing only)."""
    from dataclasses import replace

    from models.multimodal import MultimodalModel, prefill_inputs
    model = _unwrap(model)
    meta = any(p.is_meta for p in model.parameters())
    if isinstance(model, MultimodalModel):
        cfg = model.cfg if batch is None else replace(model.cfg, batch=batch)
        with torch.device("meta" if meta else "cpu"):
            return prefill_inputs(cfg, text_len=prompt_len)
    if not _is_hf_causal_lm(model):
        raise NotADecoderError(f"ember generate serves decoder-only language models; {type(model).__name__} "
                               "is not one")
    vocab = model.config.get_text_config().vocab_size
    shape = (batch or 1, prompt_len or 16)
    if meta:
        return torch.empty(shape, dtype=torch.int64, device="meta")
    return torch.randint(0, vocab, shape)


def prompt_positions(model: nn.Module, prompt: Any) -> int:
    """Cache positions `prompt` fills (text tokens, or for the multimodal model every modality)."""
    from models.multimodal import MultimodalModel
    model = _unwrap(model)
    if isinstance(model, MultimodalModel):
        return _multimodal_graphs(model, prompt, 1).prompt_len
    return _text_ids(prompt, "ember.generate").shape[1]


def serving_graphs(model: nn.Module, prompt: Any, max_cache_len: int) -> ServingGraphs:
    """The serving graphs of a decoder (see the module docstring); NotADecoderError for a model
    that is not one."""
    from models.multimodal import MultimodalModel
    model = _unwrap(model)
    builders: list[tuple[Callable[[nn.Module], bool], Callable[..., ServingGraphs]]] = [
        (lambda m: isinstance(m, MultimodalModel), _multimodal_graphs),
        (_is_hf_causal_lm, _hf_graphs),
    ]
    for matches, build in builders:
        if matches(model):
            return build(model.eval(), prompt, max_cache_len)
    raise NotADecoderError(f"ember.generate serves decoder-only language models (a transformers *ForCausalLM, or "
                           f"models.multimodal.MultimodalModel); {type(model).__name__} is not one")
