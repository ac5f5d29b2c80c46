"""Model configuration: LLaVA-1.5-style MLLM sizes, validation, HF `LlavaConfig` interop.

A model config is an `ml_collections.ConfigDict` with this layout (field names follow
the HF `LlavaConfig` / `CLIPVisionConfig` / `LlamaConfig` meaning):

  vision.{image_size, patch_size, num_channels, hidden_size, intermediate_size,
          num_layers, num_heads, layer_norm_eps, hidden_act,
          feature_layer,            # hidden state fed to the projector (-2: LLaVA-1.5)
          feature_select_strategy}  # "default" drops CLS, "full" keeps it
  projector.{hidden_act, use_bias}
  text.{vocab_size, hidden_size, intermediate_size, num_layers, num_heads,
        num_kv_heads, head_dim, hidden_act, rope_theta, rms_norm_eps,
        max_position_embeddings, tie_word_embeddings}
  image_token_id, pad_token_id, bos_token_id, eos_token_id
  family       # "llava15" (`rlhfv_jax.model.families`)
  dtype        # compute dtype: "float32" (CPU tests) or "bfloat16" (accelerators)
  param_dtype  # storage dtype of the parameters
  remat        # rematerialize each transformer layer in the backward pass
  logits_chunk # tokens per LM-head chunk in the losses (0: all at once; `rlhfv_jax.logps`)
  lora.{rank, alpha, targets, dropout, trained}  # LoRA adapters (rank 0: off;
               # `rlhfv_jax.model.lora`); not part of the HF config

`vision.feature_layer` indexes the CLIP hidden-state list the way HF does: entry 0 is
the (pre-layernormed) embedding output and entry i the output of layer i, so -1 is the
last layer and -2 (LLaVA-1.5) the one before it.
"""

from __future__ import annotations

import os
from typing import Any, Union

import ml_collections

from rlhfv_jax.model import config_common
from rlhfv_jax.model import families

# Token ids of llava-hf/llava-1.5-*-hf: Llama-2 tokenizer (32000 pieces) + `<image>`
# (32000) + `<pad>` (32001), embedding table padded to 32064 rows.
LLAVA_HF_VOCAB_SIZE = 32064
LLAVA_HF_IMAGE_TOKEN_ID = 32000
LLAVA_HF_PAD_TOKEN_ID = 32001

FAMILY = "llava15"
SIZES = ("tiny", "7b", "13b")

# Activation names understood by `rlhfv_jax.model.layers.activation` (HF ACT2FN names).
SUPPORTED_ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "silu",
                         "swish", "relu")


def _clip_vit_l_336() -> ml_collections.ConfigDict:
  """openai/clip-vit-large-patch14-336, the LLaVA-1.5 vision tower."""
  return ml_collections.ConfigDict(dict(
      image_size=336, patch_size=14, num_channels=3, hidden_size=1024,
      intermediate_size=4096, num_layers=24, num_heads=16, layer_norm_eps=1e-5,
      hidden_act="quick_gelu", feature_layer=-2, feature_select_strategy="default"))


def _vicuna(hidden_size: int, intermediate_size: int, num_layers: int,
            num_heads: int) -> ml_collections.ConfigDict:
  """A Vicuna-v1.5 (Llama-2) decoder with the llava-hf vocabulary."""
  return ml_collections.ConfigDict(dict(
      vocab_size=LLAVA_HF_VOCAB_SIZE, hidden_size=hidden_size,
      intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
      num_kv_heads=num_heads, head_dim=hidden_size // num_heads, hidden_act="silu",
      rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096,
      tie_word_embeddings=False))


