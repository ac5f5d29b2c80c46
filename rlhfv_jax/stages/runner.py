"""The stages of a run: build model, data, optimizer and devices from the config, then
train (`sft`, `ddpo`), precompute reference log-probs (`precompute_ref`) or evaluate
(`eval`). `rlhfv_jax.main` parses flags and calls `run`; notebooks and the demo can call
the stage functions directly.

Workdir layout:
  config.json           the resolved config
  checkpoints/<step>/   orbax checkpoints (resume point; the next stage's init)
  metrics.jsonl         one record per logged step; tensorboard/ the same as events
  eval_results.json     the `eval` stage's metrics
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from rlhfv_jax import logps
from rlhfv_jax import model as model_lib
from rlhfv_jax.batch import PreferenceBatch, SFTBatch
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import loop
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.stages import model_init
from rlhfv_jax.train import objectives
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train import sharding
from rlhfv_jax.stages import registry
from rlhfv_jax.train import step as step_lib
from rlhfv_jax.train.train_state import TrainState

EVAL_RESULTS = "eval_results.json"


def write_config(config: Any, workdir: str | os.PathLike) -> None:
  """Saves the resolved config as `<workdir>/config.json` (process 0)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(os.fspath(workdir), "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# ------------------------------------------------------------------------ stages

def _make_loader(config: Any, workdir: str, **overrides: Any):
  from rlhfv_jax.data import factory  # local: tokenizer/TFDS imports only when needed
  return factory.make_loader(config, run_dir=workdir, **overrides)


def _expect_batch_type(batch: Any, stage: str) -> None:
  want = PreferenceBatch if stage == "ddpo" else SFTBatch
  if not isinstance(batch, want):
    raise TypeError(
        f"stage {stage!r} needs {want.__name__}es but config.data.dataset yields "
        f"{type(batch).__name__}es: use a preference dataset (rlhfv_parquet, rlaifv_parquet, "
        "jsonl_preference) for ddpo and an SFT one (vqav2, jsonl_sft) for sft")


class _CheckedIterator:
  """Checks the first batch's type; forwards grain's get_state/set_state."""

  def __init__(self, iterator: Any, stage: str):
    self._iterator, self._stage, self._checked = iterator, stage, False

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    if not self._checked:
      _expect_batch_type(batch, self._stage)
      self._checked = True
    return batch

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)


def stage_objective(config: Any, apply_fn: logps.ApplyFn, kind: str) -> objectives.Objective:
  if kind == "sft":
    return objectives.sft_objective(apply_fn)
  return objectives.ddpo_objective(apply_fn, config.ddpo,
                                   cached_reference=bool(config.data.use_ref_cache))


def num_train_steps(config: Any, dataset_size: int) -> int:
  """train.num_steps, else train.num_epochs passes over `dataset_size` examples."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return max(1, math.ceil(config.train.num_epochs * dataset_size / config.train.global_batch_size))


def train_stage(config: Any, workdir: str) -> Any:
  """The `sft` and `ddpo` stages: train and leave checkpoints in `<workdir>/checkpoints`.

  Returns:
    The final params (host numpy), e.g. for a notebook or the demo.
  """
  stage = config.stage
  if stage == "ddpo" and config.init.params == "random":
    logging.warning("DDPO from RANDOM params (init.params='random'): fine for smoke tests, "
                    "meaningless otherwise; the paper starts from an instruction-tuned model")
  loader = _make_loader(config, workdir, global_batch_size=config.train.global_batch_size,
                        num_epochs=None)  # the run length is train.num_epochs / num_steps
  num_steps = num_train_steps(config, len(loader.source))
  logging.info("stage %s: %d examples, %d steps of %d (%s)", stage, len(loader.source),
               num_steps, config.train.global_batch_size, config.train.parallelism)

  apply_fn = model_lib.make_apply_fn(config.model)
  objective = stage_objective(config, apply_fn, stage)
  abstract_params = model_lib.param_shapes(config.model)
  optimizer, schedule, labels = optimizer_lib.make_optimizer(config.optim, abstract_params,
                                                             num_steps)
  make_step = functools.partial(
      step_lib.make_train_step, objective.loss_fn, optimizer, schedule,
      trainable=optimizer_lib.trainable_mask(labels), loss_weight_key=objective.loss_weight_key)
  parallel = sharding.make_parallel(config.train, make_step)
  make_state = lambda params: TrainState.create(params, optimizer,
                                                jax.random.PRNGKey(config.seed))
  initial_params = functools.cache(
      lambda: model_init.load_initial_params(config,
                                             parallel.checkpoint_shardings(abstract_params)))

  ckpt = checkpointing.Checkpointer(model_init.checkpoint_dir(workdir),
                                    save_every_steps=config.checkpoint.every_steps,
                                    max_to_keep=config.checkpoint.max_to_keep,
                                    async_save=config.checkpoint.async_save)
  batches = _CheckedIterator(iter(loader), stage)
  fresh_state = lambda: parallel.init_state(make_state, initial_params())
  state, start = loop.init_or_restore(parallel, fresh_state,
                                      jax.eval_shape(make_state, abstract_params), ckpt, batches)
  # The DDPO reference is the starting policy, frozen (unless its log-probs are cached).
  frozen_inputs = (parallel.put_frozen_inputs(initial_params())
                   if objective.needs_frozen_inputs else None)
  writer = metrics_lib.MetricsWriter(workdir)
  try:
    state = loop.train(parallel, state, frozen_inputs, batches, start_step=start, checkpointer=ckpt,
                       writer=writer, settings=loop.LoopSettings(
                           num_steps=num_steps, log_every=config.train.log_every,
                           max_consecutive_nonfinite=config.train.max_consecutive_nonfinite))
  finally:
    writer.close()
    ckpt.close()
    loader.close()
  return parallel.host_params(state)


def make_reference_token_logps_fn(apply_fn: logps.ApplyFn, params: Any
                                  ) -> Callable[[PreferenceBatch], tuple[Any, Any]]:
  """`batch -> (chosen, rejected)` per-token reference log-probs [B, T], data-parallel over
  this process's devices (each process runs its own shard of the reference pass)."""
  mesh = sharding.local_data_mesh()
  by_example = NamedSharding(mesh, P("data"))
  params = jax.device_put(params, sharding.replicated(mesh))

  both = jax.jit(functools.partial(logps.answer_token_logps, apply_fn))

  def token_logps_fn(batch: PreferenceBatch):
    if len(batch.pixel_values) % mesh.size:
      raise ValueError(f"precompute.batch_size={len(batch.pixel_values)} must be a multiple "
                       f"of the {mesh.size} local devices")
    chosen, rejected = both(params, jax.device_put(batch, by_example))
    return np.asarray(chosen), np.asarray(rejected)

  return token_logps_fn


