"""One process of a multi-process `save_hf_llava` of FSDP-sharded params, for test_hf_io.py.

  python hf_export_worker.py OUT_DIR --coordinator_address 127.0.0.1:PORT \
      --num_processes P --process_id I

Every process holds 2 CPU devices; the tiny model's params (random, fixed seed) are
sharded over the global mesh of all processes' devices, so no process can address a
whole parameter, and every process calls `save_hf_llava(..., OUT_DIR)`.
"""

from __future__ import annotations

import argparse
import pathlib


def main() -> None:
  import cpu_process  # run as a script: its directory is on the path
  parser = argparse.ArgumentParser()
  parser.add_argument("out_dir")
  cpu_process.add_arguments(parser)
  args = parser.parse_args()
  cpu_process.initialize(args)
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding

  from rlhfv_jax import model as model_lib
  from rlhfv_jax.model import hf_io

  cfg, params = tiny_export_params(model_lib)
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  sharded = jax.tree.map(
      lambda x: jax.make_array_from_callback(
          x.shape, NamedSharding(mesh, fsdp_spec(x.shape, mesh.size)), lambda index: x[index]),
      params)
  assert not any(leaf.is_fully_addressable for leaf in jax.tree.leaves(sharded))
  hf_io.save_hf_llava(cfg, sharded, args.out_dir)
  # Returned on every process only after process 0 wrote the files.
  assert (pathlib.Path(args.out_dir) / hf_io.SAFETENSORS_FILE).is_file()
  print(f"process {jax.process_index()} done")


def fsdp_spec(shape, num_devices: int):
  """Shards the first axis that divides over the devices (FSDP style), else replicates."""
  from jax.sharding import PartitionSpec as P
  for axis, size in enumerate(shape):
    if size % num_devices == 0:
      return P(*([None] * axis), "fsdp")
  return P()


def tiny_export_params(model_lib):
  """The tiny config and random host params of its shapes (fixed seed; no init compile)."""
  import jax
  import numpy as np
  cfg = model_lib.llava_config("tiny", vocab_size=100)
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                        model_lib.param_shapes(cfg))
  return cfg, params


if __name__ == "__main__":
  main()