def llava_config(size: str, *, vocab_size: int | None = None,
                 image_token_id: int | None = None,
                 pad_token_id: int | None = None) -> ml_collections.ConfigDict:
  """Returns the model config of a named size.

  Args:
    size: "tiny" (test size: 32px images, 8px patches -> 16 image tokens, 2+2 layers,
      hidden 64), "7b" (LLaVA-1.5-7B) or "13b" (LLaVA-1.5-13B).
    vocab_size: overrides the text vocabulary size (default: llava-hf's 32064, so the
      Llama-2 tokenizer plus `<image>` works with every size). A tiny vocabulary keeps
      test models at a few hundred K parameters.
    image_token_id: overrides the `<image>` placeholder id (default 32000, or
      `vocab_size - 1` when `vocab_size` is too small to hold 32000).
    pad_token_id: overrides the padding id (default 32001, or `vocab_size - 2` when
      `vocab_size` is too small to hold 32001).

  Returns:
    A validated `ConfigDict` (see the module docstring for the fields).

  Raises:
    ValueError: unknown size or inconsistent overrides.
  """
  if size == "tiny":
    vision = ml_collections.ConfigDict(dict(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32,
        intermediate_size=64, num_layers=2, num_heads=4, layer_norm_eps=1e-5,
        hidden_act="quick_gelu", feature_layer=-2, feature_select_strategy="default"))
    text = ml_collections.ConfigDict(dict(
        vocab_size=LLAVA_HF_VOCAB_SIZE, hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden_act="silu",
        rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048,
        tie_word_embeddings=False))
  elif size == "7b":
    vision, text = _clip_vit_l_336(), _vicuna(4096, 11008, 32, 32)
  elif size == "13b":
    vision, text = _clip_vit_l_336(), _vicuna(5120, 13824, 40, 40)
  else:
    raise ValueError(f"Unknown model size {size!r}; expected one of {SIZES}.")

  if vocab_size is not None:
    text.vocab_size = vocab_size
  small_vocab = text.vocab_size <= LLAVA_HF_PAD_TOKEN_ID
  if image_token_id is None:
    image_token_id = text.vocab_size - 1 if small_vocab else LLAVA_HF_IMAGE_TOKEN_ID
  if pad_token_id is None:
    pad_token_id = text.vocab_size - 2 if small_vocab else LLAVA_HF_PAD_TOKEN_ID

  cfg = ml_collections.ConfigDict(dict(
      family=FAMILY,
      vision=vision,
      projector=ml_collections.ConfigDict(dict(hidden_act="gelu", use_bias=True)),
      text=text,
      image_token_id=image_token_id,
      pad_token_id=pad_token_id,
      bos_token_id=1,
      eos_token_id=2,
      **config_common.run_settings(0),
  ))
  validate_config(cfg)
  return cfg


