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

A run resumes from the newest checkpoint in `--workdir` by itself. On SIGTERM (a TPU VM's
or SLURM's preemption notice) every process saves the same step's checkpoint and the run
exits with status 75 (`rlhfv_jax/train/preemption.py`); re-running resumes. Multi-host: pass
`--distributed` on TPU pods / SLURM (cluster auto-detection; the `launch/` scripts do),
or `--coordinator_address`, `--num_processes` and `--process_id` explicitly.
"""

from __future__ import annotations

import glob
import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from rlhfv_jax.stages import registry

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

def overview() -> str:
  """What `main` can run: the stages and the config files in configs/."""
  lines = ["stages (config.stage):"]
  lines += [f"  {name:15s} {stage.help}" for name, stage in registry.STAGES.items()]
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


def jax_process_index() -> int:
  """This process's index (0 without jax.distributed): only process 0 prints the
  overview after an error, not every process of a cluster job."""
  import jax
  return jax.process_index()


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
  from rlhfv_jax.stages import runner  # after multihost set-up: imports jax
  try:
    start = runner.prepare(config)
  except ValueError as e:
    job = multihost.slurm_job()
    if job is not None:  # the device counts came from the allocation: say which
      e = ValueError(f"{e}\n  (devices from the allocation: {job})")
    print(f"{e}\n\n{overview()}" if jax_process_index() == 0 else str(e), file=sys.stderr)
    return 1
  if _PRINT_CONFIG.value:
    print(config.to_json_best_effort(indent=2, sort_keys=True))
    return 0
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  from rlhfv_jax.train import preemption
  try:
    # Absolute: orbax refuses a relative checkpoint path, and stages hand it on.
    start(os.path.abspath(_WORKDIR.value))
  except preemption.Preempted as e:
    absl_logging.warning("%s", e)
    return preemption.EXIT_PREEMPTED
  return 0


if __name__ == "__main__":
  app.run(main)