def precompute_ref_stage(config: Any, workdir: str) -> str:
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


def eval_stage(config: Any, workdir: str) -> dict[str, float]:
  """The `eval` stage: the objective's metrics over every example of `config.eval.split`.

  Batches have a fixed size; the padded tail of the last one is masked out, so every
  example counts once (weighted as training weights them), and the result says how many
  were scored.
  """
  from rlhfv_jax.data import factory
  source = factory.open_source(config, workdir, split=config.eval.split)
  objective = stage_objective(config, model_lib.make_apply_fn(config.model),
                              config.eval.objective)
  param_shardings, batch_sharding = sharding.pass_layout(
      config.train, model_lib.param_shapes(config.model))
  params = jax.device_put(model_init.load_initial_params(config, param_shardings),
                          param_shardings)
  frozen_inputs = params if objective.needs_frozen_inputs else None
  eval_step = jax.jit(step_lib.make_eval_step(objective.per_example_fn,
                                              loss_weight_key=objective.loss_weight_key),
                      out_shardings=sharding.replicated(batch_sharding.mesh))
  put = lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x))
  total_weight, sums, examples = 0.0, {}, 0
  for host_batch, chunk in factory.ordered_batches(
      config, global_batch_size=config.eval.batch_size, source=source, run_dir=workdir):
    _expect_batch_type(host_batch, config.eval.objective)
    weight, weighted = eval_step(params, frozen_inputs, jax.tree.map(put, host_batch),
                                 put(chunk.valid))
    total_weight += float(weight)
    for k, v in weighted.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    examples += chunk.num_valid
  examples = int(np.sum(multihost_utils.process_allgather(np.asarray(examples))))
  if not examples:
    raise ValueError(f"eval split {config.eval.split!r}: no example could be scored "
                     f"({len(source)} in the split)")
  results = {k: v / total_weight for k, v in sums.items()}
  if objective.loss_weight_key:
    results[objective.loss_weight_key] = total_weight
  results["examples"] = examples
  logging.info("eval on %s (%d of %d examples): %s", config.eval.split, examples, len(source),
               json.dumps(results, sort_keys=True))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, EVAL_RESULTS), "w") as f:
      json.dump(dict(results, split=config.eval.split, init=model_init.describe_init(config)),
                f, indent=2)
    writer = metrics_lib.MetricsWriter(workdir)
    writer.write(0, results, prefix="eval/")
    writer.close()
  return results


def run(config: Any, workdir: str) -> Any:
  """Runs `config.stage` in `workdir` (the config is validated by the caller)."""
  model_init.resolve_model_config(config)
  write_config(config, workdir)
  _, run_stage = registry.get(config.stage).load()
  return run_stage(config, workdir)

