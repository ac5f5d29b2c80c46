"""Device layouts: meshes, parameter shardings, and the two ways a step runs on devices.

* `PmapParallel`: `jax.pmap` over the local devices, the state replicated on each,
  gradients and metrics averaged with `lax.psum` over the device axis (which spans all
  processes' devices in a multi-host run). For models whose params and optimizer state
  fit one device.
* `MeshParallel`: `jax.jit` on a `jax.sharding.Mesh` with axes ("data", "fsdp"). Each
  parameter (and its Adam moments) is sharded over "fsdp" along its largest divisible
  axis, unless it is smaller than `min_fsdp_size` elements (big_vision's rule: sharding
  a bias or a norm scale saves nothing and costs a collective); the batch is sharded
  over both axes. XLA inserts the all-gathers and reduce-scatters (ZeRO-3 / FSDP style),
  for models that do not fit one device.

Both take host batches shaped [local_batch, ...] (this process's share of the global
batch). Every mesh of the project is built here (`make_mesh`, `local_data_mesh`), and
every [B, ...] -> [k, B/k, ...] split goes through `split_leading`.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhfv_jax.train.train_state import TrainState

DEVICE_AXIS = "devices"
# Parameters with fewer elements stay replicated on an FSDP mesh (see the docstring).
DEFAULT_MIN_FSDP_SIZE = 2 ** 14

StepFn = Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]


def split_leading(x: Any, *factors: tuple[int, str]) -> np.ndarray:
  """[B, ...] -> [n_1, ..., n_k, B / (n_1 ... n_k), ...] (host numpy).

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


def local_data_mesh() -> Mesh:
  """A 1-D ("data",) mesh over this process's devices, for per-process passes (the
  reference log-prob pass: each process computes its own share)."""
  return Mesh(np.array(jax.local_devices()), ("data",))


def replicated(mesh: Optional[Mesh] = None) -> NamedSharding:
  """Full replication over `mesh` (default: every global device)."""
  mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), (DEVICE_AXIS,))
  return NamedSharding(mesh, P())


def make_parallel(train_config: Any, make_step: Callable[..., StepFn]) -> "Parallel":
  """PmapParallel or MeshParallel, per `train.parallelism` (`train` section of a config)."""
  if train_config.parallelism == "pmap":
    return PmapParallel(make_step, grad_accum_steps=train_config.grad_accum_steps)
  mesh = make_mesh(train_config.mesh.data, train_config.mesh.fsdp)
  return MeshParallel(make_step(axis_name=None), mesh,
                      grad_accum_steps=train_config.grad_accum_steps,
                      min_fsdp_size=train_config.mesh.get("min_fsdp_size",
                                                          DEFAULT_MIN_FSDP_SIZE))


def pass_layout(train_config: Any, abstract_params: Any,
                devices: Optional[list[jax.Device]] = None) -> tuple[Any, NamedSharding]:
  """(param shardings, batch sharding) of a forward-only pass over `devices` (default:
  every global device), params placed as training places them: FSDP-sharded on the
  run's mesh shape with `train.parallelism="fsdp"` (a 13B model fits nowhere else), else
  replicated; the batch split over every device of the mesh.

  With `devices=jax.local_devices()` each process gets its own mesh of the same shape
  rules (e.g. `mesh.fsdp=-1` shards over all its local devices), for passes in which
  each process works on its own share (generation in the benchmark stage)."""
  if train_config.parallelism == "fsdp":
    mesh = make_mesh(train_config.mesh.data, train_config.mesh.fsdp, devices)
    params = fsdp_shardings(mesh, abstract_params,
                            train_config.mesh.get("min_fsdp_size", DEFAULT_MIN_FSDP_SIZE))
  else:
    mesh = make_mesh(-1, 1, devices)
    params = jax.tree.map(lambda _: replicated(mesh), abstract_params)
  return params, NamedSharding(mesh, P(MeshParallel.BATCH_AXES))


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
    self._global_replicated = replicated()
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


def fsdp_partition_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 0) -> P:
  """Shards the largest axis divisible by `fsdp_size` over "fsdp"; replicates when none
  divides or the tensor has fewer than `min_size` elements."""
  if fsdp_size <= 1 or not shape or int(np.prod(shape)) < min_size:
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


def fsdp_shardings(mesh: Mesh, tree: Any, min_size: int = 0) -> Any:
  """FSDP shardings on `mesh` for a pytree of arrays or shape structs."""
  return jax.tree.map(lambda x: NamedSharding(
      mesh, fsdp_partition_spec(tuple(x.shape), mesh.shape["fsdp"], min_size)), tree)


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

  def __init__(self, train_step: StepFn, mesh: Mesh, grad_accum_steps: int = 1,
               min_fsdp_size: int = 0):
    """Args:
      train_step: from `make_train_step(..., axis_name=None)`.
      mesh: from `make_mesh`.
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
    return fsdp_shardings(self.mesh, tree, self.min_fsdp_size)

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
