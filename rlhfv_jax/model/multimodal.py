"""What every family's MLLM module shares: the frozen validated config, the LM head, and
the call that encodes the images once and runs `decode` (`families` lists the interface).

A family's module subclasses `MultimodalLM` and defines ``setup`` (with
``language_model.embed_tokens`` and, untied, ``lm_head = MultimodalLM.untied_head(cfg)``),
``encode_images`` and ``decode``.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rlhfv_jax.model import families


class MultimodalLM(nn.Module):
  """Base of the families' modules.

  Attributes:
    cfg: model config; validated by its family and stored frozen.
  """

  cfg: ml_collections.ConfigDict

  def __post_init__(self):
    if not isinstance(self.cfg, ml_collections.FrozenConfigDict):
      families.family_of(self.cfg).validate_config(self.cfg)
      object.__setattr__(self, "cfg", ml_collections.FrozenConfigDict(self.cfg))
    super().__post_init__()

  @staticmethod
  def untied_head(cfg: ml_collections.FrozenConfigDict) -> nn.Dense:
    """The separate output projection of a model whose embeddings are not tied."""
    return nn.Dense(cfg.text.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype))

  def head(self, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> logits [..., V] float32 (the LM head)."""
    if self.cfg.text.tie_word_embeddings:
      logits = self.language_model.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    return logits.astype(jnp.float32)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               pixel_values: Optional[jax.Array] = None, sequences_per_image: int = 1, *,
               positions: Optional[jax.Array] = None,
               segment_ids: Optional[jax.Array] = None, shared_segment: Optional[int] = None,
               logits_from: int = 0, return_hidden: bool = False) -> jax.Array:
    """Logits [N, T - logits_from, V] float32 for N = sequences_per_image * B sequences.

    Each of the B images in `pixel_values` [B, H, W, C] is encoded once; sequence j
    uses image j % B. Without `pixel_values`, placeholder ids are embedded as tokens.
    `positions`, `segment_ids` and `shared_segment` pack several sequences in a row
    (see the family's ``decode``).
    """
    features = None if pixel_values is None else self.encode_images(pixel_values)
    return self.decode(input_ids, attention_mask, features, sequences_per_image,
                       positions=positions, segment_ids=segment_ids,
                       shared_segment=shared_segment, logits_from=logits_from,
                       return_hidden=return_hidden)
