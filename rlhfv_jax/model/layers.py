"""Building blocks shared by the families' vision towers and decoders: activations,
RMSNorm, rotary embeddings, attention masks, image features spliced into the token
embeddings, and the positions whose logits are computed."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # HF "gelu" is the exact erf form; "gelu_new"/"gelu_pytorch_tanh" the tanh one.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": _quick_gelu,  # OpenAI CLIP.
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function HF's `ACT2FN[name]` computes."""
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


class RMSNorm(nn.Module):
  """Llama RMSNorm: normalizes in float32, casts back, then scales (as HF does)."""

  eps: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


def rope_cos_sin(positions: jax.Array, head_dim: int,
                 theta: float) -> tuple[jax.Array, jax.Array]:
  """Rotary tables for integer `positions` [N, T] -> cos, sin [N, T, head_dim] (f32).

  Uses the "rotate half" layout of HF Llama checkpoints: frequency i drives both
  channel i and channel i + head_dim/2.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates `x` [N, T, heads, head_dim] by the tables from `rope_cos_sin`."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
  return out.astype(x.dtype)


def causal_attention_mask(query_slots: jax.Array, key_valid: jax.Array,
                          query_segment_ids: Optional[jax.Array] = None,
                          key_segment_ids: Optional[jax.Array] = None,
                          shared_segment: Optional[int] = None) -> jax.Array:
  """Boolean mask [N, 1, T, S] for `jax.nn.dot_product_attention`.

  Key slot s is visible from query t iff the key is a real token, s <= query slot t
  (causality in slot order, i.e. storage order, which for a KV cache is the order
  tokens were written), and both lie in the same segment when segments are given
  (sequence packing), or the key lies in `shared_segment` (a prompt shared by the
  segments packed after it).

  Args:
    query_slots: [N, T] or [T] int, the key-slot index each query occupies.
    key_valid: [N, S] bool, False for padding keys.
    query_segment_ids: optional [N, T] int segment ids of the queries.
    key_segment_ids: optional [N, S] int segment ids of the keys.
    shared_segment: optional segment id whose keys every query may see (causally).
  """
  num_keys = key_valid.shape[-1]
  query_slots = jnp.broadcast_to(query_slots, (key_valid.shape[0],) + query_slots.shape[-1:])
  key_slots = jnp.arange(num_keys, dtype=query_slots.dtype)
  mask = key_slots[None, None, :] <= query_slots[:, :, None]
  mask &= key_valid[:, None, :].astype(bool)
  if query_segment_ids is not None:
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    if shared_segment is not None:
      same |= (key_segment_ids == shared_segment)[:, None, :]
    mask &= same
  return mask[:, None, :, :]


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """RoPE positions 0, 1, ... over the real tokens of each row (any padding side).

  Padding slots get the position of the last real token before them (0 if none);
  their outputs are never used.
  """
  return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def _check_placeholder_counts(is_image_token, num_tokens: int) -> None:
  """Eagerly validates per-row image placeholder counts when they are concrete."""
  if isinstance(is_image_token, jax.core.Tracer):
    return
  counts = np.asarray(is_image_token).sum(axis=1)
  bad = np.nonzero((counts != 0) & (counts != num_tokens))[0]
  if bad.size:
    raise ValueError(
        f"Rows {bad.tolist()} hold {counts[bad].tolist()} image placeholder tokens; each "
        f"row needs 0 or exactly num_image_tokens={num_tokens} (expand `<image>` first).")


def merge_image_features(inputs_embeds: jax.Array, is_image_token: jax.Array,
                         image_features: jax.Array) -> jax.Array:
  """Replaces the placeholder embeddings of each row by its image features, in order.

  Args:
    inputs_embeds: [N, T, D] token embeddings.
    is_image_token: [N, T] bool, True at placeholder positions.
    image_features: [N, n, D] features of each row's image.

  Returns:
    [N, T, D] embeddings; rows whose placeholder count is neither 0 nor n are NaN.
  """
  num_tokens = image_features.shape[1]
  _check_placeholder_counts(is_image_token, num_tokens)
  feature_index = jnp.clip(jnp.cumsum(is_image_token, axis=1) - 1, 0, num_tokens - 1)
  gathered = jnp.take_along_axis(image_features, feature_index[..., None], axis=1)
  merged = jnp.where(is_image_token[..., None], gathered.astype(inputs_embeds.dtype),
                     inputs_embeds)
  count = is_image_token.sum(axis=1)
  bad_row = (count != 0) & (count != num_tokens)
  return jnp.where(bad_row[:, None, None], jnp.nan, merged)


def splice_images(embeds: jax.Array, is_image_token: jax.Array,
                  image_features: Optional[jax.Array], sequences_per_image: int) -> jax.Array:
  """Token embeddings [N, T, D] with each row's image features at its placeholders.

  Args:
    embeds: [N, T, D] token embeddings.
    is_image_token: [N, T] bool, True at placeholder positions.
    image_features: [B, n, D] features (None: text only, `embeds` as they are); row j uses
      image j % B.
    sequences_per_image: N = sequences_per_image * B.
  """
  if image_features is None:
    return embeds
  if image_features.shape[0] * sequences_per_image != embeds.shape[0]:
    raise ValueError(
        f"{embeds.shape[0]} sequences do not match {image_features.shape[0]} images "
        f"x sequences_per_image={sequences_per_image}")
  tiled = jnp.concatenate([image_features] * sequences_per_image, axis=0)
  return merge_image_features(embeds, is_image_token, tiled)


def scored_positions(hidden: jax.Array, logits_index: Optional[jax.Array],
                     logits_from: int) -> jax.Array:
  """The hidden states [N, T, D] whose logits are wanted: at `logits_index` [N] of each
  row ([N, 1, D]), else from time index `logits_from` on ([N, T - logits_from, D])."""
  if logits_index is not None:
    return jnp.take_along_axis(hidden, logits_index[:, None, None], axis=1)
  return hidden[:, logits_from:] if logits_from else hidden