def num_image_tokens(cfg: ml_collections.ConfigDict) -> int:
  """Number of `<image>` placeholder tokens (= image feature vectors) per image."""
  num_patches = (cfg.vision.image_size // cfg.vision.patch_size) ** 2
  return num_patches + (1 if cfg.vision.feature_select_strategy == "full" else 0)


def num_vision_layers_used(cfg: ml_collections.ConfigDict) -> int:
  """How many CLIP layers run to produce hidden state `vision.feature_layer`."""
  layer = cfg.vision.feature_layer
  return layer if layer >= 0 else cfg.vision.num_layers + 1 + layer


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field if `cfg` cannot describe a working model."""
  v, t = cfg.vision, cfg.text
  problems = []
  if v.image_size % v.patch_size:
    problems.append(f"vision.image_size={v.image_size} is not a multiple of "
                    f"vision.patch_size={v.patch_size}")
  if v.hidden_size % v.num_heads:
    problems.append(f"vision.hidden_size={v.hidden_size} is not divisible by "
                    f"vision.num_heads={v.num_heads}")
  if not isinstance(v.feature_layer, int) or not (
      -v.num_layers - 1 <= v.feature_layer <= v.num_layers):
    problems.append(f"vision.feature_layer={v.feature_layer!r} must be an int in "
                    f"[{-v.num_layers - 1}, {v.num_layers}] (HF hidden-state index)")
  if v.feature_select_strategy not in ("default", "full"):
    problems.append(f"vision.feature_select_strategy={v.feature_select_strategy!r} "
                    "must be 'default' (drop CLS) or 'full'")
  if t.num_heads % t.num_kv_heads:
    problems.append(f"text.num_heads={t.num_heads} is not a multiple of "
                    f"text.num_kv_heads={t.num_kv_heads}")
  if t.head_dim % 2:
    problems.append(f"text.head_dim={t.head_dim} must be even for RoPE")
  for name, act in (("vision.hidden_act", v.hidden_act),
                    ("projector.hidden_act", cfg.projector.hidden_act),
                    ("text.hidden_act", t.hidden_act)):
    if act not in SUPPORTED_ACTIVATIONS:
      problems.append(f"{name}={act!r} is not one of {SUPPORTED_ACTIVATIONS}")
  problems += config_common.shared_problems(cfg, FAMILY, ("image_token_id", "pad_token_id"))
  config_common.raise_problems(problems)


def _as_llava_config(path_or_config: Union[str, os.PathLike, Any]):
  """Reads a HF `LlavaConfig` from a directory / config.json path, or passes one through."""
  import transformers  # Local import: config reading only, keeps `import model` light.

  if isinstance(path_or_config, transformers.LlavaConfig):
    return path_or_config
  raw = families.hf_config_dict(path_or_config)
  if raw.get("model_type") != "llava":
    raise ValueError(f"{os.fspath(path_or_config)}: model_type is {raw.get('model_type')!r}, "
                     "expected 'llava'")
  return transformers.LlavaConfig.from_dict(raw)


def config_from_hf(path_or_config) -> ml_collections.ConfigDict:
  """Builds a model config from a HF `LlavaConfig` or a directory holding config.json.

  Raises:
    NotImplementedError: for LLaVA variants this model does not implement (RoPE
      scaling, multi-layer vision features, attention/MLP biases in the decoder).
    ValueError: if the result fails `validate_config`.
  """
  hf = _as_llava_config(path_or_config)
  hv, ht = hf.vision_config, hf.text_config
  if hv.model_type != "clip_vision_model":
    raise NotImplementedError(f"vision tower {hv.model_type!r}: only CLIP is implemented")
  if ht.model_type != "llama":
    raise NotImplementedError(f"text model {ht.model_type!r}: only Llama is implemented")
  rope = dict(getattr(ht, "rope_parameters", None) or {})
  if rope.get("rope_type", "default") != "default":
    raise NotImplementedError(f"RoPE scaling {rope} is not implemented")
  if not isinstance(hf.vision_feature_layer, int):
    raise NotImplementedError(
        f"vision_feature_layer={hf.vision_feature_layer!r}: only a single layer is implemented")
  if getattr(ht, "attention_bias", False) or getattr(ht, "mlp_bias", False):
    raise NotImplementedError("Llama attention_bias / mlp_bias are not implemented")
  head_dim = getattr(ht, "head_dim", None) or ht.hidden_size // ht.num_attention_heads
  cfg = ml_collections.ConfigDict(dict(
      family=FAMILY,
      vision=dict(
          image_size=hv.image_size, patch_size=hv.patch_size,
          num_channels=hv.num_channels, hidden_size=hv.hidden_size,
          intermediate_size=hv.intermediate_size, num_layers=hv.num_hidden_layers,
          num_heads=hv.num_attention_heads, layer_norm_eps=hv.layer_norm_eps,
          hidden_act=hv.hidden_act, feature_layer=hf.vision_feature_layer,
          feature_select_strategy=hf.vision_feature_select_strategy),
      projector=dict(hidden_act=hf.projector_hidden_act,
                     use_bias=hf.multimodal_projector_bias),
      text=dict(
          vocab_size=ht.vocab_size, hidden_size=ht.hidden_size,
          intermediate_size=ht.intermediate_size, num_layers=ht.num_hidden_layers,
          num_heads=ht.num_attention_heads,
          num_kv_heads=ht.num_key_value_heads or ht.num_attention_heads,
          head_dim=head_dim, hidden_act=ht.hidden_act,
          rope_theta=float(rope.get("rope_theta", 10000.0)),
          rms_norm_eps=ht.rms_norm_eps,
          max_position_embeddings=ht.max_position_embeddings,
          tie_word_embeddings=bool(hf.tie_word_embeddings or ht.tie_word_embeddings)),
      image_token_id=hf.image_token_id,
      pad_token_id=(hf.pad_token_id if getattr(hf, "pad_token_id", None) is not None
                    else ht.pad_token_id if ht.pad_token_id is not None
                    else ht.vocab_size - 1),
      bos_token_id=ht.bos_token_id if ht.bos_token_id is not None else 1,
      eos_token_id=ht.eos_token_id if isinstance(ht.eos_token_id, int) else 2,
      **config_common.run_settings(0),
  ))
  validate_config(cfg)
  return cfg


def to_hf_config(cfg: ml_collections.ConfigDict):
  """The HF `LlavaConfig` describing the same architecture as `cfg`."""
  import transformers

  v, t = cfg.vision, cfg.text
  vision_config = transformers.CLIPVisionConfig(
      hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
      num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
      num_channels=v.num_channels, image_size=v.image_size, patch_size=v.patch_size,
      hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps)
  text_config = transformers.LlamaConfig(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size,
      intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
      num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
      head_dim=t.head_dim, hidden_act=t.hidden_act,
      max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": float(t.rope_theta)},
      tie_word_embeddings=t.tie_word_embeddings, pad_token_id=cfg.pad_token_id,
      bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
  return transformers.LlavaConfig(
      vision_config=vision_config, text_config=text_config,
      image_token_index=cfg.image_token_id, image_seq_length=num_image_tokens(cfg),
      projector_hidden_act=cfg.projector.hidden_act,
      vision_feature_select_strategy=v.feature_select_strategy,
      vision_feature_layer=v.feature_layer,
      multimodal_projector_bias=cfg.projector.use_bias,
      tie_word_embeddings=t.tie_word_embeddings)
