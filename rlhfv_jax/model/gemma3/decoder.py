"""Gemma 3 text decoder (HF `Gemma3TextModel` layout): scaled embeddings, QK-norm,
sandwich norms, GeGLU, GQA, sliding-window and global layers, KV cache.

Sliding and global layers have the same parameters, so all layers are one `nn.scan`;
each layer picks its attention mask and RoPE tables by a scanned per-layer flag
(`text.layer_types`). The decoder consumes input *embeddings* (the MLLM splices image
features in) and returns final hidden states.

KV cache (`init_kv_cache`): ``{"k", "v": [L, N, S, K, hd], "pos": [N, S]}``. "pos" is
the RoPE position of the token in each slot: the sliding window is measured in
positions (see `rlhfv_jax.model.gemma3.model`), so cached keys must remember theirs.
The layers update the cache in place inside the scan, as `llava15.llama` does.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rlhfv_jax.model import layers
from rlhfv_jax.model import lora
from rlhfv_jax.model.gemma3 import config as config_lib
from rlhfv_jax.model.llava15 import llama

KVCache = dict[str, jax.Array]


class RMSNorm(nn.Module):
  """Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + scale), all in float32, then cast
  to x's dtype (HF `Gemma3RMSNorm`; Llama's casts before scaling, `layers.RMSNorm`).

  `scale` holds HF's zero-centred ``weight`` as it is (zeros: the identity).
  """

  eps: float
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def _rms_norm(cfg: ml_collections.FrozenConfigDict, name: str) -> RMSNorm:
  return RMSNorm(cfg.text.rms_norm_eps, param_dtype=jnp.dtype(cfg.param_dtype), name=name)


def rope_tables(cfg: ml_collections.FrozenConfigDict, positions: jax.Array
                ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """(global, local) RoPE (cos, sin) tables [N, T, head_dim] for `positions` [N, T].

  Linear scaling divides the frequencies by the factor; dividing the positions instead
  is the same product, and bit-identical for a power-of-two factor such as Gemma's 8.
  """
  t = cfg.text
  scaled = positions.astype(jnp.float32) / float(t.rope_scaling_factor)
  return (layers.rope_cos_sin(scaled, t.head_dim, t.rope_theta),
          layers.rope_cos_sin(positions, t.head_dim, t.rope_local_theta))


class Gemma3Attention(nn.Module):
  """GQA self-attention with QK-norm, rotary positions and an optional cache."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               cache: Optional[KVCache], layer: jax.Array, cache_index: jax.Array
               ) -> tuple[jax.Array, Optional[KVCache]]:
    t = self.cfg.text
    heads = lambda y, n: y.reshape(x.shape[:2] + (n, t.head_dim))
    q = heads(lora.dense(self.cfg, t.num_heads * t.head_dim, "q_proj")(x), t.num_heads)
    k = heads(lora.dense(self.cfg, t.num_kv_heads * t.head_dim, "k_proj")(x), t.num_kv_heads)
    v = heads(lora.dense(self.cfg, t.num_kv_heads * t.head_dim, "v_proj")(x), t.num_kv_heads)
    q, k = _rms_norm(self.cfg, "q_norm")(q), _rms_norm(self.cfg, "k_norm")(k)
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    new_cache = None
    if cache is not None:
      start = (layer, 0, cache_index, 0, 0)
      new_cache = {name: jax.lax.dynamic_update_slice(
          cache[name], new[None].astype(cache[name].dtype), start)
                   for name, new in (("k", k), ("v", v))}
      if mask.shape[-1] != x.shape[1]:  # the keys are the whole cache, not the new tokens
        k, v = (jax.lax.dynamic_index_in_dim(new_cache[name], layer, keepdims=False)
                .astype(q.dtype) for name in ("k", "v"))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                       scale=float(t.query_pre_attn_scalar) ** -0.5)
    out = out.reshape(x.shape[:2] + (t.num_heads * t.head_dim,))
    return lora.dense(self.cfg, t.hidden_size, "o_proj")(out), new_cache


