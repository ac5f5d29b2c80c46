"""One process of a multi-process `load_hf_llava_sharded`, for test_hf_io_sharded.py.

  python hf_load_worker.py CHECKPOINT_DIR --coordinator_address 127.0.0.1:PORT \
      --num_processes P --process_id I

Every process holds 2 CPU devices; the checkpoint is loaded into FSDP shardings over the
global mesh of all processes' devices (no process can address a whole parameter). Each
process checks that its shards hold the values `load_hf_llava` gives, and that it read
from the files exactly the elements of its own devices' (distinct) slices.
"""

from __future__ import annotations

import argparse


class ReadCounter:
  """Wraps `safetensors.safe_open`, counting the elements its handles return."""

  def __init__(self, safe_open):
    self.safe_open = safe_open
    self.elements = 0

  def __call__(self, *args, **kwargs):
    return _CountingHandle(self, self.safe_open(*args, **kwargs))


class _CountingHandle:

  def __init__(self, counter: ReadCounter, handle):
    self.counter, self.handle = counter, handle

  def __enter__(self):
    self.handle.__enter__()
    return self

  def __exit__(self, *exc):
    return self.handle.__exit__(*exc)

  def __getattr__(self, name):
    return getattr(self.handle, name)

  def get_tensor(self, name):
    out = self.handle.get_tensor(name)
    self.counter.elements += out.size
    return out

  def get_slice(self, name):
    counter, part = self.counter, self.handle.get_slice(name)

    class Slice:
      def __getitem__(self, index):
        out = part[index]
        counter.elements += out.size
        return out

      def __getattr__(self, attr):
        return getattr(part, attr)

    return Slice()


def local_distinct_elements(params) -> int:
  """Elements of this process's shards, each distinct slice of a param counted once."""
  import jax
  total = 0
  for leaf in jax.tree.leaves(params):
    seen = {tuple(s.indices(n) for s, n in zip(shard.index, leaf.shape)): shard.data.size
            for shard in leaf.addressable_shards}
    total += sum(seen.values())
  return total


def main() -> None:
  import cpu_process  # run as a script: its directory is on the path
  parser = argparse.ArgumentParser()
  parser.add_argument("checkpoint")
  cpu_process.add_arguments(parser)
  args = parser.parse_args()
  cpu_process.initialize(args)
  import jax
  import numpy as np
  import safetensors

  from rlhfv_jax import model as model_lib
  from rlhfv_jax.model import hf_io
  from rlhfv_jax.train import mesh as mesh_lib

  mesh = mesh_lib.make_mesh(1, len(jax.devices()))
  cfg = model_lib.config_from_hf(args.checkpoint)
  shardings = mesh_lib.fsdp_shardings(mesh, model_lib.param_shapes(cfg))
  counter = ReadCounter(safetensors.safe_open)
  safetensors.safe_open = counter
  try:
    _, params = hf_io.load_hf_llava_sharded(args.checkpoint, shardings)
  finally:
    safetensors.safe_open = counter.safe_open
  _, host = hf_io.load_hf_llava(args.checkpoint)
  leaves = jax.tree.leaves(params)
  assert not all(leaf.is_fully_addressable for leaf in leaves)
  for leaf, want, sharding in zip(leaves, jax.tree.leaves(host), jax.tree.leaves(shardings)):
    assert leaf.sharding == sharding and leaf.dtype == want.dtype
    for shard in leaf.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])
  # Only its own devices' slices were read (none twice), not the whole model.
  assert counter.elements == local_distinct_elements(params), (
      counter.elements, local_distinct_elements(params))
  assert counter.elements < sum(x.size for x in jax.tree.leaves(host))
  print(f"process {jax.process_index()} done, read {counter.elements} elements")


if __name__ == "__main__":
  main()
