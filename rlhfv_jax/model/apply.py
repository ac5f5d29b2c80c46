"""The model call every loss and pass uses, and parameter init, for any family.

`make_apply_fn(cfg)` is what `rlhfv_jax.logps` runs: the family's Flax module (from
`rlhfv_jax.model.families`) applied to a batch, with the facts the log-prob layer
needs declared on it (`scored_from`, `logits_chunk`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlhfv_jax.model import families


def _dummy_inputs(cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """BOS + one image's placeholders, and a blank image: enough to create every param."""
  n = families.family_of(cfg).num_image_tokens(cfg)
  input_ids = jnp.full((1, n + 1), cfg.image_token_id, jnp.int32).at[0, 0].set(cfg.bos_token_id)
  pixels = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size,
                      cfg.vision.num_channels), jnp.float32)
  return input_ids, jnp.ones_like(input_ids, bool), pixels


def module(cfg: ml_collections.ConfigDict) -> Any:
  """The Flax module of `cfg`'s family."""
  return families.family_of(cfg).module(cfg)


def init_params(cfg: ml_collections.ConfigDict, rng: jax.Array):
  """Random parameters (a plain nested dict of `param_dtype` arrays)."""
  model = module(cfg)
  return jax.jit(lambda r: model.init(r, *_dummy_inputs(cfg))["params"])(rng)


def param_shapes(cfg: ml_collections.ConfigDict):
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
  model = module(cfg)
  return jax.eval_shape(lambda r: model.init(r, *_dummy_inputs(cfg))["params"],
                        jax.random.key(0))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelApplyFn:
  """`apply_fn(params, input_ids, attention_mask, pixel_values, sequences_per_image=1,
  logits_from=0, return_hidden=False, **packing)` -> logits [N, T - logits_from, V]
  float32, or the final hidden states [N, T - logits_from, D] with `return_hidden` (see
  the family module's ``decode``; `packing`: positions, segment_ids, shared_segment).

  Not jitted: the caller jits the step that uses it. `sequences_per_image`,
  `logits_from` and `shared_segment` must be Python ints.

  Attributes:
    cfg: the model config.
    scored_from: the first time index whose target an answer can hold, which the
      log-prob layer (`rlhfv_jax.logps`) computes logits from. Every training row
      starts with the prompt and its image placeholders before any answer, so no
      target before `num_image_tokens` is ever scored: the LM head (and its [N, T, V]
      logits) skips those positions, 56% of a 1024-token LLaVA-1.5 row.
    logits_chunk: ``cfg.logits_chunk``: with a positive value the log-prob layer asks
      for hidden states and runs `head` on that many tokens at a time, so [tokens x
      vocab] float32 logits never exist for a whole batch (Gemma 3's 262k vocabulary).
  """

  cfg: ml_collections.ConfigDict
  scored_from: int = 0
  logits_chunk: int = 0

  def __post_init__(self):
    object.__setattr__(self, "_model", module(self.cfg))

  def __call__(self, params, input_ids, attention_mask, pixel_values, sequences_per_image=1,
               logits_from=0, positions=None, segment_ids=None, shared_segment=None,
               return_hidden=False):
    return self._model.apply({"params": params}, input_ids, attention_mask, pixel_values,
                             sequences_per_image, logits_from=logits_from,
                             positions=positions, segment_ids=segment_ids,
                             shared_segment=shared_segment, return_hidden=return_hidden)

  def head(self, params, hidden: jax.Array) -> jax.Array:
    """Hidden states [..., D] -> logits [..., V] float32 (the family's LM head)."""
    return self._model.apply({"params": params}, hidden, method="head")


def make_apply_fn(cfg: ml_collections.ConfigDict, *,
                  skip_prompt_logits: bool = True) -> ModelApplyFn:
  """The model call of the losses and passes (`ModelApplyFn`).

  Args:
    cfg: the model config.
    skip_prompt_logits: declare `scored_from = num_image_tokens(cfg)` (see
      `ModelApplyFn`); False computes logits at every position (rows whose answers may
      start before the image tokens end, e.g. text-only experiments).
  """
  start = families.family_of(cfg).num_image_tokens(cfg) if skip_prompt_logits else 0
  return ModelApplyFn(cfg, start, int(cfg.get("logits_chunk", 0) or 0))