class Gemma3DecoderLayer(nn.Module):
  """Sandwich-norm block; the scan carry is (hidden state, whole KV cache or None)."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, Optional[KVCache]], layer: jax.Array,
               is_sliding: jax.Array, global_rope: tuple[jax.Array, jax.Array],
               local_rope: tuple[jax.Array, jax.Array], full_mask: jax.Array,
               sliding_mask: jax.Array, cache_index: jax.Array
               ) -> tuple[tuple[jax.Array, Optional[KVCache]], None]:
    h, cache = carry
    cos, sin = (jnp.where(is_sliding, local, glob) for local, glob in zip(local_rope,
                                                                          global_rope))
    mask = jnp.where(is_sliding, sliding_mask, full_mask)
    attn, cache = Gemma3Attention(self.cfg, name="self_attn")(
        _rms_norm(self.cfg, "input_layernorm")(h), cos, sin, mask, cache, layer, cache_index)
    h = h + _rms_norm(self.cfg, "post_attention_layernorm")(attn)
    # GeGLU down(act(gate(x)) * up(x)): the Llama MLP with Gemma's activation.
    mlp = llama.LlamaMLP(self.cfg, name="mlp")(_rms_norm(self.cfg, "pre_feedforward_layernorm")(h))
    h = h + _rms_norm(self.cfg, "post_feedforward_layernorm")(mlp)
    return (h, cache), None


class Gemma3TextModel(nn.Module):
  """Token embedding table + scanned decoder layers + final norm (no LM head)."""

  cfg: ml_collections.FrozenConfigDict

  def setup(self):
    t = self.cfg.text
    self.embed_tokens = nn.Embed(t.vocab_size, t.hidden_size, dtype=jnp.dtype(self.cfg.dtype),
                                 param_dtype=jnp.dtype(self.cfg.param_dtype),
                                 embedding_init=nn.initializers.normal(0.02))
    layer_cls = Gemma3DecoderLayer
    if self.cfg.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False)
    self.layers = nn.scan(
        layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, 0) + (nn.broadcast,) * 5, length=t.num_layers)(self.cfg)
    self.norm = _rms_norm(self.cfg, "norm")

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings times sqrt(hidden_size), the factor rounded to the embedding
    table's dtype first (as HF does: sqrt(3840) is 62.0 in bfloat16)."""
    normalizer = jnp.asarray(self.cfg.text.hidden_size ** 0.5, jnp.dtype(self.cfg.param_dtype))
    embeds = self.embed_tokens(input_ids)
    return embeds * normalizer.astype(embeds.dtype)

  def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, full_mask: jax.Array,
               sliding_mask: jax.Array, cache: Optional[KVCache] = None,
               cache_index: jax.Array | int = 0) -> tuple[jax.Array, Optional[KVCache]]:
    """Runs the decoder.

    Args:
      inputs_embeds: [N, T, D] input embeddings (already scaled: `embed`).
      positions: [N, T] int RoPE positions.
      full_mask, sliding_mask: [N, 1, T, S] bool attention masks of the global and the
        sliding layers. S = T: the new tokens are the only keys (no cache, or an empty
        cache being filled from slot 0); else S = cache length.
      cache: optional ``{"k", "v"}`` of the KV cache (see module docstring).
      cache_index: slot at which the T new keys/values are written into `cache`.

    Returns:
      (hidden states [N, T, D] after the final norm, updated ``{"k", "v"}`` or None).
    """
    t = self.cfg.text
    global_rope, local_rope = rope_tables(self.cfg, positions)
    is_sliding = jnp.asarray([kind == config_lib.SLIDING for kind in t.layer_types])
    (h, new_cache), _ = self.layers(
        (inputs_embeds, cache), jnp.arange(t.num_layers), is_sliding, global_rope, local_rope,
        full_mask, sliding_mask, jnp.asarray(cache_index, jnp.int32))
    return self.norm(h), new_cache


def init_kv_cache(cfg: ml_collections.ConfigDict, batch_size: int, max_length: int) -> KVCache:
  """A zero KV cache for `batch_size` rows of `max_length` slots (compute dtype)."""
  t = cfg.text
  shape = (t.num_layers, batch_size, max_length, t.num_kv_heads, t.head_dim)
  return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype),
          "pos": jnp.zeros((batch_size, max_length), jnp.int32)}
