"""A tiny stand-in multimodal "LM" with the project's apply_fn signature, for trainer tests.

It has the same top-level parameter groups as the real model ("vision_tower",
"projector", "language_model") and honours `sequences_per_image`, so the real DDPO and
SFT losses run on it unchanged; it is small enough that every trainer test compiles in
a second or two.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rlhfv_jax.batch import PreferenceBatch, SFTBatch, TokenSequences

VOCAB = 32
WIDTH = 16
CHANNELS = 3
IMAGE_SIZE = 4


def init_params(seed: int = 0) -> dict:
  """Random params as numpy float32 arrays."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
  return {
      "vision_tower": {"kernel": normal(CHANNELS, WIDTH)},
      "projector": {"kernel": normal(WIDTH, WIDTH), "bias": np.zeros(WIDTH, np.float32)},
      "language_model": {
          "embed": normal(VOCAB, WIDTH),
          "mix": {"kernel": normal(WIDTH, WIDTH), "bias": np.zeros(WIDTH, np.float32)},
          "head": normal(WIDTH, VOCAB),
      },
  }


def apply_fn(params, input_ids, attention_mask, pixel_values, sequences_per_image=1):
  """Logits [N, T, V]; sequence j uses image j % B (the real model's contract)."""
  image = jnp.tanh(pixel_values.mean(axis=(1, 2)) @ params["vision_tower"]["kernel"])
  image = image @ params["projector"]["kernel"] + params["projector"]["bias"]
  image = jnp.tile(image, (sequences_per_image, 1))
  lm = params["language_model"]
  hidden = lm["embed"][input_ids] + image[:, None, :]
  # A causal running mean lets each position see its prefix, like a real decoder.
  length = input_ids.shape[1]
  causal = jnp.tril(jnp.ones((length, length), hidden.dtype))
  mask = attention_mask[..., None].astype(hidden.dtype)
  prefix = (causal @ (hidden * mask)) / jnp.maximum(causal @ mask, 1.0)
  hidden = jnp.tanh(prefix @ lm["mix"]["kernel"] + lm["mix"]["bias"])
  return hidden @ lm["head"]


def _sequences(rng: np.random.Generator, batch: int, length: int, corrected: bool):
  lengths = rng.integers(length // 2, length + 1, size=batch)
  prompt = rng.integers(1, length // 3, size=batch)
  ids = rng.integers(1, VOCAB, size=(batch, length)).astype(np.int32)
  positions = np.arange(length)[None]
  attention = positions < lengths[:, None]
  ids = np.where(attention, ids, 0)
  targets = np.concatenate([ids[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
  loss_mask = (positions >= prompt[:, None]) & (positions < lengths[:, None] - 1)
  corrected_mask = loss_mask & (rng.random((batch, length)) < 0.3) if corrected else (
      np.zeros_like(loss_mask))
  return TokenSequences(input_ids=ids, attention_mask=attention, targets=targets,
                        loss_mask=loss_mask, corrected_mask=corrected_mask)


def _images(rng: np.random.Generator, batch: int) -> np.ndarray:
  return rng.standard_normal((batch, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)).astype(np.float32)


def preference_batch(seed: int, batch: int = 8, length: int = 12) -> PreferenceBatch:
  """A random DDPO batch (numpy leaves) with padding and corrected segments."""
  rng = np.random.default_rng(seed)
  return PreferenceBatch(pixel_values=_images(rng, batch),
                         chosen=_sequences(rng, batch, length, corrected=True),
                         rejected=_sequences(rng, batch, length, corrected=True))


def sft_batch(seed: int, batch: int = 8, length: int = 12) -> SFTBatch:
  """A random SFT batch (numpy leaves) whose examples have different answer lengths."""
  rng = np.random.default_rng(seed)
  return SFTBatch(pixel_values=_images(rng, batch),
                  tokens=_sequences(rng, batch, length, corrected=False))
