"""The train step: one pure update of the parameters.

`make_train_step` builds one pure update: gradients of the loss accumulated over the
micro-batches of the batch (a `lax.scan`), averaged over devices, clipped, applied by
the optimizer, and *skipped* (params and optimizer state left as they were) when the
loss or the gradients are not finite.

How it runs on many devices (pmap, or jit on an FSDP mesh) is `rlhfv_jax.train.parallel`;
both executions of this same function produce the numbers of a single-device step on
the whole batch.

Averaging: every micro-batch/device reports its loss as a mean over its own examples.
By default these are averaged with equal weight, which is exact for per-example-mean
losses such as DDPO. When `loss_weight_key` names a metric (e.g. "num_tokens" for the
token-mean SFT loss) they are weighted by it, which turns the average of per-shard
means back into the global mean over all tokens of the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhfv_jax.train.train_state import TrainState

# loss_fn(params, frozen_inputs, batch, rng) -> (scalar loss, metrics dict of scalars).
# `frozen_inputs` holds arrays the loss reads but does not train (the DDPO reference
# params), or None.
LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

# train_step(state, batch, frozen_inputs) -> (new state, metrics dict of scalars).
StepFn = Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, *, trainable: Optional[Any] = None,
                    axis_name: Optional[str] = None,
                    loss_weight_key: Optional[str] = None) -> StepFn:
  """Builds `train_step(state, batch, frozen_inputs) -> (new_state, metrics)`.

  Args:
    loss_fn: see `LossFn`.
    optimizer: the optax transformation (from `optimizer.make_optimizer`).
    lr_schedule: learning rate per step, reported as the "learning_rate" metric.
    trainable: optional pytree of Python bools with the structure of the params;
      False sub-trees are frozen: wrapped in `stop_gradient` before the loss so that no
      backward pass runs through them (the optimizer zeroes their update as well).
    axis_name: the mapped device axis under pmap (gradients and metrics are summed
      over it), or None for jit (single device or a sharded mesh).
    loss_weight_key: optional metric name weighting each micro-batch/device in the
      average (see the module docstring).

  Returns:
    The step. Every leaf of `batch` has a leading micro-batch axis [k, micro, ...]
    (k = gradient-accumulation steps). Metrics: the loss metrics, plus grad_norm
    (before clipping), learning_rate, update_skipped (1.0 if this update was dropped
    as non-finite), nonfinite_consecutive and nonfinite_total.
  """

  def frozen_to_constants(params: Any) -> Any:
    if trainable is None:
      return params
    return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)

  def weighted_grads(params, frozen_inputs, micro_batch, rng):
    def objective(p):
      return loss_fn(frozen_to_constants(p), frozen_inputs, micro_batch, rng)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    metrics = dict(metrics, loss=loss)
    weight = _loss_weight(metrics, loss_weight_key)
    scale = lambda x: weight * jnp.asarray(x, jnp.float32)
    return weight, jax.tree.map(scale, grads), jax.tree.map(scale, metrics)

  def train_step(state: TrainState, batch: Any, frozen_inputs: Any):
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    sums = _accumulate(weighted_grads, state.params, frozen_inputs, batch, rng)
    if axis_name is not None:
      sums = jax.lax.psum(sums, axis_name)
    total_weight, grad_sum, metric_sum = sums
    grads = jax.tree.map(lambda g, p: (g / total_weight).astype(p.dtype), grad_sum, state.params)
    metrics = {k: v / total_weight for k, v in metric_sum.items()}
    if loss_weight_key:
      metrics[loss_weight_key] = total_weight
    return _apply_if_finite(state, grads, metrics, optimizer, lr_schedule)

  return train_step


def _accumulate(weighted_grads: Callable[..., Any], params: Any, frozen_inputs: Any,
                batch: Any, rng: jax.Array) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
  """(total weight, weighted gradient sum, weighted metric sums) over the micro-batches.

  Args:
    weighted_grads: `(params, frozen_inputs, micro_batch, rng) -> (weight, weight *
      grads, weight * metrics)` of one micro-batch.
    params: the params the gradients are taken at.
    frozen_inputs: passed through to the loss.
    batch: every leaf [k, micro, ...].
    rng: the step's key; micro-batch i gets `fold_in(rng, i)` when k > 1.
  """
  num_micro = jax.tree.leaves(batch)[0].shape[0]
  first = jax.tree.map(lambda x: x[0], batch)
  if num_micro == 1:
    return weighted_grads(params, frozen_inputs, first, rng)

  def add_micro_batch(carry, xs):
    index, micro_batch = xs
    out = weighted_grads(params, frozen_inputs, micro_batch, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, out), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                       jax.eval_shape(weighted_grads, params, frozen_inputs, first, rng))
  sums, _ = jax.lax.scan(add_micro_batch, zeros, (jnp.arange(num_micro), batch))
  return sums


def _apply_if_finite(state: TrainState, grads: Any, metrics: dict[str, jax.Array],
                     optimizer: optax.GradientTransformation,
                     lr_schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer's update of `state` by the averaged `grads`, kept only when the loss
  and the gradient norm are finite (else params and optimizer state stay as they were);
  `metrics` gains grad_norm, learning_rate and the non-finite counters."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  consecutive = jnp.where(finite, 0, state.nonfinite_consecutive + 1).astype(jnp.int32)
  total = (state.nonfinite_total + (~finite).astype(jnp.int32)).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(new_params, state.params),
      opt_state=keep_if_finite(new_opt_state, state.opt_state),
      nonfinite_consecutive=consecutive,
      nonfinite_total=total)
  metrics = dict(
      metrics,
      grad_norm=grad_norm,
      learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
      update_skipped=(~finite).astype(jnp.float32),
      nonfinite_consecutive=consecutive,
      nonfinite_total=total)
  return new_state, metrics


def _loss_weight(metrics: dict[str, jax.Array], loss_weight_key: Optional[str]) -> jax.Array:
  if loss_weight_key:
    return jnp.asarray(metrics[loss_weight_key], jnp.float32)
  return jnp.ones((), jnp.float32)


def make_eval_step(per_example_fn: Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]], *,
                   loss_weight_key: Optional[str] = None):
  """Builds `eval_step(params, frozen_inputs, batch, valid) -> (weight, weighted sums)`.

  `per_example_fn` gives the loss and metrics of every example ([B] each, see
  `objectives.Objective`); `valid` [B] masks padded examples out (`data.fixed_batches`).
  Sum both outputs over batches and divide to get dataset means weighted exactly as the
  train step weights examples (by `loss_weight_key`, e.g. answer tokens, else equally).
  Jit it with the batch sharded over devices; the sums are then global.
  """
  def eval_step(params, frozen_inputs, batch, valid):
    loss, metrics = per_example_fn(params, frozen_inputs, batch)
    metrics = dict(metrics, loss=loss)
    weight = valid.astype(jnp.float32)
    if loss_weight_key:
      weight = weight * jnp.asarray(metrics[loss_weight_key], jnp.float32)
    return jnp.sum(weight), {k: jnp.sum(weight * jnp.asarray(v, jnp.float32))
                             for k, v in metrics.items()}
  return eval_step


def split_leading(x: Any, *factors: tuple[int, str]) -> np.ndarray:
  """[B, ...] -> [n_1, ..., n_k, B / (n_1 ... n_k), ...] (host numpy).

  Every split of a batch's example axis goes through here: into the micro-batches of
  the step (`split_microbatches`) and, in `parallel`, over devices as well.

  Args:
    x: the array.
    *factors: (n_i, what n_i counts), e.g. (4, "devices"), (2, "accumulation steps").

  Raises:
    ValueError: "batch of 12 examples is not divisible by 4 devices x 2 accumulation
      steps" when B is not a multiple of the product.
  """
  x = np.asarray(x)
  sizes = tuple(n for n, _ in factors)
  total = int(np.prod(sizes))
  if x.shape[0] % total:
    raise ValueError(f"batch of {x.shape[0]} examples is not divisible by "
                     + " x ".join(f"{n} {what}" for n, what in factors))
  return x.reshape(sizes + (x.shape[0] // total,) + x.shape[1:])


def split_microbatches(batch: Any, num_micro: int) -> Any:
  """[B, ...] -> [num_micro, B / num_micro, ...] on every leaf (host-side numpy)."""
  return jax.tree.map(lambda x: split_leading(x, (num_micro, "micro-batches")), batch)
