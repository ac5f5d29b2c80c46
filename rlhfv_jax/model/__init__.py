"""Multimodal LLMs in Flax, one package per family, behind one API.

Families (`families`): ``llava15`` (LLaVA-1.5, `llava15/`) and ``gemma3`` (Gemma 3,
`gemma3/`). Everything below dispatches on ``cfg.family`` (a model config) or a
checkpoint's ``config.json``, so callers never name a family's modules.

Public API:
  model_config(family, size, **overrides)   a named size of a family
  llava_config(size) / gemma3_config(size)  the same, per family
  config_from_hf(path_or_config)            the family from config.json's model_type
  to_hf_config(cfg) / validate_config(cfg) / num_image_tokens(cfg) / family_of(cfg)
  init_params(cfg, rng) / param_shapes(cfg)
  make_apply_fn(cfg)     apply_fn(params, input_ids, attention_mask, pixel_values,
                                  sequences_per_image=1) -> logits
  hf_io.load_hf / hf_io.save_hf, generate.generate
"""

from typing import Any

import ml_collections

from rlhfv_jax.model import families
from rlhfv_jax.model.apply import init_params
from rlhfv_jax.model.apply import make_apply_fn
from rlhfv_jax.model.apply import param_shapes
from rlhfv_jax.model.families import family_of
from rlhfv_jax.model.llava15.config import llava_config
from rlhfv_jax.model.llava15.llava import Llava


def model_config(family: str, size: str, **overrides: Any) -> ml_collections.ConfigDict:
  """The validated config of a named size of `family` (e.g. ("gemma3", "4b"))."""
  return families.get(family).make_config(size, **overrides)


def gemma3_config(size: str, **overrides: Any) -> ml_collections.ConfigDict:
  """A named Gemma 3 size ("tiny", "4b", "12b", "27b")."""
  return model_config("gemma3", size, **overrides)


def config_from_hf(path_or_config: Any) -> ml_collections.ConfigDict:
  """The model config of an HF checkpoint directory / config.json / transformers config,
  for the family its ``model_type`` names (ValueError naming the supported ones)."""
  return families.for_hf(path_or_config).config_from_hf(path_or_config)


def to_hf_config(cfg: ml_collections.ConfigDict) -> Any:
  """The transformers config describing the same architecture as `cfg`."""
  return family_of(cfg).to_hf_config(cfg)


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field if `cfg` cannot describe a working model."""
  family_of(cfg).validate_config(cfg)


def num_image_tokens(cfg: ml_collections.ConfigDict) -> int:
  """Image placeholder tokens (= image feature vectors) per image."""
  return family_of(cfg).num_image_tokens(cfg)
