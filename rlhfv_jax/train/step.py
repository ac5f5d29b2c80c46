"""The train step, and the two ways it runs on many devices.

`make_train_step` builds one pure update: gradients of the loss accumulated over the
micro-batches of the batch (a `lax.scan`), averaged over devices, clipped, applied by
the optimizer, and *skipped* (params and optimizer state left as they were) when the
loss or the gradients are not finite.

Two executions of that same function:

* `PmapParallel`: `jax.pmap` over the local devices, the state replicated on each,
  gradients and metrics averaged with `lax.psum` over the device axis (which spans all
  processes' devices in a multi-host run). For models whose params and optimizer state
  fit one device.
* `MeshParallel`: `jax.jit` on a `jax.sharding.Mesh` with axes ("data", "fsdp"). Each
  parameter (and its Adam moments) is sharded over "fsdp" along its largest divisible
  axis; the batch is sharded over both axes. XLA inserts the all-gathers and
  reduce-scatters (ZeRO-3 / FSDP style), for models that do not fit one device.

Both take host batches shaped [local_batch, ...] (this process's share of the global
batch) and produce the same numbers as a single-device step on the whole batch.

Averaging: every micro-batch/device reports its loss as a mean over its own examples.
By default these are averaged with equal weight, which is exact for per-example-mean
losses such as DDPO. When `loss_weight_key` names a metric (e.g. "num_tokens" for the
token-mean SFT loss) they are weighted by it, which turns the average of per-shard
means back into the global mean over all tokens of the batch.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhfv_jax.train.train_state import TrainState

# loss_fn(params, frozen_inputs, batch, rng) -> (scalar loss, metrics dict of scalars).
# `frozen_inputs` holds arrays the loss reads but does not train (the DDPO reference
# params), or None.
LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
StepFn = Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]

DEVICE_AXIS = "devices"


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
    num_micro = jax.tree.leaves(batch)[0].shape[0]

    if num_micro == 1:
      total_weight, grad_sum, metric_sum = weighted_grads(
          state.params, frozen_inputs, jax.tree.map(lambda x: x[0], batch), rng)
    else:
      def accumulate(carry, xs):
        index, micro_batch = xs
        out = weighted_grads(state.params, frozen_inputs, micro_batch,
                             jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, out), None

      zeros = jax.tree.map(
          lambda s: jnp.zeros(s.shape, jnp.float32),
          jax.eval_shape(weighted_grads, state.params, frozen_inputs,
                         jax.tree.map(lambda x: x[0], batch), rng))
      (total_weight, grad_sum, metric_sum), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(num_micro), batch))

    if axis_name is not None:
      total_weight, grad_sum, metric_sum = jax.lax.psum(
          (total_weight, grad_sum, metric_sum), axis_name)
    grads = jax.tree.map(lambda g, p: (g / total_weight).astype(p.dtype), grad_sum, state.params)
    metrics = {k: v / total_weight for k, v in metric_sum.items()}
    if loss_weight_key:
      metrics[loss_weight_key] = total_weight

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
    metrics.update(
        grad_norm=grad_norm,
        learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
        update_skipped=(~finite).astype(jnp.float32),
        nonfinite_consecutive=consecutive,
        nonfinite_total=total)
    return new_state, metrics

  return train_step


def _loss_weight(metrics: dict[str, jax.Array], loss_weight_key: Optional[str]) -> jax.Array:
  if loss_weight_key:
    return jnp.asarray(metrics[loss_weight_key], jnp.float32)
  return jnp.ones((), jnp.float32)


def make_eval_step(loss_fn: LossFn, *, loss_weight_key: Optional[str] = None):
  """Builds `eval_step(params, frozen_inputs, batch) -> (weight, weighted metric sums)`.

  Sum both over batches and divide to get dataset means weighted exactly as the train
  step weights devices and micro-batches (see the module docstring). Jit it with the
  batch sharded over devices; the sums are then global.
  """
  def eval_step(params, frozen_inputs, batch):
    loss, metrics = loss_fn(params, frozen_inputs, batch, jax.random.PRNGKey(0))
    metrics = dict(metrics, loss=loss)
    weight = _loss_weight(metrics, loss_weight_key)
    return weight, {k: weight * jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
  return eval_step


def split_microbatches(batch: Any, num_micro: int) -> Any:
  """[B, ...] -> [num_micro, B / num_micro, ...] on every leaf (host-side numpy)."""
  def split(x):
    x = np.asarray(x)
    if x.shape[0] % num_micro:
      raise ValueError(f"batch of {x.shape[0]} is not divisible into {num_micro} micro-batches")
    return x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:])
  return jax.tree.map(split, batch)


def _to_host(x: jax.Array) -> np.ndarray:
  """One full copy of a replicated array, from this process's first device."""
  return np.asarray(x.addressable_data(0))


