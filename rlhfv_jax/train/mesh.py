"""Device meshes and shardings: where parameters and batches live on the devices.

Every mesh of the project is built here: `make_mesh` (a ("data", "fsdp") mesh over the
global devices, or over a given list) and `local_data_mesh` (this process's devices).
On an FSDP mesh each parameter (and its Adam moments) is sharded over "fsdp" along its
largest divisible axis, unless it is smaller than `min_fsdp_size` elements (big_vision's
rule: sharding a bias or a norm scale saves nothing and costs a collective); a batch is
sharded over both axes (`BATCH_AXES`).

How a train step runs on these layouts (pmap, or jit on a mesh) is
`rlhfv_jax.train.parallel`; the forward-only passes of the stages (reference log-probs,
generation) take their layouts from `pass_layout` and `replicated`.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DEVICE_AXIS = "devices"
# A batch's leading (example) axis is split over every device of a ("data", "fsdp") mesh.
BATCH_AXES = ("data", "fsdp")
# Parameters with fewer elements stay replicated on an FSDP mesh (see the docstring).
DEFAULT_MIN_FSDP_SIZE = 2 ** 14


def local_data_mesh() -> Mesh:
  """A 1-D ("data",) mesh over this process's devices, for per-process passes (the
  reference log-prob pass: each process computes its own share)."""
  return Mesh(np.array(jax.local_devices()), ("data",))


def replicated(mesh: Optional[Mesh] = None) -> NamedSharding:
  """Full replication over `mesh` (default: every global device)."""
  mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), (DEVICE_AXIS,))
  return NamedSharding(mesh, P())


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
  return params, NamedSharding(mesh, P(BATCH_AXES))


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
