"""The LLaVA-1.5-style multimodal LLM: CLIP tower -> projector -> spliced into Llama.

Image placeholders: the data pipeline expands each `<image>` into
`num_image_tokens(cfg)` copies of `cfg.image_token_id` (as transformers 5's
`LlavaProcessor` does); the k-th placeholder of a row receives the k-th feature
vector of that row's image. A row must hold either 0 placeholders (text-only row) or
exactly `num_image_tokens(cfg)`. Shapes are static, so the check is done where it can
be: with concrete (non-traced) `input_ids` a mismatch raises ValueError naming the
rows; under `jax.jit` the offending rows' embeddings become NaN so the loss is NaN
instead of silently wrong.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rlhfv_jax.model import layers
from rlhfv_jax.model import multimodal
from rlhfv_jax.model.llava15 import llama
from rlhfv_jax.model.llava15 import vision


class Llava(multimodal.MultimodalLM):
  """LLaVA-1.5 MLLM. Parameter tree mirrors HF `LlavaForConditionalGeneration`:
  `vision_tower`, `multi_modal_projector`, `language_model` and (untied) `lm_head`.

  Attributes:
    cfg: model config (see `rlhfv_jax.model.llava15.config`); stored frozen.
  """


  def setup(self):
    self.vision_tower = vision.ClipVisionTower(self.cfg)
    self.multi_modal_projector = vision.MultiModalProjector(self.cfg)
    self.language_model = llama.LlamaModel(self.cfg)
    if not self.cfg.text.tie_word_embeddings:
      self.lm_head = self.untied_head(self.cfg)

  def encode_images(self, pixel_values: jax.Array) -> jax.Array:
    """[B, H, W, C] NHWC pixels -> [B, num_image_tokens, text_hidden] features."""
    features = self.vision_tower(pixel_values)
    if self.cfg.vision.feature_select_strategy == "default":
      features = features[:, 1:]  # Drop CLS.
    return self.multi_modal_projector(features)

  def decode(self, input_ids: jax.Array, attention_mask: jax.Array,
             image_features: Optional[jax.Array] = None, sequences_per_image: int = 1, *,
             positions: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
             shared_segment: Optional[int] = None,
             kv_cache: Optional[llama.KVCache] = None, cache_index: jax.Array | int = 0,
             logits_index: Optional[jax.Array] = None, logits_from: int = 0,
             return_hidden: bool = False):
    """Runs the decoder on tokens with image features spliced in.

    Args:
      input_ids: [N, T] int32 token ids with expanded image placeholders.
      attention_mask: [N, T] bool, True for real tokens. With `kv_cache` it is instead
        [N, S], True for cache slots holding (or about to hold) real tokens.
      image_features: optional [B, n, D] from `encode_images`, N = sequences_per_image * B;
        row j uses image j % B.
      sequences_per_image: how many consecutive blocks of B rows share the images.
      positions: [N, T] RoPE positions; default `cumsum(attention_mask) - 1`, which is
        right for any padding side. Required with `segment_ids` or `kv_cache`.
      segment_ids: optional [N, T] int; tokens attend only within their segment
        (sequence packing; padding must still be False in `attention_mask`).
      shared_segment: optional static segment id every token may attend to (causally):
        a prompt shared by the answers packed after it (`rlhfv_jax.batch`).
      kv_cache: optional cache from `llama.init_kv_cache`; the T tokens are written at
        slots `cache_index ...` and attend to all valid earlier slots.
      cache_index: write slot of the first of the T tokens. A Python int 0 means the
        cache is empty: the tokens attend only to each other, not to its empty slots.
      logits_index: optional [N] int; if given, logits are computed only at time
        index `logits_index[j]` of row j (shape [N, 1, V]), e.g. a prompt's last token.
      logits_from: a static int; logits only at time indices `logits_from`.. (shape
        [N, T - logits_from, V]): the LM head skips positions whose target is never
        scored (training: the prompt up to the image placeholders).
      return_hidden: return the final hidden states [N, T', D] instead of logits; `head`
        turns them into logits (the log-prob layer does, a chunk of tokens at a time).

    Returns:
      logits [N, T', V] float32 (or hidden states), with the updated cache when
      `kv_cache` is given.
    """
    cfg = self.cfg
    embeds = layers.splice_images(self.language_model.embed_tokens(input_ids),
                                  input_ids == cfg.image_token_id, image_features,
                                  sequences_per_image)
    num_new = input_ids.shape[1]
    if kv_cache is None:
      if segment_ids is not None and positions is None:
        raise ValueError("Packed sequences (segment_ids) need explicit positions.")
      if positions is None:
        positions = layers.positions_from_mask(attention_mask)
      query_slots = jnp.arange(num_new)
      key_segments = segment_ids
    else:
      if positions is None or segment_ids is not None:
        raise ValueError("KV-cache decoding needs explicit positions and no segment_ids.")
      query_slots = cache_index + jnp.arange(num_new)
      key_segments = None
      if isinstance(cache_index, int) and cache_index == 0:
        # Filling an empty cache: the new tokens are the only keys (see LlamaModel).
        attention_mask = attention_mask[:, :num_new]
    mask = layers.causal_attention_mask(query_slots, attention_mask, segment_ids, key_segments,
                                        shared_segment)
    hidden, new_cache = self.language_model(embeds, positions, mask, kv_cache, cache_index)
    hidden = layers.scored_positions(hidden, logits_index, logits_from)
    out = hidden if return_hidden else self.head(hidden)
    return out if kv_cache is None else (out, new_cache)
