"""The stage losses in the train step's `LossFn` form: `(params, frozen_inputs, batch, rng)`.

The DDPO and SFT losses themselves live in `rlhfv_jax.ddpo`; this module only adapts
their signatures. Neither uses `rng` (LLaVA trains without dropout); it is part of the
signature so that a stochastic objective needs no change to the step or checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from rlhfv_jax import ddpo
from rlhfv_jax import logps
from rlhfv_jax.model import lora
from rlhfv_jax.train.step import LossFn


@dataclasses.dataclass(frozen=True)
class Objective:
  """A loss for the train step.

  Attributes:
    loss_fn: `(params, frozen_inputs, batch, rng) -> (loss, metrics)`.
    per_example_fn: `(params, frozen_inputs, batch) -> (loss [B], metrics of [B])`, the
      same loss before the batch mean (evaluation masks padded examples with it).
    loss_weight_key: metric that weights micro-batches/devices in the average (see
      `rlhfv_jax.train.step`), or None for equal weights.
    needs_frozen_inputs: whether `frozen_inputs` must be given (the DDPO reference params
      when the batches carry no cached reference log-probs).
  """

  loss_fn: LossFn
  per_example_fn: Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]]
  loss_weight_key: Optional[str] = None
  needs_frozen_inputs: bool = False


def ddpo_objective(apply_fn: logps.ApplyFn, ddpo_config: Any, *, cached_reference: bool) -> Objective:
  """DDPO: `frozen_inputs` is the reference params (None with a reference-logp cache)."""
  ddpo_loss = ddpo.make_ddpo_loss(apply_fn, ddpo_config)

  def loss_fn(params, ref_params, batch, rng):
    del rng
    return ddpo_loss(params, ref_params, batch)

  per_example = ddpo.make_ddpo_loss(apply_fn, ddpo_config, reduce=False)
  return Objective(loss_fn=loss_fn, per_example_fn=per_example,
                   needs_frozen_inputs=not cached_reference)


def sft_objective(apply_fn: logps.ApplyFn) -> Objective:
  """Supervised answer-token NLL, averaged over all answer tokens of the global batch."""
  sft_loss = ddpo.make_sft_loss(apply_fn)

  def loss_fn(params, frozen_inputs, batch, rng):
    del frozen_inputs, rng
    return sft_loss(params, batch)

  per_example = ddpo.make_sft_loss(apply_fn, reduce=False)
  return Objective(loss_fn=loss_fn,
                   per_example_fn=lambda params, frozen_inputs, batch: per_example(params, batch),
                   loss_weight_key="num_tokens")


def with_lora(objective: Objective) -> Objective:
  """`objective` for a LoRA run: the train step's params are what trains (adapters and
  fully trained modules, `lora.initial_trainable`) and `frozen_inputs` the base params.
  The policy is ``lora.merge(base, trainable)``; the DDPO reference is the base itself
  (the same arrays: no second copy of the model), or its cached log-probs."""

  def loss_fn(trainable, base, batch, rng):
    return objective.loss_fn(lora.merge(base, trainable), base, batch, rng)

  def per_example(trainable, base, batch):
    return objective.per_example_fn(lora.merge(base, trainable), base, batch)

  return Objective(loss_fn=loss_fn, per_example_fn=per_example,
                   loss_weight_key=objective.loss_weight_key, needs_frozen_inputs=True)
