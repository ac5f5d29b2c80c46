"""The one way a stage runs, from `python -m rlhfv_jax.main` and from the demo alike.

`prepare` resolves the model config (`model_init.resolve_model_config`: the architecture
of the checkpoint the run starts from, unless the config pins a size) and validates the
config; `run` then writes the resolved config to `<workdir>/config.json` (process 0)
before the stage starts. That file is what makes a run's workdir the start of the next
stage: `sft` -> `ddpo`, `ddpo` -> `eval`, `hallucination_eval`, `sample`, `export_hf`
read the architecture from it (`init.params="checkpoint"`, `init.checkpoint_dir`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

from rlhfv_jax.stages import model_init
from rlhfv_jax.stages import registry


def write_config(config: Any, workdir: str | os.PathLike) -> None:
  """Saves the resolved config as `<workdir>/config.json` (process 0)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(os.fspath(workdir), model_init.RUN_CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def prepare(config: Any) -> Callable[[str], Any]:
  """Resolves and validates `config` (in place); returns `workdir -> the stage's result`.

  Raises:
    ValueError: the config names no stage, its checkpoint cannot be read, or validation
      found problems (the message lists them). Nothing has run or been written then.
  """
  validate, run_stage = registry.get(config.get("stage")).load()
  try:
    model_init.resolve_model_config(config)
    validate(config)
    model_init.check_checkpoint_shapes(config)
  except (OSError, NotImplementedError) as e:  # the checkpoint named by init.*
    raise ValueError(f"init: cannot read the checkpoint ({e})") from e

  def start(workdir: str) -> Any:
    write_config(config, workdir)
    return run_stage(config, workdir)

  return start


def run(config: Any, workdir: str) -> Any:
  """Runs `config.stage` in `workdir` (`prepare`, then the stage); returns its result."""
  return prepare(config)(workdir)
