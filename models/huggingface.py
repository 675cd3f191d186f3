"""Third-party models from Hugging Face `transformers`, built from tiny config objects with random
weights: text, vision, audio, time-series and vision-language models.

Nothing is downloaded: every model is a small config (hidden 32, one or two layers, 32x32 images)
built in code. Each is registered as `models:hf-<name>` (`HF_MODELS` maps name -> kind); the
model comes back wrapped in `TransformersModel`, which takes positional tensors and returns the
first output (logits or last hidden state) as a plain tensor.

`transformers` is a test extra: `models/__init__.py` imports this module only where it is
installed, and this module imports `transformers` only when a model is built, so registering
the names costs nothing.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType

import torch
from torch import Tensor, nn

from models.registry import register_model, seeded

WEIGHT_SEED = 0
PREFIX = "hf-"
KINDS = ("text", "vision", "audio", "time-series", "vision-language")

VOCAB = 128
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=VOCAB, max_position_embeddings=64)
VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
           patch_size=8)
#: transformers guards the image-token count of vision-language models with `torch._check` on a
#: data-dependent scalar, which torch.export cannot trace; this switch (transformers' own, meant
#: for production) leaves the check out.
NO_TORCH_CHECK = MappingProxyType({"TRANSFORMERS_DISABLE_TORCH_CHECK": "1"})

Inputs = Callable[[], tuple[Tensor, ...]]
#: A builder takes the `transformers` module and returns (model, input names, fresh-input maker).
Builder = Callable[[ModuleType], tuple[nn.Module, tuple[str, ...], Inputs]]


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the old values."""
    if not values:
        yield
        return
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TransformersModel(nn.Module):
    """A transformers model called with positional tensors bound to `names`; returns its first
    output (logits or last hidden state) as a plain tensor.

    `env` is set around every forward (and restored after it), so that capture, eager runs and
    every other caller see the same model without setting anything themselves.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], env: Mapping[str, str] = MappingProxyType({})):
        super().__init__()
        self.model, self.names, self.env = model, tuple(names), dict(env)

    def forward(self, *args: Tensor) -> Tensor:
        if len(args) != len(self.names):
            raise TypeError(f"{type(self.model).__name__} takes {len(self.names)} inputs "
                            f"({', '.join(self.names)}), got {len(args)}")
        with environment(self.env):
            out = self.model(**dict(zip(self.names, args)))
        return out if isinstance(out, Tensor) else out[0]


def token_ids(batch: int = 2, length: int = 8) -> Inputs:
    return lambda: (torch.randint(0, VOCAB, (batch, length)),)


def images(batch: int = 2, size: int = 32) -> Inputs:
    return lambda: (torch.randn(batch, 3, size, size),)


def _seq2seq_inputs(source: Inputs, target_length: int = 6) -> Inputs:
    return lambda: (*source(), torch.randint(3, VOCAB, (2, target_length)))


# ----------------------------------------------------------------------------- text

def llama(T):
    """Llama causal LM: RMSNorm, rotary embeddings, grouped-query attention (2 kv heads), SwiGLU."""
    cfg = T.LlamaConfig(**TEXT, num_key_value_heads=2, use_cache=False)
    return T.LlamaForCausalLM(cfg), ("input_ids",), token_ids()


def mistral(T):
    """Mistral causal LM (no sliding window)."""
    cfg = T.MistralConfig(**TEXT, num_key_value_heads=2, sliding_window=None, use_cache=False)
    return T.MistralForCausalLM(cfg), ("input_ids",), token_ids()


def qwen2(T):
    """Qwen2 causal LM: biased q/k/v projections."""
    cfg = T.Qwen2Config(**TEXT, num_key_value_heads=2, use_cache=False)
    return T.Qwen2ForCausalLM(cfg), ("input_ids",), token_ids()


def qwen3(T):
    """Qwen3 causal LM: RMSNorm on queries and keys."""
    cfg = T.Qwen3Config(**TEXT, num_key_value_heads=2, head_dim=8, use_cache=False)
    return T.Qwen3ForCausalLM(cfg), ("input_ids",), token_ids()


def gemma(T):
    """Gemma causal LM: scaled embeddings, GeGLU MLP."""
    cfg = T.GemmaConfig(**TEXT, num_key_value_heads=2, head_dim=8, use_cache=False)
    return T.GemmaForCausalLM(cfg), ("input_ids",), token_ids()


def _gpt2_config(T, **kw):
    return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, use_cache=False,
                        bos_token_id=0, eos_token_id=0, **kw)


def gpt2(T):
    """GPT-2 LM head model with eager attention (matmul, softmax)."""
    # gpt2-sdpa keeps scaled_dot_product_attention whole. GPT-2 with SDPA *decomposed* does not
    # capture: torch.export's own default decompositions fail on it with
    # "Cannot view a tensor with shape [2, 8, 32] and strides (32, 64, 1) as (16, 32)".
    return T.GPT2LMHeadModel(_gpt2_config(T, attn_implementation="eager")), ("input_ids",), token_ids()


def gpt2_sdpa(T):
    """GPT-2 LM head model with scaled_dot_product_attention."""
    return T.GPT2LMHeadModel(_gpt2_config(T, attn_implementation="sdpa")), ("input_ids",), token_ids()


def bert(T):
    """BERT encoder (no pooler): learned positions, post-LayerNorm, GELU."""
    return T.BertModel(T.BertConfig(**TEXT), add_pooling_layer=False), ("input_ids",), token_ids()


def t5_encoder(T):
    """T5 encoder: relative position buckets, RMS-style LayerNorm."""
    cfg = T.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=VOCAB,
                     relative_attention_num_buckets=8)
    return T.T5EncoderModel(cfg), ("input_ids",), token_ids()


def roberta(T):
    """RoBERTa encoder: position ids from a cumsum over the non-padding mask of the input ids."""
    return (T.RobertaModel(T.RobertaConfig(**TEXT, pad_token_id=1), add_pooling_layer=False), ("input_ids",),
            token_ids())


def bloom(T):
    """BLOOM causal LM: ALiBi position biases."""
    cfg = T.BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=VOCAB, use_cache=False)
    return T.BloomForCausalLM(cfg), ("input_ids",), token_ids()


def gemma2(T):
    """Gemma 2 causal LM: sliding-window and global layers, logit soft-capping."""
    cfg = T.Gemma2Config(**TEXT, num_key_value_heads=2, head_dim=8, sliding_window=4, use_cache=False)
    return T.Gemma2ForCausalLM(cfg), ("input_ids",), token_ids()


def phi(T):
    """Phi causal LM: partial rotary embedding, parallel attention and MLP."""
    return T.PhiForCausalLM(T.PhiConfig(**TEXT, use_cache=False)), ("input_ids",), token_ids()


def _mixtral(T, experts: str):
    cfg = T.MixtralConfig(**TEXT, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, use_cache=False)
    cfg._experts_implementation = experts
    return T.MixtralForCausalLM(cfg), ("input_ids",), token_ids()


def mixtral(T):
    """Mixtral mixture of experts: top-k routing, experts' weights gathered per token, bmm."""
    return _mixtral(T, "batched_mm")