def _full_host_value(x: Any) -> np.ndarray:
  """The whole value of a (possibly sharded, possibly multi-process) array on the host."""
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_replicated:
    return _to_host(x)
  if x.is_fully_addressable:
    return np.asarray(x)
  return multihost_utils.process_allgather(x, tiled=True)


def _first_replica(x: jax.Array) -> np.ndarray:
  """Device 0's copy of a pmap-replicated array [devices, ...] (host numpy)."""
  return np.asarray(x.addressable_data(0))[0]


class Parallel(abc.ABC):
  """How states and batches are laid out on devices, and how the step is run.

  The checkpoint layout is the same for every implementation: a pytree of global
  `jax.Array`s (`checkpointable`), so a run saved under pmap resumes under FSDP and
  vice versa.
  """

  grad_accum_steps: int

  @abc.abstractmethod
  def put_state(self, state: Any) -> Any:
    """Places a state (host arrays or global arrays as restored) for `step`."""

  def init_state(self, make_state: Callable[[Any], TrainState], params: Any) -> Any:
    """A fresh state `make_state(params)` (e.g. `TrainState.create`), placed for `step`."""
    return self.put_state(make_state(params))

  @abc.abstractmethod
  def put_frozen_inputs(self, frozen_inputs: Any) -> Any:
    """Places the loss's untrained inputs (e.g. reference params) for `step`."""

  @abc.abstractmethod
  def put_batch(self, host_batch: Any) -> Any:
    """Places this process's share [local_batch, ...] of the global batch."""

  @abc.abstractmethod
  def step(self, state: Any, batch: Any, frozen_inputs: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Runs one update; the input state's buffers are donated."""

  @abc.abstractmethod
  def checkpointable(self, state: Any) -> Any:
    """The state as global arrays for orbax (what is written to disk)."""

  @abc.abstractmethod
  def checkpoint_shardings(self, abstract_state: Any) -> Any:
    """Shardings for restoring a checkpoint of `abstract_state` (shape/dtype structs)."""

  @abc.abstractmethod
  def host_metrics(self, metrics: dict[str, jax.Array]) -> dict[str, float]:
    """Metrics from `step` as Python floats (blocks until they are computed)."""

  @abc.abstractmethod
  def host_params(self, state: Any) -> Any:
    """The full params as host numpy arrays, on every process (e.g. for export)."""


class PmapParallel(Parallel):
  """Data parallelism with `jax.pmap` over this process's devices (state replicated)."""

  def __init__(self, train_step_fn: Callable[[str], StepFn], grad_accum_steps: int = 1,
               devices: Optional[list[jax.Device]] = None):
    """Args:
      train_step_fn: `axis_name -> step`, e.g. `functools.partial(make_train_step, ...)`
        taking `axis_name` as keyword.
      grad_accum_steps: micro-batches per device per update.
      devices: local devices to map over (default: all of this process's).
    """
    self.devices = list(devices or jax.local_devices())
    self.grad_accum_steps = grad_accum_steps
    self._local = NamedSharding(Mesh(np.array(self.devices), (DEVICE_AXIS,)), P(DEVICE_AXIS))
    self._global_replicated = NamedSharding(
        Mesh(np.array(jax.devices()), (DEVICE_AXIS,)), P())
    self._step = jax.pmap(train_step_fn(axis_name=DEVICE_AXIS), axis_name=DEVICE_AXIS,
                          devices=self.devices if jax.process_count() == 1 else None,
                          donate_argnums=(0,))

  def _replicate(self, tree: Any) -> Any:
    n = len(self.devices)

    def put(x):
      x = _full_host_value(x)
      return jax.device_put(np.broadcast_to(x[None], (n,) + x.shape), self._local)
    return jax.tree.map(put, tree)

  def put_state(self, state: Any) -> Any:
    return self._replicate(state)

  def put_frozen_inputs(self, frozen_inputs: Any) -> Any:
    return self._replicate(frozen_inputs)

  def put_batch(self, host_batch: Any) -> Any:
    n, k = len(self.devices), self.grad_accum_steps

    def split(x):
      x = np.asarray(x)
      if x.shape[0] % (n * k):
        raise ValueError(f"local batch of {x.shape[0]} examples is not divisible by "
                         f"{n} devices x {k} accumulation steps")
      return jax.device_put(x.reshape((n, k, x.shape[0] // (n * k)) + x.shape[1:]), self._local)
    return jax.tree.map(split, host_batch)

  def step(self, state, batch, frozen_inputs):
    return self._step(state, batch, frozen_inputs)

  def checkpointable(self, state: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._global_replicated,
                                                          _first_replica(x)),
        state)

  def checkpoint_shardings(self, abstract_state: Any) -> Any:
    return jax.tree.map(lambda _: self._global_replicated, abstract_state)

  def host_metrics(self, metrics):
    return {k: float(_first_replica(v)) for k, v in metrics.items()}

  def host_params(self, state):
    return jax.tree.map(_first_replica, state.params)


def fsdp_partition_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Shards the largest axis divisible by `fsdp_size` over "fsdp" (replicate if none)."""
  if fsdp_size <= 1 or not shape:
    return P()
  candidates = [(size, -axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
  if not candidates:
    return P()
  _, neg_axis = max(candidates)
  spec = [None] * len(shape)
  spec[-neg_axis] = "fsdp"
  return P(*spec)


def resolve_mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes with a -1 ("the rest") filled in; ValueError if they cannot fit."""
  if data == -1 and fsdp == -1:
    raise ValueError("train.mesh: at most one of data/fsdp may be -1")
  if fsdp == -1 and data > 0 and num_devices % data == 0:
    fsdp = num_devices // data
  if data == -1 and fsdp > 0 and num_devices % fsdp == 0:
    data = num_devices // fsdp
  if data <= 0 or fsdp <= 0 or data * fsdp != num_devices:
    raise ValueError(f"train.mesh data={data} x fsdp={fsdp} does not match the {num_devices} "
                     "devices (use -1 for one axis to take the rest)")
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1,
              devices: Optional[list[jax.Device]] = None) -> Mesh:
  """A ("data", "fsdp") mesh over all (global) devices; -1 means "the rest"."""
  devices = list(devices or jax.devices())
  data, fsdp = resolve_mesh_shape(data, fsdp, len(devices))
  return Mesh(np.array(devices).reshape(data, fsdp), ("data", "fsdp"),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)


class MeshParallel(Parallel):
  """`jax.jit` on a ("data", "fsdp") mesh: FSDP-sharded params and optimizer state."""

  BATCH_AXES = ("data", "fsdp")

  def __init__(self, train_step: StepFn, mesh: Mesh, grad_accum_steps: int = 1):
    """Args:
      train_step: from `make_train_step(..., axis_name=None)`.
      mesh: from `make_mesh`.
      grad_accum_steps: micro-batches per update.
    """
    self.mesh = mesh
    self.grad_accum_steps = grad_accum_steps
    self._fsdp = mesh.shape["fsdp"]
    self._replicated = NamedSharding(mesh, P())
    self._train_step = train_step
    self._step = None

  def shardings(self, tree: Any) -> Any:
    """FSDP shardings for a pytree of arrays or shape structs."""
    return jax.tree.map(
        lambda x: NamedSharding(self.mesh, fsdp_partition_spec(tuple(x.shape), self._fsdp)), tree)

  def _put(self, tree: Any) -> Any:
    def put(x, sharding):
      if isinstance(x, jax.Array):  # e.g. restored from a checkpoint: reshard on device
        return jax.device_put(x, sharding)
      # Host value, identical on every process: each device takes its slice.
      return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))
    return jax.tree.map(put, tree, self.shardings(tree))

  def _compile_for(self, state: Any) -> Any:
    """The state's shardings; the step is jitted for them (once)."""
    state_shardings = self.shardings(state)
    if self._step is None:
      self._step = jax.jit(self._train_step, donate_argnums=(0,),
                           out_shardings=(state_shardings, self._replicated))
    return state_shardings

  def put_state(self, state: Any) -> Any:
    self._compile_for(state)
    return self._put(state)

  def init_state(self, make_state: Callable[[Any], TrainState], params: Any) -> Any:
    # The optimizer state is created already sharded, so no device (or host) ever holds
    # all of it: the point of FSDP for models that do not fit one device.
    params = self._put(params)
    shardings = self._compile_for(jax.eval_shape(make_state, params))
    return jax.jit(make_state, out_shardings=shardings)(params)

  def put_frozen_inputs(self, frozen_inputs: Any) -> Any:
    return self._put(frozen_inputs)

  def put_batch(self, host_batch: Any) -> Any:
    k = self.grad_accum_steps
    sharding = NamedSharding(self.mesh, P(None, self.BATCH_AXES))
    num_shards = self.mesh.size // jax.process_count()

    def put(x):
      x = np.asarray(x)
      if x.shape[0] % (k * num_shards):
        raise ValueError(f"local batch of {x.shape[0]} examples is not divisible by "
                         f"{k} accumulation steps x {num_shards} local devices")
      x = x.reshape((k, x.shape[0] // k) + x.shape[1:])
      global_shape = (k, x.shape[1] * jax.process_count()) + x.shape[2:]
      return jax.make_array_from_process_local_data(sharding, x, global_shape)
    return jax.tree.map(put, host_batch)

  def step(self, state, batch, frozen_inputs):
    if self._step is None:
      raise RuntimeError("MeshParallel.step before put_state")
    with jax.set_mesh(self.mesh):
      return self._step(state, batch, frozen_inputs)

  def checkpointable(self, state: Any) -> Any:
    return state

  def checkpoint_shardings(self, abstract_state: Any) -> Any:
    return self.shardings(abstract_state)

  def host_metrics(self, metrics):
    return {k: float(_to_host(v)) for k, v in metrics.items()}

  def host_params(self, state):
    return multihost_utils.process_allgather(state.params, tiled=True)
