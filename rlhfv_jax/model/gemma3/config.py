"""Gemma 3 model configuration: sizes, validation, HF `Gemma3Config` interop.

Same top-level layout as the LLaVA-1.5 config (`rlhfv_jax.model.llava15.config`), with
the Gemma fields (names follow HF `Gemma3Config` / `SiglipVisionConfig` /
`Gemma3TextConfig`):

  vision.{image_size, patch_size, num_channels, hidden_size, intermediate_size,
          num_layers, num_heads, layer_norm_eps, hidden_act}        # SigLIP, no head
  text.{vocab_size, hidden_size, intermediate_size, num_layers, num_heads,
        num_kv_heads, head_dim, hidden_act, rms_norm_eps, max_position_embeddings,
        tie_word_embeddings,
        query_pre_attn_scalar,  # attention logits are scaled by its -1/2 power
        sliding_window,         # a sliding layer's query sees keys < this many positions back
        layer_types,            # per layer "sliding_attention" or "full_attention"
        rope_theta,             # RoPE base of the full-attention (global) layers
        rope_scaling_factor,    # their linear RoPE scaling (1.0: none; 8.0 in 4b/12b/27b)
        rope_local_theta}       # RoPE base of the sliding (local) layers
  mm_tokens_per_image   # soft tokens per image: the patch grid average-pooled to this
  image_token_id, boi_token_id, eoi_token_id, pad_token_id, bos_token_id, eos_token_id
  family, dtype, param_dtype, remat, logits_chunk, lora  # as in the LLaVA config

`eos_token_id` is `<end_of_turn>` (106), what ends an answer in the Gemma 3 chat format
(the checkpoints' generation config stops at 1 `<eos>` or 106).

Where the numbers of the real sizes come from: the google/gemma-3-{4b,12b,27b}-it
`config.json` files (text hidden / intermediate sizes, layers, heads; 27b's head_dim 128
and query_pre_attn_scalar 168; sliding_window 1024; the linear RoPE factor 8; the whole
SigLIP-So400m vision config 896px/14, 27 layers, hidden 1152, mlp 4304, 16 heads,
vision_use_head false; mm_tokens_per_image 256, image / boi / eoi ids 262144 / 255999 /
256000) and, for what those files leave out, the defaults of transformers'
`Gemma3TextConfig` / `Gemma3Config` / `SiglipVisionConfig` (the same in 4.50 and 5.x):
vocab 262208, 8/4 heads and head_dim 256 and query_pre_attn_scalar 256 (4b), rope_theta
1e6, rope_local_base_freq 1e4, sliding_window_pattern 6, rms_norm_eps 1e-6,
max_position_embeddings 131072, gelu_pytorch_tanh, SigLIP layer_norm_eps 1e-6, bos 2,
pad 0. `tests/model/test_gemma3.py` checks the parameter counts against transformers.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Union

import ml_collections

from rlhfv_jax.model import config_common
from rlhfv_jax.model import families
from rlhfv_jax.model import layers

FAMILY = "gemma3"
SIZES = ("tiny", "4b", "12b", "27b")

SLIDING, FULL = "sliding_attention", "full_attention"  # HF `layer_types` values

# Token ids of the Gemma 3 tokenizer (262144 pieces + `<image_soft_token>`).
VOCAB_SIZE = 262208
IMAGE_TOKEN_ID = 262144
BOI_TOKEN_ID = 255999  # <start_of_image>
EOI_TOKEN_ID = 256000  # <end_of_image>
END_OF_TURN_ID = 106
BOS_TOKEN_ID, PAD_TOKEN_ID = 2, 0

# Tokens per LM-head chunk of the real sizes: [1024 x 262208] float32 logits are 1 GiB.
REAL_LOGITS_CHUNK = 1024


def layer_types(num_layers: int, sliding_window_pattern: int) -> tuple[str, ...]:
  """HF's default pattern: every `sliding_window_pattern`-th layer is global."""
  return tuple(SLIDING if (i + 1) % sliding_window_pattern else FULL
               for i in range(num_layers))


