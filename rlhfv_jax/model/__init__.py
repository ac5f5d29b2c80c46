"""LLaVA-1.5-style multimodal LLM in Flax: config, model, HF checkpoint I/O, generation.

Public API:
  llava_config(size) / config_from_hf(path_or_config) / num_image_tokens(cfg)
  Llava(cfg)                      flax.linen module (`__call__`, `encode_images`, `decode`)
  init_params(cfg, rng)           random parameter pytree
  make_apply_fn(cfg)              apply_fn(params, input_ids, attention_mask, pixel_values,
                                           sequences_per_image=1) -> logits
  hf_io.load_hf_llava / hf_io.save_hf_llava, generate.generate
"""

from rlhfv_jax.model.config import config_from_hf
from rlhfv_jax.model.config import llava_config
from rlhfv_jax.model.config import num_image_tokens
from rlhfv_jax.model.config import to_hf_config
from rlhfv_jax.model.config import validate_config
from rlhfv_jax.model.llava import init_params
from rlhfv_jax.model.llava import Llava
from rlhfv_jax.model.llava import make_apply_fn
from rlhfv_jax.model.llava import param_shapes