def mixtral_grouped_mm(T):
    """Mixtral with transformers' default experts: histc and its own grouped-matmul custom op."""
    return _mixtral(T, "grouped_mm")


def qwen2_moe(T):
    """Qwen2-MoE: softmax top-k routing over experts plus a sigmoid-gated shared expert; its
    experts as transformers' batched_mm (gathers and a batched matmul, on the chip)."""
    cfg = T.Qwen2MoeConfig(**TEXT, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                           moe_intermediate_size=32, shared_expert_intermediate_size=48, use_cache=False)
    cfg._experts_implementation = "batched_mm"
    return T.Qwen2MoeForCausalLM(cfg), ("input_ids",), token_ids()


def olmoe(T):
    """OLMoE: top-k routing without renormalisation, QK norm; experts as batched_mm."""
    cfg = T.OlmoeConfig(**TEXT, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, use_cache=False,
                        eos_token_id=None, pad_token_id=None)
    cfg._experts_implementation = "batched_mm"
    return T.OlmoeForCausalLM(cfg), ("input_ids",), token_ids()


def deberta_v2(T):
    """DeBERTa-v2 encoder: disentangled attention, relative position buckets (log, sign), gathers."""
    cfg = T.DebertaV2Config(**TEXT, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
                            max_relative_positions=16)
    return T.DebertaV2Model(cfg), ("input_ids",), token_ids()


