"""The `precompute_ref` stage: the reference model's per-token log-probs of every
preference example, cached next to the dataset so that DDPO can skip the reference forward
(`data.use_ref_cache`)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from rlhfv_jax import logps
from rlhfv_jax import model as model_lib
from rlhfv_jax.batch import PreferenceBatch
from rlhfv_jax.stages import model_init
from rlhfv_jax.train import mesh as mesh_lib


def make_reference_token_logps_fn(apply_fn: logps.ApplyFn, params: Any
                                  ) -> Callable[[PreferenceBatch], tuple[Any, Any]]:
  """`batch -> (chosen, rejected)` per-token reference log-probs [B, T], data-parallel over
  this process's devices (each process runs its own shard of the reference pass)."""
  mesh = mesh_lib.local_data_mesh()
  by_example = NamedSharding(mesh, P("data"))
  params = jax.device_put(params, mesh_lib.replicated(mesh))

  both = jax.jit(functools.partial(logps.answer_token_logps, apply_fn))

  def token_logps_fn(batch: PreferenceBatch):
    if len(batch.pixel_values) % mesh.size:
      raise ValueError(f"precompute.batch_size={len(batch.pixel_values)} must be a multiple "
                       f"of the {mesh.size} local devices")
    chosen, rejected = both(params, jax.device_put(batch, by_example))
    return np.asarray(chosen), np.asarray(rejected)

  return token_logps_fn


def run(config: Any, workdir: str) -> str:
  """The `precompute_ref` stage: the reference's per-token log-probs of every example.

  Returns:
    The cache shard this process wrote.
  """
  from rlhfv_jax.data import factory
  params = model_init.load_initial_params(config)
  fn = make_reference_token_logps_fn(model_lib.make_apply_fn(config.model), params)
  path = factory.precompute_reference(config, fn, batch_size=config.precompute.batch_size,
                                      run_dir=workdir,
                                      metadata={"reference": model_init.describe_init(config)})
  logging.info("reference cache shard written: %s", path)
  return str(path)
