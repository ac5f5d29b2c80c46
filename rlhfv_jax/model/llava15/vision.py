"""CLIP ViT vision tower (HF `CLIPVisionModel` layout) and the LLaVA MLP projector.

Module and parameter names mirror the HF PyTorch modules (`embeddings.patch_embedding`,
`pre_layrnorm`, `encoder.layers.self_attn.q_proj`, ...) so `hf_io` can map checkpoints
by name. The encoder layers are one `nn.scan` (parameters stacked on a leading layer
axis), which keeps compile time flat in depth.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rlhfv_jax.model.llava15 import config as config_lib
from rlhfv_jax.model import layers


class ClipEmbeddings(nn.Module):
  """Patchify (conv without bias) + class token + learned absolute positions."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    v = self.cfg.vision
    dtype, param_dtype = jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    patches = nn.Conv(v.hidden_size, (v.patch_size, v.patch_size),
                      strides=(v.patch_size, v.patch_size), padding="VALID",
                      use_bias=False, dtype=dtype, param_dtype=param_dtype,
                      name="patch_embedding")(pixel_values.astype(dtype))
    batch = patches.shape[0]
    patches = patches.reshape(batch, -1, v.hidden_size)  # Row-major, like torch flatten(2).
    class_embedding = self.param("class_embedding", nn.initializers.normal(0.02),
                                 (v.hidden_size,), param_dtype)
    cls = jnp.broadcast_to(class_embedding.astype(dtype), (batch, 1, v.hidden_size))
    tokens = jnp.concatenate([cls, patches], axis=1)
    position_embedding = nn.Embed(tokens.shape[1], v.hidden_size, dtype=dtype,
                                  param_dtype=param_dtype, name="position_embedding")
    return tokens + position_embedding(jnp.arange(tokens.shape[1]))[None]


class ClipAttention(nn.Module):
  """Bidirectional multi-head self-attention with biased projections."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    v = self.cfg.vision
    head_dim = v.hidden_size // v.num_heads
    dense = lambda name: nn.Dense(v.hidden_size, dtype=jnp.dtype(self.cfg.dtype),
                                  param_dtype=jnp.dtype(self.cfg.param_dtype), name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (v.num_heads, head_dim))
    q, k, vv = (split(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
    out = jax.nn.dot_product_attention(q, k, vv)
    return dense("out_proj")(out.reshape(x.shape[:-1] + (v.hidden_size,)))


class ClipMLP(nn.Module):
  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    v = self.cfg.vision
    kw = dict(dtype=jnp.dtype(self.cfg.dtype), param_dtype=jnp.dtype(self.cfg.param_dtype))
    x = nn.Dense(v.intermediate_size, name="fc1", **kw)(x)
    return nn.Dense(v.hidden_size, name="fc2", **kw)(layers.activation(v.hidden_act)(x))


class ClipEncoderLayer(nn.Module):
  """Pre-LN transformer block. Scanned; its carry is (hidden, selected feature)."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, carry: tuple[jax.Array, jax.Array],
               layer_index: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
    v = self.cfg.vision
    norm = lambda name: nn.LayerNorm(epsilon=v.layer_norm_eps, dtype=jnp.dtype(self.cfg.dtype),
                                     param_dtype=jnp.dtype(self.cfg.param_dtype), name=name)
    h, selected = carry
    h = h + ClipAttention(self.cfg, name="self_attn")(norm("layer_norm1")(h))
    h = h + ClipMLP(self.cfg, name="mlp")(norm("layer_norm2")(h))
    # HF hidden_states[i + 1] is this layer's output; keep the one LLaVA feeds on.
    is_feature_layer = layer_index + 1 == config_lib.num_vision_layers_used(self.cfg)
    return (h, jnp.where(is_feature_layer, h, selected)), None


class ClipEncoder(nn.Module):
  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    layer_cls = ClipEncoderLayer
    if self.cfg.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False)
    num_layers = self.cfg.vision.num_layers
    # Layers past the feature layer run too (LLaVA-1.5 wastes 1 of 24): their weights
    # are part of the checkpoint, and skipping them inside a scan costs more than it saves.
    scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=0, length=num_layers)
    (_, selected), _ = scanned(self.cfg, name="layers")((h, h), jnp.arange(num_layers))
    return selected


class ClipVisionTower(nn.Module):
  """CLIP ViT returning the hidden state at `vision.feature_layer` [B, 1 + P, D].

  `post_layernorm` is created (it is in every CLIP checkpoint) but LLaVA never uses it.
  """

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    v = self.cfg.vision
    if pixel_values.shape[1:] != (v.image_size, v.image_size, v.num_channels):
      raise ValueError(f"pixel_values must be [B, {v.image_size}, {v.image_size}, "
                       f"{v.num_channels}] (NHWC), got {pixel_values.shape}")
    norm = lambda name: nn.LayerNorm(epsilon=v.layer_norm_eps, dtype=jnp.dtype(self.cfg.dtype),
                                     param_dtype=jnp.dtype(self.cfg.param_dtype), name=name)
    h = norm("pre_layrnorm")(ClipEmbeddings(self.cfg, name="embeddings")(pixel_values))
    features = ClipEncoder(self.cfg, name="encoder")(h)
    if self.is_initializing():
      norm("post_layernorm")(features)  # Only to create the (unused) parameters.
    return features


class MultiModalProjector(nn.Module):
  """LLaVA-1.5 projector: Linear -> act -> Linear, vision width -> text width."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(use_bias=self.cfg.projector.use_bias, dtype=jnp.dtype(self.cfg.dtype),
              param_dtype=jnp.dtype(self.cfg.param_dtype))
    x = nn.Dense(self.cfg.text.hidden_size, name="linear_1", **kw)(x)
    x = layers.activation(self.cfg.projector.hidden_act)(x)
    return nn.Dense(self.cfg.text.hidden_size, name="linear_2", **kw)(x)
