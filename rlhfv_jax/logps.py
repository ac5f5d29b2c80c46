"""Per-token log-probs of a batch's answers: the one forward every loss and pass uses.

Data flows records → batches → **log-probs** → loss → step. The DDPO loss (policy and
frozen reference), the reference log-prob cache and the SFT loss all turn a batch into
per-token log-probs here, so there is one place where how the model is run on a batch
is decided: the image is encoded once per pair, and logits are computed only from the
first position an answer can be scored at (`scored_from`: for LLaVA, after the image
placeholders, so the LM head never runs over the image tokens).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp

from rlhfv_jax.batch import PreferenceBatch, TokenSequences


class ApplyFn(Protocol):
  """The model call (`rlhfv_jax.model.make_apply_fn` builds the LLaVA one).

  An apply_fn may also declare an int attribute `scored_from` > 0: no target before
  that time index is ever scored, and it then takes a static `logits_from` keyword and
  returns logits [N, T - logits_from, V] (the LM head skips the rest). Without the
  attribute every position gets logits.
  """

  def __call__(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
               pixel_values: Optional[jax.Array], sequences_per_image: int = 1) -> jax.Array:
    """Returns logits [N, T, V]; sequence j of the N = k·B uses image j mod B."""


def at_least_f32(dtype) -> jnp.dtype:
  """bf16/f16 are upcast; f64 (x64 mode, gradient checks) stays f64."""
  return jnp.promote_types(dtype, jnp.float32)


def token_logps(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Log-probability of each target token: log softmax(logits)[targets].

  Args:
    logits: [B, T, V] in any float dtype; `logits[:, t]` predicts `targets[:, t]`.
    targets: [B, T] int token ids (valid ids everywhere; padding is masked later).

  Returns:
    [B, T] log-probs in float32 (float64 for float64 logits). The softmax normaliser is
    computed in at least float32, so bf16 logits lose nothing beyond their own rounding.
  """
  logits = logits.astype(at_least_f32(logits.dtype))
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)
  target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
  return target_logits[..., 0] - log_normalizer


def both_answers(batch: PreferenceBatch) -> TokenSequences:
  """The 2B sequences of a preference batch: every chosen row, then every rejected row
  (without cached reference log-probs), so row j and row B + j share image j."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0),
                      batch.chosen.replace(ref_token_logps=None),
                      batch.rejected.replace(ref_token_logps=None))


def scored_from(apply_fn: ApplyFn) -> int:
  """The first time index whose target `apply_fn` computes logits for (see `ApplyFn`)."""
  return int(getattr(apply_fn, "scored_from", 0))


def sequence_logits(apply_fn: ApplyFn, params: Any, tokens: TokenSequences,
                    pixel_values: jax.Array, sequences_per_image: int = 1) -> jax.Array:
  """Logits [N, T - s, V] of `tokens` at time indices s.. (s = `scored_from(apply_fn)`),
  which predict `tokens.targets[:, s:]`; sequence j sees image j mod B."""
  start = scored_from(apply_fn)
  kwargs = {"logits_from": start} if start else {}
  return apply_fn(params, tokens.input_ids, tokens.attention_mask, pixel_values,
                  sequences_per_image=sequences_per_image, **kwargs)


def sequence_token_logps(apply_fn: ApplyFn, params: Any, tokens: TokenSequences,
                         pixel_values: jax.Array, sequences_per_image: int = 1
                         ) -> tuple[jax.Array, jax.Array]:
  """(per-token log-probs [N, T] of `tokens.targets`, logits [N, T - s, V]).

  Log-probs before s = `scored_from(apply_fn)` are 0; a row that scores a target there
  (its `loss_mask` says so) gets NaN log-probs instead of silently wrong ones: the train
  step skips and counts non-finite updates, and concrete inputs raise right away.
  """
  start = scored_from(apply_fn)
  logits = sequence_logits(apply_fn, params, tokens, pixel_values, sequences_per_image)
  lps = token_logps(logits, tokens.targets[:, start:])
  if start:
    early = jnp.any(tokens.loss_mask[:, :start], axis=-1)
    if not isinstance(early, jax.core.Tracer) and bool(jnp.any(early)):
      raise ValueError(f"rows {jnp.flatnonzero(early).tolist()} score targets before time "
                       f"index {start}, where this apply_fn computes no logits (scored_from)")
    lps = jnp.pad(lps, ((0, 0), (start, 0)))
    lps = jnp.where(early[:, None], jnp.nan, lps)
  return lps, logits


def answer_token_logps(apply_fn: ApplyFn, params: Any,
                       batch: PreferenceBatch) -> tuple[jax.Array, jax.Array]:
  """Per-token log-probs of both answers of every pair, in one forward pass.

  Chosen and rejected answers run as 2B sequences that share each example's image
  (`sequences_per_image=2`: the image is encoded once per pair).

  Returns:
    (chosen, rejected): [B, T] log-probs of `targets` (aligned like every mask).
  """
  tokens = both_answers(batch)
  lps, _ = sequence_token_logps(apply_fn, params, tokens, batch.pixel_values,
                                sequences_per_image=2)
  chosen, rejected = jnp.split(lps, 2)
  return chosen, rejected