def mamba(T):
    """Mamba causal LM: selective state-space model (the sequential scan of transformers' slow path)."""
    cfg = T.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=VOCAB, state_size=8, expand=2, conv_kernel=4,
                        use_cache=False)
    return T.MambaForCausalLM(cfg), ("input_ids",), token_ids()


def xlnet(T):
    """XLNet: two-stream relative attention written with torch.einsum."""
    cfg = T.XLNetConfig(d_model=32, n_layer=2, n_head=4, d_inner=64, vocab_size=VOCAB, use_mems_eval=False)
    return T.XLNetModel(cfg), ("input_ids",), token_ids()


def bart(T):
    """BART encoder-decoder: token ids and decoder input ids in, decoder logits out."""
    cfg = T.BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB,
                       max_position_embeddings=64, use_cache=False)
    return (T.BartForConditionalGeneration(cfg), ("input_ids", "decoder_input_ids"),
            _seq2seq_inputs(lambda: (torch.randint(3, VOCAB, (2, 8)),)))


def t5(T):
    """T5 encoder-decoder: token ids and decoder input ids in, decoder logits out."""
    cfg = T.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=VOCAB,
                     relative_attention_num_buckets=8, use_cache=False)
    return T.T5ForConditionalGeneration(cfg), ("input_ids", "decoder_input_ids"), _seq2seq_inputs(token_ids())


# ----------------------------------------------------------------------------- vision

def vit(T):
    """ViT encoder (no pooler) on 2x3x32x32 images, 8x8 patches."""
    return T.ViTModel(T.ViTConfig(**VIT), add_pooling_layer=False), ("pixel_values",), images()


def clip_vision(T):
    """CLIP vision tower: pre-LayerNorm, quick GELU."""
    return T.CLIPVisionModel(T.CLIPVisionConfig(**VIT)), ("pixel_values",), images()


def siglip_vision(T):
    """SigLIP vision tower: attention-pooling head."""
    return T.SiglipVisionModel(T.SiglipVisionConfig(**VIT)), ("pixel_values",), images()


def resnet(T):
    """ResNet (basic blocks, 16 and 32 channels): convolutions, batch norm, max pool."""
    cfg = T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    return T.ResNetModel(cfg), ("pixel_values",), images()


def convnext(T):
    """ConvNeXt: depthwise 7x7 convolutions, channels-last LayerNorm, layer scale."""
    cfg = T.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32)
    return T.ConvNextModel(cfg), ("pixel_values",), images()


def dinov2(T):
    """DINOv2 on 40x40 images: position embeddings interpolated (bicubic) from the 32x32 grid."""
    return T.Dinov2Model(T.Dinov2Config(**VIT)), ("pixel_values",), images(size=40)


def swin(T):
    """Swin transformer: shifted windows (roll), window partition and relative position bias."""
    cfg = T.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, image_size=32, patch_size=4)
    return T.SwinModel(cfg, add_pooling_layer=False), ("pixel_values",), images()


def mobilenet_v2(T):
    """MobileNetV2: depthwise convolutions, relu6."""
    return T.MobileNetV2Model(T.MobileNetV2Config(image_size=32, depth_multiplier=0.25)), ("pixel_values",), images()


def segformer(T):
    """SegFormer semantic segmentation: the decode head upsamples every stage bilinearly."""
    cfg = T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                            num_attention_heads=[1, 2], decoder_hidden_size=32, patch_sizes=[7, 3], strides=[4, 2],
                            num_labels=3)
    return T.SegformerForSemanticSegmentation(cfg), ("pixel_values",), images()


def beit(T):
    """BEiT: relative position bias, resized to the image grid."""
    cfg = T.BeitConfig(**VIT, use_relative_position_bias=True)
    return T.BeitModel(cfg, add_pooling_layer=False), ("pixel_values",), images()


