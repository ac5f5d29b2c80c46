"""Llama-family decoder (HF `LlamaModel` layout): RMSNorm, RoPE, SwiGLU, GQA, KV cache.

The decoder consumes input *embeddings* (so the MLLM can splice image features in)
and returns final hidden states. Layers are one `nn.scan`; an optional KV cache is a
dict of arrays stacked on the same leading layer axis and carried through the scan:
each layer writes its new keys/values into its own slice of the whole cache, so the
cache is updated in place (returning it as the scan's stacked output instead made
XLA copy the whole cache every decode step: 3.2 ms per step at 32 cache slots, 36 ms
at 600 on the benchmark model).

KV-cache convention: `cache = {"k": [L, N, K, S, hd], "v": [L, N, K, S, hd]}` (heads
before slots, so the attention reads a layer's keys without transposing them). The T
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
from rlhfv_jax.model import lora

KVCache = dict[str, jax.Array]


def _dense(cfg: ml_collections.FrozenConfigDict, features: int, name: str) -> nn.Module:
  # A LoRADense where model.lora targets the projection (`rlhfv_jax.model.lora`).
  return lora.dense(cfg, features, name)


def _rms_norm(cfg: ml_collections.FrozenConfigDict, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(cfg.text.rms_norm_eps, dtype=jnp.dtype(cfg.dtype),
                        param_dtype=jnp.dtype(cfg.param_dtype), name=name)


def _attend_to_cache(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention of q [N, T, H, hd] over one layer's cache k, v [N, K, S, hd].

  The same computation as `jax.nn.dot_product_attention` (query head h reads key head
  h // (H / K), as HF's `repeat_kv`), written for the cache's head-major layout.
  """
  n, t, h, d = q.shape
  q = q.reshape(n, t, k.shape[1], h // k.shape[1], d)
  logits = jnp.einsum("ntkgd,nksd->nkgts", q, k.astype(q.dtype)) * (d ** -0.5)
  logits = jnp.where(mask[:, :, None], logits.astype(jnp.float32),
                     jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  return jnp.einsum("nkgts,nksd->ntkgd", probs, v.astype(q.dtype)).reshape(n, t, h, d)


class LlamaAttention(nn.Module):
  """Grouped-query causal self-attention with rotary positions and an optional cache."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               cache: Optional[KVCache], layer: jax.Array, cache_index: jax.Array
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
    if cache is not None:
      start = (layer, 0, 0, cache_index, 0)
      new_cache = {name: jax.lax.dynamic_update_slice(
          cache[name], new.swapaxes(1, 2)[None].astype(cache[name].dtype), start)
                   for name, new in (("k", k), ("v", v))}
    if cache is None or mask.shape[-1] == x.shape[1]:  # the new tokens are all the keys
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    else:
      out = _attend_to_cache(
          q, *(jax.lax.dynamic_index_in_dim(new_cache[name], layer, keepdims=False)
               for name in ("k", "v")), mask)
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
  """Pre-norm decoder block; the scan carry is (hidden state, whole KV cache or None)."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, Optional[KVCache]], layer: jax.Array,
               cos: jax.Array, sin: jax.Array, mask: jax.Array, cache_index: jax.Array
               ) -> tuple[tuple[jax.Array, Optional[KVCache]], None]:
    h, cache = carry
    attn, cache = LlamaAttention(self.cfg, name="self_attn")(
        _rms_norm(self.cfg, "input_layernorm")(h), cos, sin, mask, cache, layer, cache_index)
    h = h + attn
    h = h + LlamaMLP(self.cfg, name="mlp")(_rms_norm(self.cfg, "post_attention_layernorm")(h))
    return (h, cache), None


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
      mask: [N, 1, T, S] bool attention mask. S = T: the T new tokens are the only keys
        (no cache, or an empty cache being filled from slot 0, e.g. a prompt: its
        attention then never reads the cache's empty slots); else S = cache length.
      cache: optional KV cache (see module docstring).
      cache_index: slot at which the T new keys/values are written into `cache`.

    Returns:
      (hidden states [N, T, D] after the final norm, updated cache or None).
    """
    t = self.cfg.text
    cos, sin = layers.rope_cos_sin(positions, t.head_dim, t.rope_theta)
    (h, new_cache), _ = self.layers((inputs_embeds, cache), jnp.arange(t.num_layers),
                                    cos, sin, mask, jnp.asarray(cache_index, jnp.int32))
    return self.norm(h), new_cache


def init_kv_cache(cfg: ml_collections.ConfigDict, batch_size: int,
                  max_length: int) -> KVCache:
  """A zero KV cache for `batch_size` rows of `max_length` slots (compute dtype)."""
  t = cfg.text
  shape = (t.num_layers, batch_size, t.num_kv_heads, max_length, t.head_dim)
  return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