def _siglip_so400m() -> ml_collections.ConfigDict:
  """The Gemma 3 vision tower (SigLIP-So400m/14 at 896px), as in every real size."""
  return ml_collections.ConfigDict(dict(
      image_size=896, patch_size=14, num_channels=3, hidden_size=1152,
      intermediate_size=4304, num_layers=27, num_heads=16, layer_norm_eps=1e-6,
      hidden_act="gelu_pytorch_tanh"))


def _text(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int,
          num_kv_heads: int, head_dim: int, query_pre_attn_scalar: float
          ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      vocab_size=VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=intermediate_size,
      num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
      head_dim=head_dim, hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6,
      max_position_embeddings=131072, tie_word_embeddings=True,
      query_pre_attn_scalar=query_pre_attn_scalar, sliding_window=1024,
      layer_types=layer_types(num_layers, 6), rope_theta=1e6, rope_scaling_factor=8.0,
      rope_local_theta=1e4))


def gemma3_config(size: str, *, vocab_size: int | None = None,
                  image_token_id: int | None = None, boi_token_id: int | None = None,
                  eoi_token_id: int | None = None, pad_token_id: int | None = None,
                  bos_token_id: int | None = None,
                  eos_token_id: int | None = None) -> ml_collections.ConfigDict:
  """Returns the model config of a named size.

  Args:
    size: "tiny" (test size: 32px images, 8px patches -> a 4x4 grid pooled to 4 image
      tokens; 3 decoder layers sliding / full / sliding with an 8-position window,
      hidden 64), "4b", "12b" or "27b" (google/gemma-3-*-it).
    vocab_size: overrides the vocabulary size (default: Gemma 3's 262208, so the real
      tokenizer works with every size). A tiny vocabulary keeps test models small.
    image_token_id, boi_token_id, eoi_token_id, pad_token_id, bos_token_id,
      eos_token_id: override the special ids (defaults: Gemma 3's; with a vocabulary
      too small for them, image / eoi / boi are its last three ids and EOS the one
      before them when 106 does not fit).

  Returns:
    A validated `ConfigDict` (see the module docstring for the fields).

  Raises:
    ValueError: unknown size or inconsistent overrides.
  """
  if size == "tiny":
    vision = ml_collections.ConfigDict(dict(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32,
        intermediate_size=64, num_layers=2, num_heads=4, layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh"))
    text = _text(64, 128, 3, 4, 2, 16, 16)
    text.update(sliding_window=8, layer_types=layer_types(3, 2), max_position_embeddings=2048)
    mm_tokens = 4
  elif size == "4b":
    vision, text, mm_tokens = _siglip_so400m(), _text(2560, 10240, 34, 8, 4, 256, 256), 256
  elif size == "12b":
    vision, text, mm_tokens = _siglip_so400m(), _text(3840, 15360, 48, 16, 8, 256, 256), 256
  elif size == "27b":
    vision, text, mm_tokens = _siglip_so400m(), _text(5376, 21504, 62, 32, 16, 128, 168), 256
  else:
    raise ValueError(f"Unknown model size {size!r}; expected one of {SIZES}.")

  if vocab_size is not None:
    text.vocab_size = vocab_size
  small = text.vocab_size <= IMAGE_TOKEN_ID
  pick = lambda given, real, small_default: (
      given if given is not None else small_default if small else real)
  v = text.vocab_size
  cfg = ml_collections.ConfigDict(dict(
      family=FAMILY,
      vision=vision,
      text=text,
      mm_tokens_per_image=mm_tokens,
      image_token_id=pick(image_token_id, IMAGE_TOKEN_ID, v - 1),
      eoi_token_id=pick(eoi_token_id, EOI_TOKEN_ID, v - 2),
      boi_token_id=pick(boi_token_id, BOI_TOKEN_ID, v - 3),
      pad_token_id=PAD_TOKEN_ID if pad_token_id is None else pad_token_id,
      bos_token_id=BOS_TOKEN_ID if bos_token_id is None else bos_token_id,
      eos_token_id=(eos_token_id if eos_token_id is not None
                    else END_OF_TURN_ID if END_OF_TURN_ID < v - 3 else v - 4),
      **config_common.run_settings(0 if size == "tiny" else REAL_LOGITS_CHUNK),
  ))
  validate_config(cfg)
  return cfg


def patches_per_side(cfg: ml_collections.ConfigDict) -> int:
  return cfg.vision.image_size // cfg.vision.patch_size


def num_image_tokens(cfg: ml_collections.ConfigDict) -> int:
  """Image placeholder tokens (= pooled soft tokens) per image."""
  return int(cfg.mm_tokens_per_image)


def pooling_problem(image_size: int, patch_size: int, mm_tokens_per_image: int) -> str | None:
  """Why `mm_tokens_per_image` cannot be an average pooling of the patch grid, or None.

  HF's projector pools the [P, P] grid (P = image_size // patch_size) with a kernel of
  P // sqrt(mm_tokens_per_image); anything but a square that divides the grid evenly
  silently yields another token count there.
  """
  side = math.isqrt(max(int(mm_tokens_per_image), 0))
  grid = image_size // patch_size
  if side < 1 or side * side != mm_tokens_per_image or grid % side:
    return (f"mm_tokens_per_image={mm_tokens_per_image} does not pool evenly from the "
            f"{grid}x{grid} vision patch grid (vision.image_size={image_size} / "
            f"vision.patch_size={patch_size}): it must be k*k with k dividing {grid}")
  return None


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field if `cfg` cannot describe a working model."""
  v, t = cfg.vision, cfg.text
  problems = []
  if v.image_size % v.patch_size:
    problems.append(f"vision.image_size={v.image_size} is not a multiple of "
                    f"vision.patch_size={v.patch_size}")
  pooling = pooling_problem(v.image_size, v.patch_size, cfg.mm_tokens_per_image)
  if pooling:
    problems.append(pooling)
  if v.hidden_size % v.num_heads:
    problems.append(f"vision.hidden_size={v.hidden_size} is not divisible by "
                    f"vision.num_heads={v.num_heads}")
  if t.num_heads % t.num_kv_heads:
    problems.append(f"text.num_heads={t.num_heads} is not a multiple of "
                    f"text.num_kv_heads={t.num_kv_heads}")
  if t.head_dim % 2:
    problems.append(f"text.head_dim={t.head_dim} must be even for RoPE")
  if len(t.layer_types) != t.num_layers or set(t.layer_types) - {SLIDING, FULL}:
    problems.append(f"text.layer_types={tuple(t.layer_types)} must name {SLIDING!r} or "
                    f"{FULL!r} for each of text.num_layers={t.num_layers} layers")
  if int(t.sliding_window) < 1:
    problems.append(f"text.sliding_window={t.sliding_window} must be >= 1")
  for name in ("query_pre_attn_scalar", "rope_theta", "rope_local_theta",
               "rope_scaling_factor"):
    if not float(t[name]) > 0:
      problems.append(f"text.{name}={t[name]} must be > 0")
  for name, act in (("vision.hidden_act", v.hidden_act), ("text.hidden_act", t.hidden_act)):
    try:
      layers.activation(act)
    except ValueError as e:
      problems.append(f"{name}: {e}")
  problems += config_common.shared_problems(
      cfg, FAMILY, ("image_token_id", "boi_token_id", "eoi_token_id", "pad_token_id",
                    "bos_token_id", "eos_token_id"))
  config_common.raise_problems(problems)


def _as_gemma3_config(path_or_config: Union[str, os.PathLike, Any]):
  """A transformers `Gemma3Config` from a directory / config.json path, a dict or itself.

  transformers fills in what the file leaves out (the hub's 4b config.json names
  neither its heads nor its vocabulary) and reads both `config.json` layouts: 4.x
  (`rope_theta`, `rope_scaling`, `rope_local_base_freq`, `sliding_window_pattern`)
  and 5.x (`rope_parameters` per layer type, `layer_types`).
  """
  import transformers  # Local import: config reading only, keeps `import model` light.

  if isinstance(path_or_config, transformers.Gemma3Config):
    return path_or_config
  raw = (dict(path_or_config) if isinstance(path_or_config, dict)
         else families.hf_config_dict(path_or_config))
  if raw.get("model_type") != "gemma3":
    raise ValueError(f"{path_or_config}: model_type is {raw.get('model_type')!r}, "
                     "expected 'gemma3'")
  return transformers.Gemma3Config.from_dict(raw)


def _rope(ht) -> dict[str, dict[str, Any]]:
  """Per layer type RoPE parameters of a text config, from either transformers major."""
  params = getattr(ht, "rope_parameters", None)
  if isinstance(params, dict) and SLIDING in params:  # transformers 5
    return {k: dict(params.get(k) or {}) for k in (SLIDING, FULL)}
  scaling = dict(getattr(ht, "rope_scaling", None) or {})  # transformers 4.x
  return {FULL: dict(scaling, rope_theta=getattr(ht, "rope_theta", 1e6)),
          SLIDING: dict(rope_type="default",
                        rope_theta=getattr(ht, "rope_local_base_freq", 1e4))}


def _check_preprocessor(path_or_config: Any, image_size: int) -> None:
  """A checkpoint directory's preprocessor_config.json must resize to the tower's size."""
  if not isinstance(path_or_config, (str, os.PathLike)):
    return
  path = os.fspath(path_or_config)
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  pre_path = os.path.join(directory, "preprocessor_config.json")
  if not os.path.isfile(pre_path):
    return
  with open(pre_path) as f:
    size = json.load(f).get("size")
  if size is None:
    return
  sides = ((size.get("height"), size.get("width")) if isinstance(size, dict)
           else (size, size))
  if any(s is not None and int(s) != image_size for s in sides):
    raise ValueError(f"{pre_path}: the image processor resizes to {sides[0]}x{sides[1]} "
                     f"but the vision tower's image_size is {image_size} (config.json)")


def config_from_hf(path_or_config) -> ml_collections.ConfigDict:
  """Builds a model config from a HF `Gemma3Config` or a directory holding config.json.

  Reads transformers 4.x and 5.x `config.json` layouts. A directory's
  preprocessor_config.json, if there is one, must resize images to the vision tower's
  size.

  Raises:
    NotImplementedError: naming the field of a Gemma 3 variant this model does not
      implement: logit soft-capping (`final_logit_softcapping`,
      `attn_logit_softcapping`, null in every Gemma 3), bidirectional text attention,
      attention biases, RoPE other than default / linear, the SigLIP pooling head.
    ValueError: the result fails `validate_config` (e.g. `mm_tokens_per_image` does
      not pool evenly from the patch grid), or the preprocessor's image size differs.
  """
  hf = _as_gemma3_config(path_or_config)
  hv, ht = hf.vision_config, hf.text_config
  if hv.model_type != "siglip_vision_model":
    raise NotImplementedError(f"vision tower {hv.model_type!r}: only SigLIP is implemented")
  for name in ("final_logit_softcapping", "attn_logit_softcapping"):
    if getattr(ht, name, None) is not None:
      raise NotImplementedError(f"text_config.{name}={getattr(ht, name)}: logit soft-capping "
                                "is not implemented (Gemma 3 checkpoints have null)")
  for name in ("use_bidirectional_attention", "attention_bias"):
    if getattr(ht, name, False):
      raise NotImplementedError(f"text_config.{name}=true is not implemented")
  if getattr(hv, "vision_use_head", False):
    raise NotImplementedError("vision_config.vision_use_head=true: Gemma 3 uses no SigLIP "
                              "pooling head")
  rope = _rope(ht)
  for kind, allowed in ((FULL, ("default", "linear")), (SLIDING, ("default",))):
    if rope[kind].get("rope_type", rope[kind].get("type", "default")) not in allowed:
      raise NotImplementedError(f"RoPE {rope[kind]} of the {kind} layers is not implemented "
                                f"(only {allowed})")
  num_layers = ht.num_hidden_layers
  types = getattr(ht, "layer_types", None) or layer_types(
      num_layers, getattr(ht, "sliding_window_pattern", None) or 6)
  eos = [e for e in (getattr(hf, "eos_token_id", None), ht.eos_token_id) if e is not None]
  eos = [i for e in eos for i in (e if isinstance(e, (list, tuple)) else [e])]
  cfg = ml_collections.ConfigDict(dict(
      family=FAMILY,
      vision=dict(
          image_size=hv.image_size, patch_size=hv.patch_size, num_channels=hv.num_channels,
          hidden_size=hv.hidden_size, intermediate_size=hv.intermediate_size,
          num_layers=hv.num_hidden_layers, num_heads=hv.num_attention_heads,
          layer_norm_eps=hv.layer_norm_eps, hidden_act=hv.hidden_act),
      text=dict(
          vocab_size=ht.vocab_size, hidden_size=ht.hidden_size,
          intermediate_size=ht.intermediate_size, num_layers=num_layers,
          num_heads=ht.num_attention_heads,
          num_kv_heads=ht.num_key_value_heads or ht.num_attention_heads,
          head_dim=ht.head_dim or ht.hidden_size // ht.num_attention_heads,
          hidden_act=getattr(ht, "hidden_activation", None) or ht.hidden_act,
          rms_norm_eps=ht.rms_norm_eps, max_position_embeddings=ht.max_position_embeddings,
          tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", True)),
          query_pre_attn_scalar=ht.query_pre_attn_scalar,
          sliding_window=ht.sliding_window, layer_types=tuple(types),
          rope_theta=float(rope[FULL].get("rope_theta", 1e6)),
          rope_scaling_factor=float(rope[FULL].get("factor", 1.0)),
          rope_local_theta=float(rope[SLIDING].get("rope_theta", 1e4))),
      mm_tokens_per_image=hf.mm_tokens_per_image,
      image_token_id=hf.image_token_index,
      boi_token_id=hf.boi_token_index,
      eoi_token_id=hf.eoi_token_index,
      pad_token_id=ht.pad_token_id if ht.pad_token_id is not None else PAD_TOKEN_ID,
      bos_token_id=ht.bos_token_id if ht.bos_token_id is not None else BOS_TOKEN_ID,
      # What ends an answer: <end_of_turn> when the checkpoint lists it, else its last EOS.
      eos_token_id=END_OF_TURN_ID if END_OF_TURN_ID in eos or not eos else eos[-1],
      **config_common.run_settings(REAL_LOGITS_CHUNK if ht.vocab_size > IMAGE_TOKEN_ID else 0),
  ))
  _check_preprocessor(path_or_config, cfg.vision.image_size)
  validate_config(cfg)
  return cfg


def _int_if_integral(x: float) -> float | int:
  return int(x) if float(x).is_integer() else x  # transformers 5 types the field int


def to_hf_config(cfg: ml_collections.ConfigDict):
  """The HF `Gemma3Config` describing the same architecture as `cfg` (transformers 5)."""
  import transformers

  v, t = cfg.vision, cfg.text
  vision_config = transformers.SiglipVisionConfig(
      hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
      num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
      num_channels=v.num_channels, image_size=v.image_size, patch_size=v.patch_size,
      hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps, vision_use_head=False)
  full_rope = {"rope_type": "default", "rope_theta": float(t.rope_theta)}
  if float(t.rope_scaling_factor) != 1.0:
    full_rope.update(rope_type="linear", factor=float(t.rope_scaling_factor))
  text_config = transformers.Gemma3TextConfig(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size,
      intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
      num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
      head_dim=t.head_dim, hidden_activation=t.hidden_act,
      max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
      query_pre_attn_scalar=_int_if_integral(t.query_pre_attn_scalar),
      sliding_window=t.sliding_window,
      layer_types=list(t.layer_types),
      rope_parameters={FULL: full_rope, SLIDING: {"rope_type": "default",
                                                  "rope_theta": float(t.rope_local_theta)}},
      tie_word_embeddings=t.tie_word_embeddings, pad_token_id=cfg.pad_token_id,
      bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
  return transformers.Gemma3Config(
      vision_config=vision_config, text_config=text_config,
      mm_tokens_per_image=cfg.mm_tokens_per_image, image_token_index=cfg.image_token_id,
      boi_token_index=cfg.boi_token_id, eoi_token_index=cfg.eoi_token_id,
      tie_word_embeddings=t.tie_word_embeddings)
