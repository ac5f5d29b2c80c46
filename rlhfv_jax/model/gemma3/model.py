"""Gemma 3 multimodal LLM: SigLIP -> pooled soft tokens -> spliced into the Gemma 3 decoder.

Same interface and placeholder convention as `rlhfv_jax.model.llava15.llava.Llava`
(read its docstrings): each image is `mm_tokens_per_image` consecutive
`image_token_id` placeholders (the processor wraps them in `<start_of_image>` /
`<end_of_image>`, ordinary tokens here); a row holds 0 or exactly that many.

Attention, as transformers' `Gemma3ForConditionalGeneration` computes it:

* global layers: causal, OR bidirectional among the placeholders of the same image
  (HF's `token_type_ids` blocks: a maximal run of consecutive placeholders);
* sliding layers: that mask AND the window: a query at position p sees keys at
  positions > p - `text.sliding_window`.

The window is measured in RoPE *positions*, not storage slots: a shared-prefix row
(`[prompt | chosen | rejected]`, the rejected answer's positions restarting after the
prompt) then gives exactly the unshared log-probs, and padding never shifts it. HF
measures it in cache slots, which are the positions of unpadded rows. The KV cache
stores each slot's position for that reason (`decoder.init_kv_cache`).

Image blocks are bidirectional among the tokens of one call whose keys are those
tokens (no cache, or a cache filled from slot 0: a prompt); tokens decoded into a
filled cache attend causally, as HF's `generate` does after its first step.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rlhfv_jax.model import layers
from rlhfv_jax.model import multimodal
from rlhfv_jax.model.gemma3 import decoder
from rlhfv_jax.model.gemma3 import siglip


def image_blocks(is_image_token: jax.Array) -> jax.Array:
  """[N, T] id of each placeholder's image (a run of consecutive placeholders), -1 for
  other tokens: HF's `get_block_sequence_ids_for_mask`."""
  previous = jnp.pad(is_image_token, ((0, 0), (1, 0)))[:, :-1]
  starts = is_image_token & ~previous
  return jnp.where(is_image_token, jnp.cumsum(starts, axis=1) - 1, -1)


class Gemma3(multimodal.MultimodalLM):
  """Gemma 3 MLLM. Parameter tree mirrors HF `Gemma3ForConditionalGeneration`:
  `vision_tower`, `multi_modal_projector`, `language_model` (and `lm_head` if untied).

  Attributes:
    cfg: model config (see `rlhfv_jax.model.gemma3.config`); stored frozen.
  """


  def setup(self):
    self.vision_tower = siglip.SiglipVisionTower(self.cfg)
    self.multi_modal_projector = siglip.MultiModalProjector(self.cfg)
    self.language_model = decoder.Gemma3TextModel(self.cfg)
    if not self.cfg.text.tie_word_embeddings:
      self.lm_head = self.untied_head(self.cfg)

  def encode_images(self, pixel_values: jax.Array) -> jax.Array:
    """[B, H, W, C] NHWC pixels -> [B, mm_tokens_per_image, text_hidden] features."""
    return self.multi_modal_projector(self.vision_tower(pixel_values))

  def decode(self, input_ids: jax.Array, attention_mask: jax.Array,
             image_features: Optional[jax.Array] = None, sequences_per_image: int = 1, *,
             positions: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
             shared_segment: Optional[int] = None,
             kv_cache: Optional[decoder.KVCache] = None, cache_index: jax.Array | int = 0,
             logits_index: Optional[jax.Array] = None, logits_from: int = 0,
             return_hidden: bool = False):
    """Runs the decoder on tokens with image features spliced in.

    Same arguments and results as `rlhfv_jax.model.llava15.llava.Llava.decode`;
    `kv_cache` comes from `decoder.init_kv_cache`.
    """
    cfg = self.cfg
    embeds = layers.splice_images(self.language_model.embed(input_ids),
                                  input_ids == cfg.image_token_id, image_features,
                                  sequences_per_image)
    num_new = input_ids.shape[1]
    layer_cache = new_cache = None
    if kv_cache is None:
      if segment_ids is not None and positions is None:
        raise ValueError("Packed sequences (segment_ids) need explicit positions.")
      if positions is None:
        positions = layers.positions_from_mask(attention_mask)
      query_slots, keys_are_new = jnp.arange(num_new), True
    else:
      if positions is None or segment_ids is not None:
        raise ValueError("KV-cache decoding needs explicit positions and no segment_ids.")
      query_slots = cache_index + jnp.arange(num_new)
      # Filling an empty cache: the new tokens are the only keys (see Gemma3TextModel).
      keys_are_new = isinstance(cache_index, int) and cache_index == 0
      if keys_are_new:
        attention_mask = attention_mask[:, :num_new]
      layer_cache = {name: kv_cache[name] for name in ("k", "v")}
      new_cache = {"pos": jax.lax.dynamic_update_slice(
          kv_cache["pos"], positions.astype(jnp.int32), (0, cache_index))}
    key_positions = positions if keys_are_new else new_cache["pos"]
    mask = layers.causal_attention_mask(query_slots, attention_mask, segment_ids, segment_ids,
                                        shared_segment)
    if keys_are_new:  # bidirectional within each image (HF's token_type_ids blocks)
      blocks = image_blocks(input_ids == cfg.image_token_id)
      same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
      same &= attention_mask[:, None, :].astype(bool)
      if segment_ids is not None:
        same &= segment_ids[:, :, None] == segment_ids[:, None, :]
      mask |= same[:, None]
    # Sliding layers: keys less than `sliding_window` positions back (or ahead, in an image).
    in_window = positions[:, :, None] - key_positions[:, None, :] < int(cfg.text.sliding_window)
    hidden, layer_cache = self.language_model(embeds, positions, mask, mask & in_window[:, None],
                                              layer_cache, cache_index)
    hidden = layers.scored_positions(hidden, logits_index, logits_from)
    out = hidden if return_hidden else self.head(hidden)
    return out if kv_cache is None else (out, dict(layer_cache, **new_cache))
