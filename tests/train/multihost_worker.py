"""One process of a (possibly multi-process) toy training run, for test_multihost.py.

  python multihost_worker.py --workdir DIR --local_devices N \
      [--coordinator_address 127.0.0.1:PORT --num_processes P --process_id I]

For each of pmap and FSDP (2 x 2 mesh), every process feeds its contiguous slice of
each global batch (as the real loader does), trains 4 steps through the real loop,
checkpointer and metrics writer into DIR/<parallelism> (with --interrupt_at=k: k steps,
then a fresh loop resumes from the checkpoint), and process 0 writes the final params to
DIR/<parallelism>/final_params.npz.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import signal
import sys
import time

GLOBAL_BATCH = 8
NUM_STEPS = 4


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--local_devices", type=int, required=True)
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--interrupt_at", type=int, default=0,
                      help="stop at this step, then resume from its checkpoint")
  parser.add_argument("--sigterm_at", type=int, default=0,
                      help="process 1 sends itself SIGTERM when drawing this batch (a "
                      "preemption notice); the worker exits with the run's status")
  parser.add_argument("--parallelisms", default="pmap,fsdp")
  args = parser.parse_args()
  # Keep the suite's other XLA flags; only the device count is this process's own.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={args.local_devices}"])
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repo

  from rlhfv_jax.train import multihost
  multihost.initialize(multihost.resolve(args.coordinator_address, args.num_processes,
                                         args.process_id, environ={}))
  import jax
  import ml_collections
  import numpy as np

  import toy_model
  from rlhfv_jax import ddpo
  from rlhfv_jax.train import checkpointing, loop, objectives
  from rlhfv_jax.train import metrics as metrics_lib
  from rlhfv_jax.train import optimizer as optimizer_lib
  from rlhfv_jax.train import mesh as mesh_lib
  from rlhfv_jax.train import parallel as parallel_lib
  from rlhfv_jax.train import preemption
  from rlhfv_jax.train import step as step_lib
  from rlhfv_jax.train.train_state import TrainState

  class ProcessSlice:
    """Batch i of the global stream, this process's contiguous share of it."""

    def __init__(self):
      self.position = 0
      share = GLOBAL_BATCH // jax.process_count()
      self.rows = slice(jax.process_index() * share, (jax.process_index() + 1) * share)

    def __next__(self):
      if (args.sigterm_at and self.position == args.sigterm_at
          and jax.process_index() == 1):
        os.kill(os.getpid(), signal.SIGTERM)
        # The notice reaches the other process through the coordination service,
        # asynchronously: on a loaded machine the run's remaining steps could end before
        # it does (the test then sees no preemption). A real notice comes minutes ahead.
        time.sleep(3)
      batch = toy_model.preference_batch(self.position, batch=GLOBAL_BATCH)
      self.position += 1
      return jax.tree.map(lambda x: x[self.rows], batch)

    def get_state(self):
      return {"position": self.position, "process": jax.process_index()}

    def set_state(self, state):
      self.position = state["position"]

  params = toy_model.init_params()
  optimizer, schedule, labels = optimizer_lib.make_optimizer(
      ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=1, max_grad_norm=1.0)),
      params, NUM_STEPS)
  objective = objectives.ddpo_objective(toy_model.apply_fn, ddpo.PAPER_HPARAMS,
                                        cached_reference=False)
  make_step = functools.partial(step_lib.make_train_step, objective.loss_fn, optimizer,
                                schedule, trainable=optimizer_lib.trainable_mask(labels))

  def train(parallelism: str, workdir: str, num_steps: int):
    """Trains (or resumes) up to `num_steps`; returns the final params (host numpy)."""
    if parallelism == "pmap":
      parallel = parallel_lib.PmapParallel(make_step)
    else:
      parallel = parallel_lib.MeshParallel(make_step(axis_name=None), mesh_lib.make_mesh(2, 2))
    init_state = lambda: TrainState.create(params, optimizer, jax.random.PRNGKey(0))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), save_every_steps=2)
    batches = ProcessSlice()
    state, start = loop.init_or_restore(parallel, lambda: parallel.put_state(init_state()),
                                        jax.eval_shape(init_state), ckpt, batches)
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=False)
    state = loop.train(parallel, state, parallel.put_frozen_inputs(params), batches, start_step=start,
                       settings=loop.LoopSettings(num_steps=num_steps, log_every=1),
                       checkpointer=ckpt, writer=writer)
    writer.close()
    ckpt.close()
    return parallel.host_params(state)

  for parallelism in args.parallelisms.split(","):
    workdir = os.path.join(args.workdir, parallelism)
    if args.interrupt_at:  # stop, then resume from the checkpoint in a fresh loop
      train(parallelism, workdir, args.interrupt_at)
    try:
      final = train(parallelism, workdir, NUM_STEPS)
    except preemption.Preempted as e:
      print(f"PREEMPTED at step {e.step}", flush=True)
      sys.exit(preemption.EXIT_PREEMPTED)
    if jax.process_index() == 0:
      flat = {optimizer_lib.path_str(path): np.asarray(x)
              for path, x in jax.tree_util.tree_leaves_with_path(final)}
      np.savez(os.path.join(workdir, "final_params.npz"), **flat)


if __name__ == "__main__":
  main()
