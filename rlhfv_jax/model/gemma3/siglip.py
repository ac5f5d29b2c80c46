"""SigLIP vision tower (HF `SiglipVisionModel`, no pooling head) and the Gemma 3
multimodal projector (HF `Gemma3MultiModalProjector`).

Parameter names mirror the HF modules (`embeddings.patch_embedding`,
`encoder.layers.self_attn.q_proj`, `post_layernorm`, `mm_input_projection_weight`, ...)
so `rlhfv_jax.model.hf_io` maps checkpoints by name. The encoder layers are the CLIP
layers of `llava15.vision` (the same pre-LN block with biased projections) in one
`nn.scan`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rlhfv_jax.model.gemma3 import config as config_lib
from rlhfv_jax.model.gemma3 import decoder
from rlhfv_jax.model.llava15 import vision as clip


def _layer_norm(cfg: ml_collections.FrozenConfigDict, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.vision.layer_norm_eps, dtype=jnp.dtype(cfg.dtype),
                      param_dtype=jnp.dtype(cfg.param_dtype), name=name)


class SiglipEmbeddings(nn.Module):
  """Patchify (conv with bias) + learned absolute positions; no class token."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    v = self.cfg.vision
    dtype, param_dtype = jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    patches = nn.Conv(v.hidden_size, (v.patch_size, v.patch_size),
                      strides=(v.patch_size, v.patch_size), padding="VALID",
                      dtype=dtype, param_dtype=param_dtype,
                      name="patch_embedding")(pixel_values.astype(dtype))
    patches = patches.reshape(patches.shape[0], -1, v.hidden_size)  # row-major, as HF
    position_embedding = nn.Embed(patches.shape[1], v.hidden_size, dtype=dtype,
                                  param_dtype=param_dtype, name="position_embedding")
    return patches + position_embedding(jnp.arange(patches.shape[1]))[None]


class SiglipEncoderLayer(nn.Module):
  """Pre-LN transformer block (scanned; the carry is the hidden state)."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, h: jax.Array, _) -> tuple[jax.Array, None]:
    h = h + clip.ClipAttention(self.cfg, name="self_attn")(_layer_norm(self.cfg, "layer_norm1")(h))
    h = h + clip.ClipMLP(self.cfg, name="mlp")(_layer_norm(self.cfg, "layer_norm2")(h))
    return h, None


class SiglipEncoder(nn.Module):
  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    layer_cls = SiglipEncoderLayer
    if self.cfg.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False)
    scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=0, length=self.cfg.vision.num_layers)
    h, _ = scanned(self.cfg, name="layers")(h, jnp.arange(self.cfg.vision.num_layers))
    return h


class SiglipVisionTower(nn.Module):
  """SigLIP ViT: [B, H, W, C] NHWC pixels -> post-layernormed patch states [B, P*P, D]."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    v = self.cfg.vision
    if pixel_values.shape[1:] != (v.image_size, v.image_size, v.num_channels):
      raise ValueError(f"pixel_values must be [B, {v.image_size}, {v.image_size}, "
                       f"{v.num_channels}] (NHWC), got {pixel_values.shape}")
    h = SiglipEmbeddings(self.cfg, name="embeddings")(pixel_values)
    h = SiglipEncoder(self.cfg, name="encoder")(h)
    return _layer_norm(self.cfg, "post_layernorm")(h)


class MultiModalProjector(nn.Module):
  """Average-pools the patch grid to `mm_tokens_per_image` soft tokens, RMS-normalizes
  them (Gemma RMSNorm, the vision eps) and maps them to the text width with the raw
  matrix ``mm_input_projection_weight`` [vision_hidden, text_hidden] (``x @ W``: not a
  Linear, so checkpoints store it untransposed)."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    v, t = self.cfg.vision, self.cfg.text
    grid = config_lib.patches_per_side(self.cfg)
    side = int(round(self.cfg.mm_tokens_per_image ** 0.5))
    kernel = grid // side
    batch = features.shape[0]
    pooled = features.reshape(batch, side, kernel, side, kernel, v.hidden_size)
    # Mean in float32 (torch's AvgPool2d accumulates in float32 for bfloat16 too).
    pooled = pooled.astype(jnp.float32).mean(axis=(2, 4)).astype(features.dtype)
    pooled = pooled.reshape(batch, side * side, v.hidden_size)  # row-major, as HF's flatten
    normed = decoder.RMSNorm(v.layer_norm_eps, param_dtype=jnp.dtype(self.cfg.param_dtype),
                             name="mm_soft_emb_norm")(pooled)
    weight = self.param("mm_input_projection_weight", nn.initializers.lecun_normal(),
                        (v.hidden_size, t.hidden_size), jnp.dtype(self.cfg.param_dtype))
    return jnp.matmul(normed, weight.astype(normed.dtype)).astype(features.dtype)