def levit(T):
    """LeViT: convolutional stem, attention with learned biases indexed by relative offsets."""
    cfg = T.LevitConfig(image_size=32, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                        key_dim=[8, 8, 8], patch_size=16, stride=2)
    return T.LevitModel(cfg), ("pixel_values",), images()


def dpt(T):
    """DPT depth estimation: ViT features reassembled and fused with bilinear upsampling."""
    cfg = T.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
                      patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32],
                      fusion_hidden_size=16, head_hidden_size=8)
    return T.DPTForDepthEstimation(cfg), ("pixel_values",), images(batch=1)


def detr(T):
    """DETR object detection: ResNet backbone, sine position embedding of the pixel mask, transformer."""
    backbone = T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                              out_features=["stage2"])
    cfg = T.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                       encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                       encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8)
    return T.DetrModel(cfg), ("pixel_values",), images(batch=1, size=64)


# ----------------------------------------------------------------------------- audio

def whisper_encoder(T):
    """Whisper encoder: two Conv1d over log-mel frames (2x16 mels x 32 frames), sinusoidal positions."""
    cfg = T.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=16,
                          max_source_positions=16, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, decoder_start_token_id=1)
    # (batch, mel bins, frames = 2 * max_source_positions)
    return T.WhisperModel(cfg).get_encoder(), ("input_features",), lambda: (torch.randn(2, 16, 32),)


def wav2vec2(T):
    """wav2vec 2.0 on raw waveforms: strided Conv1d feature encoder, grouped convolutional positions."""
    cfg = T.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=4, vocab_size=32)
    return T.Wav2Vec2Model(cfg), ("input_values",), lambda: (torch.randn(2, 800),)


def ast(T):
    """Audio Spectrogram Transformer: ViT over spectrogram patches."""
    cfg = T.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8)
    return T.ASTModel(cfg), ("input_values",), lambda: (torch.randn(2, 32, 16),)


def hubert(T):
    """HuBERT on raw waveforms (the wav2vec 2.0 architecture)."""
    cfg = T.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4, vocab_size=32)
    return T.HubertModel(cfg), ("input_values",), lambda: (torch.randn(2, 800),)


def speech2text_encoder(T):
    """Speech2Text encoder: (batch, frames, features) through a strided Conv1d subsampler."""
    cfg = T.Speech2TextConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                              input_feat_per_channel=16, conv_channels=32, max_source_positions=64,
                              vocab_size=VOCAB, pad_token_id=1)
    return T.Speech2TextModel(cfg).get_encoder(), ("input_features",), lambda: (torch.randn(2, 32, 16),)


def whisper(T):
    """Whisper encoder-decoder: log-mel features in, decoder logits out."""
    cfg = T.WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=16,
                          max_source_positions=16, max_target_positions=32, vocab_size=VOCAB, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, use_cache=False)
    return (T.WhisperForConditionalGeneration(cfg), ("input_features", "decoder_input_ids"),
            _seq2seq_inputs(lambda: (torch.randn(2, 16, 32),)))


# ----------------------------------------------------------------------------- time series

def patchtst(T):
    """PatchTST forecasting encoder: patching with Tensor.unfold, per-channel instance scaling."""
    cfg = T.PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=32,
                           num_attention_heads=4, num_hidden_layers=2, ffn_dim=64)
    return T.PatchTSTModel(cfg), ("past_values",), lambda: (torch.randn(2, 32, 3),)


# ----------------------------------------------------------------------------- vision-language

IMAGE_TOKEN = VOCAB - 1


def _vlm_inputs(image_positions: slice, length: int = 24) -> Inputs:
    def make():
        ids = torch.randint(1, IMAGE_TOKEN - 4, (1, length))
        ids[0, image_positions] = IMAGE_TOKEN
        return ids, torch.randn(1, 3, 32, 32)
    return make


