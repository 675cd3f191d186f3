"""An early-fusion multimodal decoder: the reference model Ember is built around.

Text tokens, image patches, log-mel audio frames and short video clips are each embedded and
projected into the model width, concatenated into one sequence `[image | video | audio | text]`,
and run through a decoder-only transformer (RMSNorm, rotary embeddings, grouped-query attention
through `scaled_dot_product_attention`, SwiGLU MLP) with an LM head over every position.

Three graphs share one set of weights:
- prefill, `MultimodalModel.forward(text_ids, image, audio, video) -> (logits, k_cache, v_cache)`,
  logits for every position and the caches stacked over layers,
  `(n_layers, batch, n_kv_heads, length, head_dim)`;
- serving prefill, `MultimodalPrefill.forward(text_ids, image, audio, video, *caches) -> logits`
  of the last position, writing the prompt's keys and values into preallocated per-layer caches
  (`k0, v0, k1, v1, ...`, each `(batch, n_kv_heads, max_len, head_dim)`) in place;
- one-token decode, `MultimodalDecode.forward(token_ids, position, *caches) -> logits`: the new
  token at `position` (shape (1,), shared by the batch) writes its keys and values into the
  caches in place (`index_copy_`) and attends to every filled slot (a mask `slot <= position`),
  so a step never copies the cache.

Everything captures with `torch.export` at static shapes: no data-dependent control flow, only
conv / linear / sdpa / rms_norm / silu / gelu / embedding / cat / views / slices / add / mul /
cos / sin / arange / index_copy / comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import register_model, seeded

WEIGHT_SEED = 0


@dataclass(frozen=True)
class MultimodalConfig:
    """Every size of the multimodal model and of its example inputs."""

    # decoder
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    # example prefill inputs
    batch: int
    text_len: int
    # image path: (batch, channels, image_size, image_size), ViT patches
    image_size: int
    patch_size: int
    vision_dim: int
    # audio path: (batch, audio_mels, audio_frames) log-mel, two stride-2 Conv1d layers
    audio_mels: int
    audio_frames: int
    audio_dim: int
    # video path: (batch, video_frames, channels, video_size, video_size); frames merged in
    # groups of `temporal_patch`, then spatial patches of `patch_size`
    video_frames: int
    video_size: int
    temporal_patch: int = 2
    image_channels: int = 3
    # decode example: KV cache length
    decode_cache_len: int = 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        checks = {
            "d_model % n_heads == 0": self.d_model % self.n_heads == 0,
            "n_heads % n_kv_heads == 0": self.n_heads % self.n_kv_heads == 0,
            "head_dim is even (rotary)": (self.d_model // self.n_heads) % 2 == 0,
            "image_size % patch_size == 0": self.image_size % self.patch_size == 0,
            "video_size % patch_size == 0": self.video_size % self.patch_size == 0,
            "video_frames % temporal_patch == 0": self.video_frames % self.temporal_patch == 0,
            "audio_frames % 4 == 0 (two stride-2 convs)": self.audio_frames % 4 == 0,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"bad MultimodalConfig: {', '.join(failed)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def video_tokens(self) -> int:
        return (self.video_frames // self.temporal_patch) * (self.video_size // self.patch_size) ** 2

    @property
    def audio_tokens(self) -> int:
        return self.audio_frames // 4

    @property
    def prefill_len(self) -> int:
        """Positions in the example prefill sequence, all modalities together."""
        return self.image_tokens + self.video_tokens + self.audio_tokens + self.text_len


CONFIGS: dict[str, MultimodalConfig] = {
    # seconds in tests: 4 image + 8 video + 8 audio + 8 text = 28 positions
    "multimodal-tiny": MultimodalConfig(
        vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176,
        batch=2, text_len=8,
        image_size=16, patch_size=8, vision_dim=32,
        audio_mels=16, audio_frames=32, audio_dim=32,
        video_frames=4, video_size=16,
        decode_cache_len=32,
    ),
    # tens of millions of parameters: 16 image + 64 video + 32 audio + 64 text = 176 positions
    "multimodal-small": MultimodalConfig(
        vocab_size=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1408,
        batch=1, text_len=64,
        image_size=64, patch_size=16, vision_dim=256,
        audio_mels=80, audio_frames=128, audio_dim=256,
        video_frames=8, video_size=64,
        decode_cache_len=256,
    ),
    # 7B class (Llama/Mistral-7B decoder shape), built on meta:
    # 576 image + 512 video + 400 audio + 560 text = 2048 positions
    "multimodal-7b": MultimodalConfig(
        vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
        batch=1, text_len=560,
        image_size=336, patch_size=14, vision_dim=1024,
        audio_mels=128, audio_frames=1600, audio_dim=1024,
        video_frames=4, video_size=224,
        decode_cache_len=2048, rope_theta=500000.0,
    ),
}


# ---------------------------------------------------------------- modality embeddings


class ImagePatchEmbed(nn.Module):
    """ViT patch embedding (Conv2d, kernel = stride = patch) projected to the model width."""

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        p = cfg.patch_size
        self.patch = nn.Conv2d(cfg.image_channels, cfg.vision_dim, kernel_size=p, stride=p)
        self.proj = nn.Linear(cfg.vision_dim, cfg.d_model)

    def forward(self, image: Tensor) -> Tensor:  # (B, C, H, W) -> (B, H/p * W/p, d_model)
        x = self.patch(image).flatten(2).transpose(1, 2)
        return self.proj(x)


class VideoPatchEmbed(nn.Module):
    """Spatio-temporal patches of a clip, projected to the model width.

    Each group of `temporal_patch` consecutive frames is stacked along channels and patched by
    one Conv2d: the same linear map as a Conv3d with kernel = stride = (temporal_patch, p, p)
    (as Qwen2-VL's patch embedding), but only a 2D convolution reaches the compiler.
    """

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        p = cfg.patch_size
        self.temporal_patch = cfg.temporal_patch
        self.patch = nn.Conv2d(cfg.temporal_patch * cfg.image_channels, cfg.vision_dim, kernel_size=p, stride=p)
        self.proj = nn.Linear(cfg.vision_dim, cfg.d_model)

    def forward(self, video: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, T/tp * H/p * W/p, d_model)
        b, t, c, h, w = video.shape
        groups = t // self.temporal_patch
        # Frames of one group are adjacent in memory, so this is a view.
        x = video.reshape(b * groups, self.temporal_patch * c, h, w)
        x = self.patch(x)  # (B * groups, vision_dim, h/p, w/p)
        x = x.flatten(2).transpose(1, 2).reshape(b, groups * x.shape[2] * x.shape[3], x.shape[1])
        return self.proj(x)


class AudioStem(nn.Module):
    """Whisper-style convolutional stem over log-mel frames: two Conv1d (k=3, stride 2) + GELU,
    so four frames make one token, projected to the model width."""

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.audio_mels, cfg.audio_dim, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(cfg.audio_dim, cfg.audio_dim, kernel_size=3, stride=2, padding=1)
        self.proj = nn.Linear(cfg.audio_dim, cfg.d_model)

    def forward(self, mel: Tensor) -> Tensor:  # (B, mels, frames) -> (B, frames/4, d_model)
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))
        return self.proj(x.transpose(1, 2))


# ---------------------------------------------------------------- decoder


class RMSNorm(nn.Module):
    """RMSNorm through `F.rms_norm`, so the capture sees one op rather than pow/mean/rsqrt."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.weight.shape[0],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """cos/sin tables computed in forward from integer positions.

    `inv_freq` is a persistent buffer: torch-mlir's importer trips over non-persistent rotary
    buffers (see DESIGN.md), and a persistent one travels with the state dict.
    """

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        hd = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (B or 1, S) int64 -> cos, sin of shape (B or 1, 1, S, head_dim)."""
        # int64 * float32 promotes to float32: no separate cast op in the graph.
        freqs = positions.unsqueeze(-1) * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, S, head_dim) by the position angles (half-split layout, as Llama)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def expand_kv_heads(x: Tensor, n_rep: int) -> Tensor:
    """(B, kv_heads, S, hd) -> (B, kv_heads * n_rep, S, hd); each kv head serves n_rep q heads."""
    if n_rep == 1:
        return x
    b, kv, s, hd = x.shape
    return x.unsqueeze(2).expand(b, kv, n_rep, s, hd).reshape(b, kv * n_rep, s, hd)


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention through `scaled_dot_product_attention`."""

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        b, _, s, _ = q.shape
        n_rep = self.n_heads // self.n_kv_heads
        out = F.scaled_dot_product_attention(
            q, expand_kv_heads(keys, n_rep), expand_kv_heads(values, n_rep), attn_mask=mask, is_causal=causal
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Causal attention over the sequence; returns the output and this layer's keys/values."""
        q, k, v = self._qkv(x, cos, sin)
        return self._attend(q, k, v, None, True), k, v

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                       positions: Tensor, mask: Tensor | None) -> Tensor:
        """Write this step's keys/values into the caches at `positions`, in place, and attend:
        without a mask (a prompt from position 0), causally over the prompt's own keys; with
        one (decode), over every cache slot the mask keeps."""
        q, k, v = self._qkv(x, cos, sin)
        k_cache.index_copy_(2, positions, k)
        v_cache.index_copy_(2, positions, v)
        if mask is None:
            return self._attend(q, k, v, None, True)
        return self._attend(q, k_cache, v_cache, mask, False)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = GroupedQueryAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn_out, keys, values = self.attn(self.attn_norm(x), cos, sin)
        x = x + attn_out
        x = x + self.mlp(self.mlp_norm(x))
        return x, keys, values

    def forward_cached(self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor,
                       positions: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attn.forward_cached(self.attn_norm(x), cos, sin, k_cache, v_cache, positions, mask)
        return x + self.mlp(self.mlp_norm(x))


class MultimodalModel(nn.Module):
    """Early-fusion multimodal decoder; `forward` is the prefill graph."""

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.image_embed = ImagePatchEmbed(cfg)
        self.video_embed = VideoPatchEmbed(cfg)
        self.audio_embed = AudioStem(cfg)
        self.rotary = RotaryEmbedding(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def embed_prompt(self, text_ids: Tensor, image: Tensor, audio: Tensor, video: Tensor) -> Tensor:
        """The prompt sequence `[image | video | audio | text]`, (B, S, d_model)."""
        return torch.cat(
            (self.image_embed(image), self.video_embed(video), self.audio_embed(audio), self.embed_tokens(text_ids)),
            dim=1,
        )

    def forward(self, text_ids: Tensor, image: Tensor, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prefill.

        text_ids (B, T) int64, image (B, C, H, W), audio (B, mels, frames), video (B, F, C, H, W)
        -> logits (B, S, vocab) for every position of `[image | video | audio | text]`,
           k_cache, v_cache (n_layers, B, n_kv_heads, S, head_dim).
        """
        h = self.embed_prompt(text_ids, image, audio, video)
        positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        cos, sin = self.rotary(positions)
        ks, vs = [], []
        for layer in self.layers:
            h, k, v = layer(h, cos, sin)
            ks.append(k)
            vs.append(v)
        return self.lm_head(self.norm(h)), _stack_layers(ks), _stack_layers(vs)

    def prefill_cached(self, text_ids: Tensor, image: Tensor, audio: Tensor, video: Tensor,
                       caches: tuple[Tensor, ...]) -> Tensor:
        """Serving prefill: the prompt's keys and values go into `caches` (k0, v0, k1, v1, ...:
        (B, n_kv_heads, max_len, head_dim)) at positions 0..S-1, in place; returns the logits of
        the last position, (B, 1, vocab), all that sampling the first token needs."""
        h = self.embed_prompt(text_ids, image, audio, video)
        positions = torch.arange(h.shape[1], device=h.device)
        cos, sin = self.rotary(positions.unsqueeze(0))
        for i, layer in enumerate(self.layers):
            h = layer.forward_cached(h, cos, sin, caches[2 * i], caches[2 * i + 1], positions, None)
        return self.lm_head(self.norm(h[:, -1:]))

    def decode(self, token_ids: Tensor, position: Tensor, caches: tuple[Tensor, ...]) -> Tensor:
        """One decode step: token_ids (B, 1) int64 at `position` (shape (1,) int64, the number of
        filled cache slots); writes the token's keys and values into `caches` at `position`, in
        place, and returns the logits (B, 1, vocab)."""
        if len(caches) != 2 * len(self.layers):
            raise ValueError(f"decode takes {2 * len(self.layers)} caches (k and v per layer), got {len(caches)}")
        h = self.embed_tokens(token_ids)
        cos, sin = self.rotary(position.view(1, 1))
        slots = caches[0].shape[2]
        mask = (torch.arange(slots, device=h.device) <= position).view(1, 1, 1, slots)
        for i, layer in enumerate(self.layers):
            h = layer.forward_cached(h, cos, sin, caches[2 * i], caches[2 * i + 1], position, mask)
        return self.lm_head(self.norm(h))

    def cache_shape(self, batch: int, max_len: int) -> tuple[int, int, int, int]:
        """The shape of each per-layer key or value cache."""
        cfg = self.cfg
        return (batch, cfg.n_kv_heads, max_len, cfg.head_dim)


def _stack_layers(per_layer: list[Tensor]) -> Tensor:
    # unsqueeze + cat rather than torch.stack: the same result from ops in the core set.
    return torch.cat([t.unsqueeze(0) for t in per_layer], dim=0)


class MultimodalPrefill(nn.Module):
    """The serving prefill graph of a `MultimodalModel` (shares its weights): the prompt's keys
    and values into preallocated caches, the last position's logits out."""

    def __init__(self, model: MultimodalModel):
        super().__init__()
        self.model = model

    def forward(self, text_ids: Tensor, image: Tensor, audio: Tensor, video: Tensor, *caches: Tensor) -> Tensor:
        return self.model.prefill_cached(text_ids, image, audio, video, caches)


class MultimodalDecode(nn.Module):
    """The one-token decode graph of a `MultimodalModel` (shares its weights): writes into the
    preallocated caches in place and returns the logits."""

    def __init__(self, model: MultimodalModel):
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor, position: Tensor, *caches: Tensor) -> Tensor:
        return self.model.decode(token_ids, position, caches)


# ---------------------------------------------------------------- builders


def build_multimodal(cfg: MultimodalConfig, seed: int = WEIGHT_SEED) -> MultimodalModel:
    """A `MultimodalModel` with deterministic, non-trivial weights (norm gains not all ones)."""
    with seeded(seed):
        model = MultimodalModel(cfg)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, RMSNorm):
                    module.weight.uniform_(0.8, 1.2)
    return model.eval()


