"""The `eval` stage: the objective's metrics (DDPO rewards and accuracy, or the SFT loss)
over every example of `config.eval.split`, written to `<workdir>/eval_results.json` and
`metrics.jsonl`."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rlhfv_jax import model as model_lib
from rlhfv_jax.stages import model_init
from rlhfv_jax.stages import training
from rlhfv_jax.train import mesh as mesh_lib
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.train import step as step_lib

EVAL_RESULTS = "eval_results.json"


def run(config: Any, workdir: str) -> dict[str, float]:
  """The `eval` stage: the objective's metrics over every example of `config.eval.split`.

  Batches have a fixed size; the padded tail of the last one is masked out, so every
  example counts once (weighted as training weights them), and the result says how many
  were scored.
  """
  from rlhfv_jax.data import factory
  source = factory.open_source(config, workdir, split=config.eval.split)
  objective = training.stage_objective(config, model_lib.make_apply_fn(config.model),
                                       config.eval.objective)
  param_shardings, batch_sharding = mesh_lib.pass_layout(
      config.train, model_lib.param_shapes(config.model))
  params = jax.device_put(model_init.load_initial_params(config, param_shardings),
                          param_shardings)
  frozen_inputs = params if objective.needs_frozen_inputs else None
  eval_step = jax.jit(step_lib.make_eval_step(objective.per_example_fn,
                                              loss_weight_key=objective.loss_weight_key),
                      out_shardings=mesh_lib.replicated(batch_sharding.mesh))
  put = lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x))
  total_weight, sums, examples = 0.0, {}, 0
  for host_batch, chunk in factory.ordered_batches(
      config, global_batch_size=config.eval.batch_size, source=source, run_dir=workdir):
    training.expect_batch_type(host_batch, config.eval.objective)
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
