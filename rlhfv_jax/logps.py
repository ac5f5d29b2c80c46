"""Per-token log-probs of a batch's answers: the one forward every loss and pass uses.

Data flows records → batches → **log-probs** → loss → step. The DDPO loss (policy and
frozen reference), the reference log-prob cache and the SFT loss all turn a batch into
per-token log-probs here, so there is one place where how the model is run on a batch
is decided: the image is encoded once per pair, and logits are computed only from the
first position an answer can be scored at (`scored_from`: after the image placeholders,
so the LM head never runs over the image tokens). With a shared prefix
(`PreferenceBatch.shared_prefix`, the default in training) the prompt, image tokens
included, runs once per pair instead of once per answer.

With a large vocabulary (Gemma 3: 262k entries) the [tokens x vocab] float32 logits
would dominate a step's memory (and its gradient as much again). An apply_fn that
declares `logits_chunk` > 0 returns hidden states instead, and the LM head runs here
on that many tokens at a time under `jax.checkpoint`: forward and backward hold one
chunk's logits, and the log-probs equal the unchunked ones (tested).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp

from rlhfv_jax.batch import PreferenceBatch, TokenSequences


class ApplyFn(Protocol):
  """The model call (`rlhfv_jax.model.make_apply_fn` builds the LLaVA one).

  An apply_fn may also declare an int attribute `scored_from` > 0: no target before
  that time index is ever scored, and it then takes a static `logits_from` keyword and
  returns logits [N, T - logits_from, V] (the LM head skips the rest). Without the
  attribute every position gets logits.

  An int attribute `logits_chunk` > 0 says the apply_fn takes ``return_hidden=True``
  (returning the final hidden states [N, T', D] instead of logits) and has a method
  ``head(params, hidden) -> logits``; log-probs are then computed `logits_chunk`
  tokens at a time (module docstring).
  """

  def __call__(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
               pixel_values: Optional[jax.Array], sequences_per_image: int = 1) -> jax.Array:
    """Returns logits [N, T, V]; sequence j of the N = k·B uses image j mod B.

    Shared-prefix batches also pass `positions`, `segment_ids` ([N, T] int) and a static
    `shared_segment` (keys of that segment are visible from every segment)."""


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
  return targets_logps(logits, targets)[0]


def targets_logps(logits: jax.Array, *targets: jax.Array) -> tuple[jax.Array, ...]:
  """`token_logps` of several target arrays over the same logits, sharing the softmax
  normaliser (a shared-prefix row scores two answers from one logits row)."""
  logits = logits.astype(at_least_f32(logits.dtype))
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)
  return tuple(
      jnp.take_along_axis(logits, t[..., None].astype(jnp.int32), axis=-1)[..., 0]
      - log_normalizer for t in targets)


def both_answers(batch: PreferenceBatch) -> TokenSequences:
  """The 2B sequences of a preference batch: every chosen row, then every rejected row
  (without cached reference log-probs), so row j and row B + j share image j."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0),
                      batch.chosen.replace(ref_token_logps=None),
                      batch.rejected.replace(ref_token_logps=None))


def scored_from(apply_fn: ApplyFn) -> int:
  """The first time index whose target `apply_fn` computes logits for (see `ApplyFn`)."""
  return int(getattr(apply_fn, "scored_from", 0))


def logits_chunk(apply_fn: ApplyFn) -> int:
  """Tokens per LM-head chunk of `apply_fn` (0: whole batches; see `ApplyFn`)."""
  return int(getattr(apply_fn, "logits_chunk", 0) or 0)


def sequence_logits(apply_fn: ApplyFn, params: Any, tokens: TokenSequences,
                    pixel_values: jax.Array, sequences_per_image: int = 1,
                    return_hidden: bool = False, **packing: Any) -> jax.Array:
  """Logits [N, T - s, V] of `tokens` at time indices s.. (s = `scored_from(apply_fn)`),
  which predict `tokens.targets[:, s:]`; sequence j sees image j mod B. `packing`
  (positions, segment_ids, shared_segment) goes to the apply_fn as is; with
  `return_hidden` the final hidden states [N, T - s, D] come back instead."""
  start = scored_from(apply_fn)
  kwargs = {"logits_from": start} if start else {}
  if return_hidden:
    kwargs["return_hidden"] = True
  return apply_fn(params, tokens.input_ids, tokens.attention_mask, pixel_values,
                  sequences_per_image=sequences_per_image, **kwargs, **packing)


def chunked_targets_logps(head: Callable[[jax.Array], jax.Array], hidden: jax.Array,
                          *targets: jax.Array, chunk: int
                          ) -> tuple[tuple[jax.Array, ...], jax.Array]:
  """`targets_logps(head(hidden), *targets)` and the argmax predictions, `chunk` tokens
  of the flattened [N, T] at a time.

  Each chunk's logits [chunk, V] are made, reduced to log-probs and dropped; the body
  is rematerialized, so the backward pass also holds one chunk's logits (and their
  gradient) at a time instead of [N, T, V].

  Args:
    head: hidden states [..., D] -> logits [..., V].
    hidden: [N, T, D] final hidden states.
    targets: [N, T] int target ids each.
    chunk: tokens per chunk (the last chunk is padded).

  Returns:
    (log-probs [N, T] per target array (at least float32), argmax ids [N, T] int32).
  """
  n, t, d = hidden.shape
  total = n * t
  pad = -total % chunk
  flat = lambda x: jnp.pad(x.reshape((total,) + x.shape[2:]),
                           ((0, pad),) + ((0, 0),) * (x.ndim - 2))
  in_chunks = lambda x: flat(x).reshape((-1, chunk) + x.shape[2:])
  stacked_targets = jnp.stack([t_.astype(jnp.int32) for t_ in targets])  # [K, N, T]

  @jax.checkpoint
  def one_chunk(xs):
    h, ts = xs
    logits = head(h)
    lps = targets_logps(logits, *ts)
    return jnp.stack(lps), jnp.argmax(logits, axis=-1).astype(jnp.int32)

  lps, predicted = jax.lax.map(
      one_chunk, (in_chunks(hidden), jnp.moveaxis(
          jax.vmap(in_chunks)(stacked_targets), 0, 1)))
  unflat = lambda x: x.reshape(x.shape[:1] + (-1,))[:, :total].reshape(x.shape[:1] + (n, t))
  lps = unflat(jnp.moveaxis(lps, 1, 0))  # [K, N, T]
  return tuple(lps), predicted.reshape(-1)[:total].reshape(n, t)


def scored_logps(apply_fn: ApplyFn, params: Any, tokens: TokenSequences,
                 pixel_values: jax.Array, targets: tuple[jax.Array, ...],
                 sequences_per_image: int = 1, **packing: Any
                 ) -> tuple[tuple[jax.Array, ...], jax.Array]:
  """Log-probs of each of `targets` [N, T - s] from `tokens`' scored positions s.. and
  the model's argmax there [N, T - s]: whole logits, or `logits_chunk` tokens at a time.
  """
  chunk = logits_chunk(apply_fn)
  out = sequence_logits(apply_fn, params, tokens, pixel_values, sequences_per_image,
                        return_hidden=bool(chunk), **packing)
  if chunk:
    return chunked_targets_logps(lambda h: apply_fn.head(params, h), out, *targets,
                                 chunk=chunk)
  return targets_logps(out, *targets), jnp.argmax(out, axis=-1)


def _from_scored_start(lps: jax.Array, loss_mask: jax.Array, start: int) -> jax.Array:
  """Log-probs [N, T - s] of targets s.. -> [N, T] aligned with `targets`: 0 before s,
  and NaN for a row whose `loss_mask` scores a target before s (concrete inputs raise)."""
  if not start:
    return lps
  early = jnp.any(loss_mask[:, :start], axis=-1)
  if not isinstance(early, jax.core.Tracer) and bool(jnp.any(early)):
    raise ValueError(f"rows {jnp.flatnonzero(early).tolist()} score targets before time "
                     f"index {start}, where this apply_fn computes no logits (scored_from)")
  lps = jnp.pad(lps, ((0, 0), (start, 0)))
  return jnp.where(early[:, None], jnp.nan, lps)


def sequence_token_logps(apply_fn: ApplyFn, params: Any, tokens: TokenSequences,
                         pixel_values: jax.Array, sequences_per_image: int = 1
                         ) -> tuple[jax.Array, jax.Array]:
  """(per-token log-probs [N, T] of `tokens.targets`, argmax predictions [N, T - s]).

  Log-probs before s = `scored_from(apply_fn)` are 0; a row that scores a target there
  (its `loss_mask` says so) gets NaN log-probs instead of silently wrong ones: the train
  step skips and counts non-finite updates, and concrete inputs raise right away.
  """
  start = scored_from(apply_fn)
  (lps,), predicted = scored_logps(apply_fn, params, tokens, pixel_values,
                                   (tokens.targets[:, start:],), sequences_per_image)
  return _from_scored_start(lps, tokens.loss_mask, start), predicted


# Segment ids of a shared-prefix row (`rlhfv_jax.batch`); padding is 0.
PROMPT_SEGMENT, CHOSEN_SEGMENT, REJECTED_SEGMENT = 1, 2, 3


def shared_prefix_layout(chosen_mask: jax.Array, rejected_mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """RoPE positions and segment ids [B, T] of `[prompt | chosen | rejected]` rows.

  Each token gets the position it has in its own unshared sequence (prompt + its
  answer): the rejected answer's positions restart where the prompt ends.

  Args:
    chosen_mask, rejected_mask: [B, T] bool, each answer's `attention_mask` (the prompt
      is in both).
  """
  in_prompt = chosen_mask & rejected_mask
  only_rejected = rejected_mask & ~chosen_mask
  segment_ids = jnp.where(in_prompt, PROMPT_SEGMENT,
                          jnp.where(chosen_mask, CHOSEN_SEGMENT,
                                    jnp.where(rejected_mask, REJECTED_SEGMENT, 0)))
  position_in = lambda mask: jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
  positions = jnp.where(only_rejected, position_in(rejected_mask), position_in(chosen_mask))
  return positions, segment_ids.astype(jnp.int32)


def _shared_prefix_logps(apply_fn: ApplyFn, params: Any,
                         batch: PreferenceBatch) -> tuple[jax.Array, jax.Array]:
  """Both answers' per-token log-probs from one shared-prefix row per pair."""
  chosen, rejected = batch.chosen, batch.rejected
  start = scored_from(apply_fn)
  positions, segment_ids = shared_prefix_layout(chosen.attention_mask, rejected.attention_mask)
  row = chosen.replace(attention_mask=chosen.attention_mask | rejected.attention_mask)
  lps, _ = scored_logps(apply_fn, params, row, batch.pixel_values,
                        (chosen.targets[:, start:], rejected.targets[:, start:]),
                        positions=positions, segment_ids=segment_ids,
                        shared_segment=PROMPT_SEGMENT)
  return tuple(_from_scored_start(lp, t.loss_mask, start)
               for lp, t in zip(lps, (chosen, rejected)))


def answer_token_logps(apply_fn: ApplyFn, params: Any,
                       batch: PreferenceBatch) -> tuple[jax.Array, jax.Array]:
  """Per-token log-probs of both answers of every pair, in one forward pass.

  Unshared layout: chosen and rejected answers run as 2B sequences that share each
  example's image (`sequences_per_image=2`: the image is encoded once per pair).
  Shared prefix (`batch.shared_prefix`): B rows, each holding the prompt once and both
  answers (`rlhfv_jax.batch`); the apply_fn must take the packing keywords (positions,
  segment_ids, shared_segment).

  Returns:
    (chosen, rejected): [B, T] log-probs of `targets` (aligned like every mask).
  """
  if batch.shared_prefix:
    return _shared_prefix_logps(apply_fn, params, batch)
  tokens = both_answers(batch)
  lps, _ = sequence_token_logps(apply_fn, params, tokens, batch.pixel_values,
                                sequences_per_image=2)
  chosen, rejected = jnp.split(lps, 2)
  return chosen, rejected