def prefill_inputs(cfg: MultimodalConfig, text_len: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fresh random (text_ids, image, audio, video) for a prefill of `cfg` (on the current device)."""
    b = cfg.batch
    text_ids = torch.randint(0, cfg.vocab_size, (b, cfg.text_len if text_len is None else text_len))
    image = torch.randn(b, cfg.image_channels, cfg.image_size, cfg.image_size)
    audio = torch.randn(b, cfg.audio_mels, cfg.audio_frames)
    video = torch.randn(b, cfg.video_frames, cfg.image_channels, cfg.video_size, cfg.video_size)
    return text_ids, image, audio, video


def decode_inputs(cfg: MultimodalConfig, cache_len: int | None = None) -> tuple[Tensor, ...]:
    """Fresh random (token_ids, position, k0, v0, k1, v1, ...) for one decode step after
    `cache_len` filled positions (default `cfg.decode_cache_len`), into caches of one slot more."""
    length = cfg.decode_cache_len if cache_len is None else cache_len
    b = cfg.batch
    cache_shape = (b, cfg.n_kv_heads, length + 1, cfg.head_dim)
    token_ids = torch.randint(0, cfg.vocab_size, (b, 1))
    position = torch.tensor([length], dtype=torch.int64)
    return (token_ids, position, *(torch.randn(cache_shape) for _ in range(2 * cfg.n_layers)))


def _prefill(name: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    cfg = CONFIGS[name]
    return build_multimodal(cfg), prefill_inputs(cfg)


def _decode(name: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    cfg = CONFIGS[name]
    return MultimodalDecode(build_multimodal(cfg)), decode_inputs(cfg)


@register_model("multimodal-tiny")
def multimodal_tiny():
    """Prefill of the tiny config (28 positions, batch 2): for tests."""
    return _prefill("multimodal-tiny")


@register_model("multimodal-tiny-decode")
def multimodal_tiny_decode():
    """One decode step of the tiny config after 32 cached positions (caches of 33 slots)."""
    return _decode("multimodal-tiny")


@register_model("multimodal-small")
def multimodal_small():
    """Prefill of the small config (176 positions): tens of millions of parameters."""
    return _prefill("multimodal-small")


@register_model("multimodal-small-decode")
def multimodal_small_decode():
    """One decode step of the small config after 256 cached positions (caches of 257 slots)."""
    return _decode("multimodal-small")


@register_model("multimodal-7b", meta=True)
def multimodal_7b():
    """Prefill of the 7B config over 2048 positions, on the meta device (no weights allocated)."""
    cfg = CONFIGS["multimodal-7b"]
    with torch.device("meta"):
        return MultimodalModel(cfg).eval(), prefill_inputs(cfg)


@register_model("multimodal-7b-decode", meta=True)
def multimodal_7b_decode():
    """One decode step of the 7B config after 2048 cached positions (caches of 2049 slots), on the
    meta device."""
    cfg = CONFIGS["multimodal-7b"]
    with torch.device("meta"):
        return MultimodalDecode(MultimodalModel(cfg)).eval(), decode_inputs(cfg)
