"""The recipes of configs/, for any model family: each config file is its docstring (the
commands that run it) and one call here, so LLaVA-1.5 and Gemma 3 recipes are built by
the same code and differ only in `defaults.RECIPES` data and the family's model config.

Every builder takes the text after ":" of the config file (`defaults.parse_arg`): a
size of the family (none: the architecture follows the checkpoint) and the file's
variants.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from rlhfv_jax import ddpo
from rlhfv_jax.model import families
from rlhfv_jax.stages import defaults

DDPO_VARIANTS = ("rlhfv_release", "precompute_ref", "eval")
FEEDBACK_VARIANTS = ("sample", "label", "export_hf")
PEFT = ("lora",)


def _sizes(family: str) -> tuple[str, ...]:
  return tuple(s for s in families.get(family).sizes if s != "tiny")


def ddpo_recipe(family: str, config_file: str, arg: str = "") -> ml_collections.ConfigDict:
  """DDPO with the paper's hyper-parameters (beta 0.5, gamma 5, lr 5e-7, batch 32, 7
  epochs), or a variant: the released scripts' weighting, the reference pass, the
  reward metrics of a trained run; ``lora`` for one accelerator."""
  arg = defaults.parse_arg(arg, config_file, size=_sizes(family), variant=DDPO_VARIANTS,
                           peft=PEFT)
  size, variant = arg.size, arg.variant
  config = defaults.family_base(family, "ddpo", size)
  config.data.dataset = "rlhfv_parquet"
  config.data.use_ref_cache = True  # reference log-probs from the precompute_ref stage
  hparams = ddpo.RLHFV_RELEASE_HPARAMS if variant == "rlhfv_release" else ddpo.PAPER_HPARAMS
  # The loader never emits an empty answer; dropping the in-graph host check keeps the
  # step in JAX's persistent compilation cache (minutes of compile at 7B and up).
  config.ddpo = ml_collections.ConfigDict(
      dataclasses.replace(hparams, check_empty_responses=False).to_dict())
  config.checkpoint.every_steps = 100
  if variant == "precompute_ref":
    config.stage = "precompute_ref"
    config.data.use_ref_cache = False
  elif variant == "eval":
    config.stage = "eval"
    config.init.params = "checkpoint"  # init.checkpoint_dir: the DDPO run's workdir
    config.eval.objective = "ddpo"
  if arg.peft == "lora":
    defaults.use_lora(config, learning_rate=2e-5)
    # The reference is the base, inside the step: no cache to precompute.
    config.data.use_ref_cache = False
  return config


def vqav2_sft_recipe(family: str, config_file: str, arg: str = "") -> ml_collections.ConfigDict:
  """VQAv2 SFT before DDPO (LLaVA-1.5's fine-tuning settings: lr 2e-5, cosine, 3% warmup,
  batch 128, 1 epoch); ``lora`` at lr 2e-4."""
  arg = defaults.parse_arg(arg, config_file, size=_sizes(family), peft=PEFT)
  config = defaults.family_base(family, "sft", arg.size)
  config.data.dataset = "vqav2"
  config.train.update(global_batch_size=128, num_epochs=1.0)
  config.optim.update(learning_rate=2e-5, warmup_fraction=0.03)
  config.eval.objective = "sft"
  config.checkpoint.every_steps = 500
  if arg.peft == "lora":
    defaults.use_lora(config, learning_rate=2e-4)
  return config


def feedback_recipe(family: str, config_file: str, arg: str = "") -> ml_collections.ConfigDict:
  """The ``sample`` (default), ``label`` and ``export_hf`` stages, params replicated on
  each process's devices (``--config.train.parallelism=fsdp`` shards them)."""
  arg = defaults.parse_arg(arg, config_file, variant=FEEDBACK_VARIANTS, size=_sizes(family))
  variant = arg.variant or "sample"
  config = defaults.family_base(family, variant, arg.size)
  config.train.parallelism = "pmap"
  if variant == "export_hf":
    config.init.params = "checkpoint"  # init.checkpoint_dir: the run to export
  return config


def hallucination_eval_recipe(family: str, config_file: str,
                              arg: str = "") -> ml_collections.ConfigDict:
  """POPE, Object HalBench and AMBER; params replicated on each process's devices, each
  batch split over them (FSDP would all-gather the weights at every generated token)."""
  size = defaults.parse_arg(arg, config_file, size=_sizes(family)).size
  config = defaults.family_base(family, "hallucination_eval", size)
  config.train.parallelism = "pmap"
  return config


def iterate_recipe(family: str, config_file: str, arg: str = "") -> ml_collections.ConfigDict:
  """Rounds of sample -> label -> export -> DDPO (RLAIF-V: 10 samples per prompt at
  temperature 0.7)."""
  arg = defaults.parse_arg(arg, config_file, size=_sizes(family))
  config = defaults.family_base(family, "iterate", arg.size)
  config.sample.update(num_samples=10, temperature=0.7)
  return config