def llava(T):
    """LLaVA: CLIP vision tower, GELU projector, Llama decoder; 16 image tokens in 24."""
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(**VIT, projection_dim=32),
        text_config=T.LlamaConfig(**TEXT, num_key_value_heads=2, use_cache=False),
        image_token_index=IMAGE_TOKEN, vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu")
    # 16 patches (32/8)^2, CLS dropped by the "default" strategy: 16 image tokens
    return T.LlavaForConditionalGeneration(cfg), ("input_ids", "pixel_values"), _vlm_inputs(slice(4, 20))


def _paligemma(T, attn: str):
    cfg = T.PaliGemmaConfig(
        vision_config=T.SiglipVisionConfig(**VIT),
        text_config=T.GemmaConfig(**TEXT, num_key_value_heads=2, head_dim=8, use_cache=False),
        image_token_index=IMAGE_TOKEN, projection_dim=32)
    cfg._attn_implementation = attn
    for sub in (cfg.text_config, cfg.vision_config):
        sub._attn_implementation = attn
    return T.PaliGemmaForConditionalGeneration(cfg), ("input_ids", "pixel_values"), _vlm_inputs(slice(0, 16))


def paligemma(T):
    """PaliGemma: SigLIP vision tower, Gemma decoder, eager attention."""
    return _paligemma(T, "eager")


def paligemma_sdpa(T):
    """PaliGemma with SDPA attention (eager attends bidirectionally here, see the comment)."""
    # Eager PaliGemma with SDPA and no attention mask skips the causal mask expecting SDPA's
    # is_causal, but its layers set is_causal=False: eager attends bidirectionally, while under
    # torch.export transformers builds the explicit causal mask. The exported program (and Ember)
    # then differ from eager SDPA by ~5e-2 but match eager attention to 2e-7.
    return _paligemma(T, "sdpa")


def clip(T):
    """CLIP: contrastive text-image model, logits_per_image from both towers."""
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                max_position_embeddings=16)
    cfg = T.CLIPConfig(text_config=text, vision_config=VIT, projection_dim=16)
    return (T.CLIPModel(cfg), ("input_ids", "pixel_values"),
            lambda: (torch.randint(0, VOCAB, (2, 8)), torch.randn(2, 3, 32, 32)))


def gemma3(T):
    """Gemma 3: SigLIP tower average-pooled to 4 tokens per image, decoder with sliding windows."""
    cfg = T.Gemma3Config(
        text_config=dict(**TEXT, num_key_value_heads=2, head_dim=8, sliding_window=4, use_cache=False),
        vision_config=VIT, mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN, boi_token_index=IMAGE_TOKEN - 2,
        eoi_token_index=IMAGE_TOKEN - 1)
    return (T.Gemma3ForConditionalGeneration(cfg), ("input_ids", "pixel_values"),
            _vlm_inputs(slice(2, 6), length=12))


