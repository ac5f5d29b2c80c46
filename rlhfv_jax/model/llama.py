"""Llama-family decoder (HF `LlamaModel` layout): RMSNorm, RoPE, SwiGLU, GQA, KV cache.

The decoder consumes input *embeddings* (so the MLLM can splice image features in)
and returns final hidden states. Layers are one `nn.scan`; an optional KV cache is a
dict of arrays stacked on the same leading layer axis and threaded through the scan.

KV-cache convention: `cache = {"k": [L, N, S, K, hd], "v": [L, N, S, K, hd]}`. The T
new tokens are written at slots `cache_index .. cache_index + T - 1`; `key_valid`
[N, S] then says which cache slots hold real tokens, and causality is in slot order.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rlhfv_jax.model import layers

KVCache = dict[str, jax.Array]


def _dense(cfg: ml_collections.FrozenConfigDict, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                  param_dtype=jnp.dtype(cfg.param_dtype), name=name)


def _rms_norm(cfg: ml_collections.FrozenConfigDict, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(cfg.text.rms_norm_eps, dtype=jnp.dtype(cfg.dtype),
                        param_dtype=jnp.dtype(cfg.param_dtype), name=name)


class LlamaAttention(nn.Module):
  """Grouped-query causal self-attention with rotary positions and an optional cache."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               layer_cache: Optional[KVCache], cache_index: jax.Array
               ) -> tuple[jax.Array, Optional[KVCache]]:
    t = self.cfg.text
    q = _dense(self.cfg, t.num_heads * t.head_dim, "q_proj")(x)
    k = _dense(self.cfg, t.num_kv_heads * t.head_dim, "k_proj")(x)
    v = _dense(self.cfg, t.num_kv_heads * t.head_dim, "v_proj")(x)
    q = q.reshape(x.shape[:2] + (t.num_heads, t.head_dim))
    k = k.reshape(x.shape[:2] + (t.num_kv_heads, t.head_dim))
    v = v.reshape(x.shape[:2] + (t.num_kv_heads, t.head_dim))
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    new_cache = None
    if layer_cache is not None:
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), start)
      new_cache = {"k": k, "v": v}
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
    out = out.reshape(x.shape[:2] + (t.num_heads * t.head_dim,))
    return _dense(self.cfg, t.hidden_size, "o_proj")(out), new_cache


class LlamaMLP(nn.Module):
  """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    t = self.cfg.text
    gate = layers.activation(t.hidden_act)(_dense(self.cfg, t.intermediate_size, "gate_proj")(x))
    up = _dense(self.cfg, t.intermediate_size, "up_proj")(x)
    return _dense(self.cfg, t.hidden_size, "down_proj")(gate * up)


class LlamaDecoderLayer(nn.Module):
  """Pre-norm decoder block; the scan carry is the hidden state."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, h: jax.Array, layer_cache: Optional[KVCache], cos: jax.Array,
               sin: jax.Array, mask: jax.Array, cache_index: jax.Array
               ) -> tuple[jax.Array, Optional[KVCache]]:
    attn, new_cache = LlamaAttention(self.cfg, name="self_attn")(
        _rms_norm(self.cfg, "input_layernorm")(h), cos, sin, mask, layer_cache, cache_index)
    h = h + attn
    h = h + LlamaMLP(self.cfg, name="mlp")(_rms_norm(self.cfg, "post_attention_layernorm")(h))
    return h, new_cache


class LlamaModel(nn.Module):
  """Token embedding table + scanned decoder layers + final norm (no LM head)."""

  cfg: ml_collections.FrozenConfigDict

  def setup(self):
    t = self.cfg.text
    self.embed_tokens = nn.Embed(t.vocab_size, t.hidden_size, dtype=jnp.dtype(self.cfg.dtype),
                                 param_dtype=jnp.dtype(self.cfg.param_dtype),
                                 embedding_init=nn.initializers.normal(0.02))
    layer_cls = LlamaDecoderLayer
    if self.cfg.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False)
    self.layers = nn.scan(
        layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=t.num_layers)(self.cfg)
    self.norm = _rms_norm(self.cfg, "norm")

  def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: Optional[KVCache] = None, cache_index: jax.Array | int = 0
               ) -> tuple[jax.Array, Optional[KVCache]]:
    """Runs the decoder.

    Args:
      inputs_embeds: [N, T, D] input embeddings.
      positions: [N, T] int RoPE positions.
      mask: [N, 1, T, S] bool attention mask (S = T without cache, cache length with).
      cache: optional KV cache (see module docstring).
      cache_index: slot at which the T new keys/values are written into `cache`.

    Returns:
      (hidden states [N, T, D] after the final norm, updated cache or None).
    """
    t = self.cfg.text
    cos, sin = layers.rope_cos_sin(positions, t.head_dim, t.rope_theta)
    h, new_cache = self.layers(inputs_embeds, cache, cos, sin, mask,
                               jnp.asarray(cache_index, jnp.int32))
    return self.norm(h), new_cache


def init_kv_cache(cfg: ml_collections.ConfigDict, batch_size: int,
                  max_length: int) -> KVCache:
  """A zero KV cache for `batch_size` rows of `max_length` slots (compute dtype)."""
  t = cfg.text
  shape = (t.num_layers, batch_size, max_length, t.num_kv_heads, t.head_dim)
  return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
