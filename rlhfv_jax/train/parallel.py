"""The two ways a train step runs on devices.

* `PmapParallel`: `jax.pmap` over the local devices, the state replicated on each,
  gradients and metrics averaged with `lax.psum` over the device axis (which spans all
  processes' devices in a multi-host run). For models whose params and optimizer state
  fit one device.
* `MeshParallel`: `jax.jit` on a `jax.sharding.Mesh` with axes ("data", "fsdp"), the
  params and optimizer state sharded by the FSDP rules of `rlhfv_jax.train.mesh` and the
  batch over both axes. XLA inserts the all-gathers and reduce-scatters (ZeRO-3 / FSDP
  style), for models that do not fit one device.

Both run the same pure step (`step.make_train_step`) and take host batches shaped
[local_batch, ...] (this process's share of the global batch).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhfv_jax.train import mesh as mesh_lib
from rlhfv_jax.train.step import StepFn, split_leading
from rlhfv_jax.train.train_state import TrainState


def make_parallel(train_config: Any, make_step: Callable[..., StepFn]) -> "Parallel":
  """PmapParallel or MeshParallel, per `train.parallelism` (`train` section of a config)."""
  if train_config.parallelism == "pmap":
    return PmapParallel(make_step, grad_accum_steps=train_config.grad_accum_steps)
  mesh = mesh_lib.make_mesh(train_config.mesh.data, train_config.mesh.fsdp)
  return MeshParallel(make_step(axis_name=None), mesh,
                      grad_accum_steps=train_config.grad_accum_steps,
                      min_fsdp_size=train_config.mesh.get("min_fsdp_size",
                                                          mesh_lib.DEFAULT_MIN_FSDP_SIZE))


def _to_host(x: jax.Array) -> np.ndarray:
  """One full copy of a replicated array, from this process's first device."""
  return np.asarray(x.addressable_data(0))


def host_value(x: Any) -> np.ndarray:
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
    self._local = NamedSharding(Mesh(np.array(self.devices), (mesh_lib.DEVICE_AXIS,)),
                                P(mesh_lib.DEVICE_AXIS))
    self._global_replicated = mesh_lib.replicated()
    self._step = jax.pmap(train_step_fn(axis_name=mesh_lib.DEVICE_AXIS),
                          axis_name=mesh_lib.DEVICE_AXIS,
                          devices=self.devices if jax.process_count() == 1 else None,
                          donate_argnums=(0,))

  def _replicate(self, tree: Any) -> Any:
    n = len(self.devices)

    def put(x):
      x = host_value(x)
      return jax.device_put(np.broadcast_to(x[None], (n,) + x.shape), self._local)
    return jax.tree.map(put, tree)

  def put_state(self, state: Any) -> Any:
    return self._replicate(state)

  def put_frozen_inputs(self, frozen_inputs: Any) -> Any:
    return self._replicate(frozen_inputs)

  def put_batch(self, host_batch: Any) -> Any:
    n, k = len(self.devices), self.grad_accum_steps

    return jax.tree.map(lambda x: jax.device_put(
        split_leading(x, (n, "devices"), (k, "accumulation steps")), self._local), host_batch)

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


class MeshParallel(Parallel):
  """`jax.jit` on a ("data", "fsdp") mesh: FSDP-sharded params and optimizer state."""

  def __init__(self, train_step: StepFn, mesh: Mesh, grad_accum_steps: int = 1,
               min_fsdp_size: int = 0):
    """Args:
      train_step: from `make_train_step(..., axis_name=None)`.
      mesh: from `mesh.make_mesh`.
      grad_accum_steps: micro-batches per update.
      min_fsdp_size: tensors with fewer elements stay replicated.
    """
    self.mesh = mesh
    self.grad_accum_steps = grad_accum_steps
    self.min_fsdp_size = min_fsdp_size
    self._replicated = NamedSharding(mesh, P())
    self._train_step = train_step
    self._step = None

  def shardings(self, tree: Any) -> Any:
    """FSDP shardings for a pytree of arrays or shape structs."""
    return mesh_lib.fsdp_shardings(self.mesh, tree, self.min_fsdp_size)

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
    sharding = NamedSharding(self.mesh, P(None, mesh_lib.BATCH_AXES))
    num_shards = self.mesh.size // jax.process_count()

    def put(x):
      split_leading(x, (k, "accumulation steps"), (num_shards, "local devices"))  # checks
      x = split_leading(x, (k, "accumulation steps"))
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