def qwen2_vl(T):
    """Qwen2-VL: vision patches merged 2x2, multimodal rotary positions (mrope)."""
    cfg = T.Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=160, max_position_embeddings=128,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, use_cache=False),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2, in_channels=3),
        image_token_id=151, video_token_id=152, vision_start_token_id=153)

    def make():   # one 16x16 image: a 4x4 grid of patches, merged 2x2 into 4 image tokens
        ids = torch.randint(0, 150, (1, 12))
        ids[0, 2], ids[0, 3:7] = 153, 151
        # each token's modality (text 0, image 1), which transformers' processor returns with the ids
        token_types = torch.zeros(1, 12, dtype=torch.int64)
        token_types[0, 3:7] = 1
        return ids, torch.randn(16, 3 * 2 * 4 * 4), torch.tensor([[1, 4, 4]]), token_types
    names = ("input_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    return T.Qwen2VLForConditionalGeneration(cfg), names, make


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class HFModel:
    """One transformers model: its name (registered as `models:hf-<name>`), its kind, how to build
    it, and the environment its forward runs in."""

    name: str
    kind: str
    build: Builder
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return f"models:{PREFIX}{self.name}"

    def load(self) -> tuple[TransformersModel, tuple[Tensor, ...]]:
        """The wrapped model (weights seeded: the same on every load) and fresh random inputs."""
        import transformers
        verbosity = transformers.logging.get_verbosity()
        # Tiny vocabularies put the configs' default special-token ids out of range: a warning
        # about ids these models never see.
        transformers.logging.set_verbosity_error()
        try:
            with seeded(WEIGHT_SEED):
                model, names, make_inputs = self.build(transformers)
        finally:
            transformers.logging.set_verbosity(verbosity)
        return TransformersModel(model.eval(), names, self.env).eval(), make_inputs()


_TABLE = [
    HFModel("llama", "text", llama), HFModel("mistral", "text", mistral), HFModel("qwen2", "text", qwen2),
    HFModel("qwen3", "text", qwen3), HFModel("gemma", "text", gemma), HFModel("gpt2", "text", gpt2),
    HFModel("gpt2-sdpa", "text", gpt2_sdpa), HFModel("bert", "text", bert),
    HFModel("t5-encoder", "text", t5_encoder), HFModel("roberta", "text", roberta), HFModel("bloom", "text", bloom),
    HFModel("gemma2", "text", gemma2), HFModel("phi", "text", phi), HFModel("mixtral", "text", mixtral),
    HFModel("mixtral-grouped-mm", "text", mixtral_grouped_mm), HFModel("qwen2-moe", "text", qwen2_moe),
    HFModel("olmoe", "text", olmoe), HFModel("deberta-v2", "text", deberta_v2),
    HFModel("mamba", "text", mamba), HFModel("bart", "text", bart), HFModel("t5", "text", t5),
    HFModel("xlnet", "text", xlnet),
    HFModel("vit", "vision", vit), HFModel("clip-vision", "vision", clip_vision),
    HFModel("siglip-vision", "vision", siglip_vision), HFModel("resnet", "vision", resnet),
    HFModel("convnext", "vision", convnext), HFModel("dinov2", "vision", dinov2), HFModel("swin", "vision", swin),
    HFModel("mobilenet-v2", "vision", mobilenet_v2), HFModel("segformer", "vision", segformer),
    HFModel("beit", "vision", beit), HFModel("levit", "vision", levit), HFModel("dpt", "vision", dpt),
    HFModel("detr", "vision", detr),
    HFModel("whisper-encoder", "audio", whisper_encoder), HFModel("wav2vec2", "audio", wav2vec2),
    HFModel("ast", "audio", ast), HFModel("hubert", "audio", hubert),
    HFModel("speech2text-encoder", "audio", speech2text_encoder), HFModel("whisper", "audio", whisper),
    HFModel("patchtst", "time-series", patchtst),
    HFModel("clip", "vision-language", clip),
    HFModel("llava", "vision-language", llava, NO_TORCH_CHECK),
    # The same model without the switch: transformers' torch._check stays in the captured program.
    HFModel("llava-torch-check", "vision-language", llava),
    HFModel("paligemma", "vision-language", paligemma, NO_TORCH_CHECK),
    HFModel("paligemma-sdpa", "vision-language", paligemma_sdpa, NO_TORCH_CHECK),
    HFModel("gemma3", "vision-language", gemma3, NO_TORCH_CHECK),
    HFModel("qwen2-vl", "vision-language", qwen2_vl, NO_TORCH_CHECK),
]

#: Every transformers model, by name (without the `hf-` prefix), in registration order.
MODELS: dict[str, HFModel] = {m.name: m for m in _TABLE}
#: name -> kind ("text" | "vision" | "audio" | "time-series" | "vision-language").
HF_MODELS: dict[str, str] = {m.name: m.kind for m in _TABLE}


def _register(entry: HFModel) -> None:
    if entry.kind not in KINDS:
        raise ValueError(f"model {entry.name!r}: kind {entry.kind!r} is not one of {', '.join(KINDS)}")
    def factory():
        return entry.load()
    factory.__qualname__ = factory.__name__ = f"hf_{entry.name.replace('-', '_')}"
    doc = (entry.build.__doc__ or "").strip().splitlines()
    register_model(f"{PREFIX}{entry.name}", description=f"[{entry.kind}] {doc[0] if doc else entry.name}")(factory)


for _entry in _TABLE:
    _register(_entry)
