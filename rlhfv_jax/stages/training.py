"""The `sft` and `ddpo` stages: build model, data, optimizer and devices from the config,
then train, leaving checkpoints in the workdir (the next stage's init).

Workdir layout (with `config.json`, written by `runner.run` before the stage starts):
  checkpoints/<step>/   orbax checkpoints (resume point; the next stage's init)
  metrics.jsonl         one record per logged step; tensorboard/ the same as events
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
from absl import logging

from rlhfv_jax import logps
from rlhfv_jax import model as model_lib
from rlhfv_jax.batch import PreferenceBatch, SFTBatch
from rlhfv_jax.model import lora
from rlhfv_jax.stages import model_init
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import loop
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.train import objectives
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train import parallel as parallel_lib
from rlhfv_jax.train import step as step_lib
from rlhfv_jax.train.train_state import TrainState


def _make_loader(config: Any, workdir: str, **overrides: Any):
  from rlhfv_jax.data import factory  # local: tokenizer/TFDS imports only when needed
  return factory.make_loader(config, run_dir=workdir, **overrides)


def expect_batch_type(batch: Any, stage: str) -> None:
  """Raises a TypeError naming the datasets that fit `stage` if `batch` does not."""
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
      expect_batch_type(batch, self._stage)
      self._checked = True
    return batch

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)


def stage_objective(config: Any, apply_fn: logps.ApplyFn, kind: str) -> objectives.Objective:
  """The objective of `kind` ("sft" | "ddpo"), the DDPO one with `config.ddpo`."""
  if kind == "sft":
    return objectives.sft_objective(apply_fn)
  return objectives.ddpo_objective(apply_fn, config.ddpo,
                                   cached_reference=bool(config.data.use_ref_cache))


def num_train_steps(config: Any, dataset_size: int) -> int:
  """train.num_steps, else train.num_epochs passes over `dataset_size` examples."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return max(1, math.ceil(config.train.num_epochs * dataset_size / config.train.global_batch_size))


def run(config: Any, workdir: str) -> Any:
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
  adapters = lora.settings(config.model)
  # The starting params (with LoRA: the frozen base the adapters are trained on).
  abstract_initial = model_lib.param_shapes(lora.base_config(config.model))
  optim_config = config.optim
  if adapters is None:
    abstract_params = abstract_initial
  else:
    # Only the adapters (and model.lora.trained) are the state: they alone have optimizer
    # state and are checkpointed; the base is the step's frozen input.
    objective = objectives.with_lora(objective)
    abstract_params = jax.eval_shape(
        lambda base: lora.initial_trainable(base, adapters, jax.random.PRNGKey(config.seed)),
        abstract_initial)
    optim_config = config.optim.copy_and_resolve_references()
    optim_config.frozen = ()
    logging.info("LoRA rank %d (alpha %g) on %s%s: %d trained parameters of %d",
                 adapters.rank, adapters.alpha, ", ".join(adapters.targets),
                 f" + {', '.join(adapters.trained)} in full" if adapters.trained else "",
                 lora.num_params(abstract_params), lora.num_params(abstract_initial))
  optimizer, schedule, labels = optimizer_lib.make_optimizer(optim_config, abstract_params,
                                                             num_steps)
  make_step = functools.partial(
      step_lib.make_train_step, objective.loss_fn, optimizer, schedule,
      trainable=optimizer_lib.trainable_mask(labels), loss_weight_key=objective.loss_weight_key)
  parallel = parallel_lib.make_parallel(config.train, make_step)
  make_state = lambda params: TrainState.create(params, optimizer,
                                                jax.random.PRNGKey(config.seed))
  initial = functools.cache(
      lambda: model_init.load_initial_params(
          config, parallel.checkpoint_shardings(abstract_initial)))
  if adapters is None:
    initial_params = initial
  else:
    initial_params = functools.cache(lambda: lora.initial_trainable(
        initial(), adapters, jax.random.PRNGKey(config.seed)))
    lora.write_base_pointer(model_init.checkpoint_dir(workdir), config)

  ckpt = checkpointing.Checkpointer(model_init.checkpoint_dir(workdir),
                                    save_every_steps=config.checkpoint.every_steps,
                                    max_to_keep=config.checkpoint.max_to_keep,
                                    async_save=config.checkpoint.async_save)
  batches = _CheckedIterator(iter(loader), stage)
  fresh_state = lambda: parallel.init_state(make_state, initial_params())
  state, start = loop.init_or_restore(parallel, fresh_state,
                                      jax.eval_shape(make_state, abstract_params), ckpt, batches)
  # The DDPO reference is the starting params, frozen (unless its log-probs are cached);
  # with LoRA they are the base, the step's frozen input in any case.
  frozen_inputs = (parallel.put_frozen_inputs(initial())
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
  if adapters is None:
    return parallel.host_params(state)
  # The trained model as plain weights (W + (alpha / r) A B), as a later stage loads it.
  base = jax.tree.map(parallel_lib.host_value, initial())
  return lora.fold(lora.merge(base, parallel.host_params(state)), adapters)
