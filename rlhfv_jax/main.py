r"""Runs one stage of RLHF-V training.

  python -m rlhfv_jax.main --config configs/<file>.py[:variant] --workdir DIR \
      [--config.a.b=value ...] [--print_config]

The stage is `config.stage`:

  sft             supervised fine-tuning on VQA data (mitigates the vision-language
                  mismatch before DDPO, paper Sec. 3.3)
  precompute_ref  the reference model's per-token log-probs of every preference example,
                  cached next to the dataset so DDPO can skip the reference forward
  ddpo            dense DPO on fine-grained corrections (the method)
  eval            the objective's metrics on a held-out split

A run resumes from the newest checkpoint in `--workdir` by itself. Multi-host: pass
`--distributed` on TPU pods / SLURM (cluster auto-detection; the `launch/` scripts do),
or `--coordinator_address`, `--num_processes` and `--process_id` explicitly.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py), optionally with :variant.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, logs).")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Validate and print the resolved config as JSON, then exit.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Initialise jax.distributed from the cluster environment "
    "(TPU pod slice, SLURM).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for jax.distributed (or env "
    "RLHFV_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

STAGE_HELP = {
    "sft": "supervised VQA fine-tuning. Needs: data (an SFT dataset: vqav2 / jsonl_sft), "
           "init.params (random | hf | checkpoint), train, optim.",
    "precompute_ref": "reference per-token log-probs for every preference example. Needs: "
                      "data (a preference dataset), init (the reference), precompute.",
    "ddpo": "dense DPO on fine-grained corrections. Needs: data (a preference dataset: "
            "rlhfv_parquet / jsonl_preference), init (hf | checkpoint: the instruction-tuned "
            "model, also the reference), ddpo (gamma, beta, ...), train, optim.",
    "eval": "the objective's metrics on eval.split. Needs: data, init, eval.",
    "demo": "the embedded default (configs/demo.py): the whole miniature experiment, "
            "data to ablation table, on a synthetic world. Needs: nothing.",
}


def overview() -> str:
  """What `main` can run: the stages and the config files in configs/."""
  lines = ["stages (config.stage):"]
  lines += [f"  {name:15s} {text}" for name, text in STAGE_HELP.items()]
  configs_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "configs")
  files = sorted(glob.glob(os.path.join(configs_dir, "*.py")))
  if files:
    lines.append("configs (see each file's docstring for its exact command):")
    lines += [f"  configs/{os.path.basename(f)}" for f in files
              if not os.path.basename(f).startswith("_")]
  lines.append("usage: python -m rlhfv_jax.main --config configs/<file>.py[:variant] "
               "--workdir DIR [--config.a.b=value ...]")
  return "\n".join(lines)


def _entry_points(config) -> tuple[Callable[[Any], None], Callable[[Any, str], Any]]:
  """(validate, run) for the config: one training stage, or the demo's chain of them."""
  if config.get("stage") == "demo":  # the embedded default: a whole chain of stages
    from rlhfv_jax.demo import pipeline
    return pipeline.validate, pipeline.run
  from rlhfv_jax.train import config_validation, runner
  return config_validation.validate_config, runner.run


def _quiet_library_info(record: logging.LogRecord) -> bool:
  """Drops INFO chatter of orbax (several lines per checkpoint); keeps its warnings."""
  return record.levelno > logging.INFO or "/orbax/" not in record.pathname


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  absl_logging.get_absl_handler().addFilter(_quiet_library_info)
  # Multi-process set-up comes first: nothing may touch a JAX backend before it.
  from rlhfv_jax.train import multihost
  multihost.initialize(multihost.resolve(_COORDINATOR.value, _NUM_PROCESSES.value,
                                         _PROCESS_ID.value, auto=_DISTRIBUTED.value))
  config = _CONFIG.value
  if config is None:
    print("no --config given.\n" + overview())
    return 1
  validate, run = _entry_points(config)
  try:
    validate(config)
  except ValueError as e:
    print(f"{e}\n\n{overview()}", file=sys.stderr)
    return 1
  if _PRINT_CONFIG.value:
    print(config.to_json_best_effort(indent=2, sort_keys=True))
    return 0
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  run(config, _WORKDIR.value)
  return 0


if __name__ == "__main__":
  app.run(main)
