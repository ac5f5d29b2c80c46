"""`validate_config`: refuse a nonsensical run before it spends any compute.

Every problem found is reported at once, each naming the config field, its value and
what to do instead, e.g.::

  ValueError: invalid config (2 problems):
    - ddpo.gamma=0.5: gamma < 1 weights corrected tokens LESS than unchanged ones, ...
    - train.global_batch_size=30 is not divisible by 4 devices x 2 accumulation steps ...
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import ml_collections

from rlhfv_jax import ddpo
from rlhfv_jax import evals
from rlhfv_jax.stages import defaults
from rlhfv_jax.stages import registry
from rlhfv_jax.train.optimizer import SCHEDULES
from rlhfv_jax.train.mesh import resolve_mesh_shape

PARALLELISMS = ("pmap", "fsdp")
INIT_SOURCES = ("random", "hf", "checkpoint")
EVAL_OBJECTIVES = ("ddpo", "sft")


def _problems_ddpo(cfg: Any) -> list[str]:
  """`ddpo.DDPOConfig`'s own checks, plus the run policy that γ < 1 is a mistake (a
  notebook may still explore it through `ddpo.make_ddpo_loss`)."""
  out = []
  try:
    ddpo.DDPOConfig.from_config(cfg)
  except ValueError as e:
    out.append(str(e))
  except TypeError as e:  # a value of the wrong type
    out.append(f"ddpo: {e}")
  gamma = cfg.gamma
  if isinstance(gamma, (int, float)) and 0 < gamma < 1:
    out.append(f"ddpo.gamma={gamma}: gamma < 1 weights corrected tokens LESS than unchanged "
               "ones, the opposite of dense DPO. Use gamma > 1 (paper: 5), or 1 for plain "
               "(length-normalised) DPO.")
  return out


def _problems_batch(cfg: Any, num_devices: int, num_processes: int) -> list[str]:
  out = []
  train = cfg.train
  batch, accum = train.global_batch_size, train.grad_accum_steps
  if batch <= 0:
    out.append(f"train.global_batch_size={batch} must be > 0")
  if accum < 1:
    out.append(f"train.grad_accum_steps={accum} must be >= 1")
  if batch > 0 and accum >= 1 and batch % (num_devices * accum):
    out.append(
        f"train.global_batch_size={batch} is not divisible by {num_devices} devices x "
        f"{accum} accumulation steps (train.grad_accum_steps): every device needs the same "
        f"whole number of examples per micro-batch. Use a multiple of {num_devices * accum}.")
  if batch > 0 and batch % num_processes:
    out.append(f"train.global_batch_size={batch} is not divisible by {num_processes} processes")
  parallelism = train.parallelism
  if parallelism not in PARALLELISMS:
    out.append(f"train.parallelism={parallelism!r}; expected one of {PARALLELISMS}")
  elif parallelism == "fsdp":
    try:
      resolve_mesh_shape(train.mesh.data, train.mesh.fsdp, num_devices)
    except ValueError as e:
      out.append(str(e))
  if train.num_steps < 0:
    out.append(f"train.num_steps={train.num_steps} must be >= 0 (0: from train.num_epochs)")
  if train.num_steps == 0 and train.num_epochs <= 0:
    out.append("train.num_steps=0 needs train.num_epochs > 0 to know how long to train")
  if train.log_every <= 0:
    out.append(f"train.log_every={train.log_every} must be > 0")
  if train.max_consecutive_nonfinite <= 0:
    out.append(f"train.max_consecutive_nonfinite={train.max_consecutive_nonfinite} must be > 0")
  return out


def _problems_optim(cfg: Any) -> list[str]:
  out = []
  lr = cfg.learning_rate
  if not lr > 0:
    out.append(f"optim.learning_rate={lr} must be > 0 (paper DDPO: 5e-7)")
  warmup = cfg.warmup_fraction
  if not 0.0 <= warmup < 1.0:
    out.append(f"optim.warmup_fraction={warmup} must lie in [0, 1) (paper: 0.1)")
  for name in ("b1", "b2"):
    if not 0.0 <= cfg[name] < 1.0:
      out.append(f"optim.{name}={cfg[name]} must lie in [0, 1)")
  if cfg.weight_decay < 0:
    out.append(f"optim.weight_decay={cfg.weight_decay} must be >= 0")
  if cfg.max_grad_norm < 0:
    out.append(f"optim.max_grad_norm={cfg.max_grad_norm} must be >= 0 (0 disables clipping)")
  if cfg.schedule not in SCHEDULES:
    out.append(f"optim.schedule={cfg.schedule!r}; expected one of {SCHEDULES}")
  if not 0.0 <= cfg.end_lr_fraction <= 1.0:
    out.append(f"optim.end_lr_fraction={cfg.end_lr_fraction} must lie in [0, 1]")
  return out


def _problems_init(cfg: Any, stage: str) -> list[str]:
  out = []
  source = cfg.init.params
  if source not in INIT_SOURCES:
    out.append(f"init.params={source!r}; expected one of {INIT_SOURCES}")
  if source == "hf" and not cfg.init.hf_checkpoint:
    out.append("init.params='hf' needs init.hf_checkpoint: a local HF checkpoint directory "
               "(config.json + model.safetensors); nothing is downloaded")
  if source == "checkpoint" and not cfg.init.checkpoint_dir:
    out.append("init.params='checkpoint' needs init.checkpoint_dir: the workdir of an "
               "earlier stage (e.g. the SFT run)")
  adapter = cfg.init.get("peft_adapter")
  if adapter and not pathlib.Path(adapter, "adapter_config.json").is_file():
    out.append(f"init.peft_adapter={adapter!r} holds no adapter_config.json (a PEFT LoRA "
               "adapter directory: adapter_config.json + adapter_model.safetensors)")
  return out


def _problems_pass_batches(config: Any, stage: str, num_devices: int,
                           num_processes: int) -> list[str]:
  """Batch sizes of the forward-only stages: eval shards a global batch over every
  device, the reference pass a per-process batch over the process's devices."""
  out = []
  if stage == "eval" and "eval" in config:
    size = config.eval.batch_size
    if size <= 0 or size % num_devices:
      out.append(f"eval.batch_size={size} must be a positive multiple of the {num_devices} "
                 "devices")
  if stage == "precompute_ref" and "precompute" in config:
    size, local = config.precompute.batch_size, num_devices // num_processes
    if size <= 0 or size % local:
      out.append(f"precompute.batch_size={size} must be a positive multiple of the {local} "
                 "devices of each process")
  return out


def _problems_hallucination(h: Any) -> list[str]:
  """The hallucination_eval stage's section: known benchmarks, each with its files."""
  unknown = [b for b in h.benchmarks if b not in evals.BENCHMARKS]
  if unknown:
    return [f"hallucination.benchmarks={tuple(h.benchmarks)}: unknown {unknown}; expected "
            f"some of {evals.BENCHMARKS}"]
  needs = {"pope": ("pope_dir", "coco_images"), "objhal": ("coco_images", "coco_annotations"),
           "amber": ("amber_dir",)}
  out = [f"hallucination.{field} is empty: benchmark {b!r} reads its local files from it "
         "(nothing is downloaded)" for b in h.benchmarks for field in needs[b]
         if not h[field]]
  if h.repope_dir and "pope" not in h.benchmarks:
    out.append("hallucination.repope_dir is set but 'pope' is not in "
               "hallucination.benchmarks: RePOPE is scored from POPE's answers (add 'pope')")
  if h.batch_size < 1:
    out.append(f"hallucination.batch_size={h.batch_size} must be >= 1")
  if h.error_policy not in ("raise", "skip"):
    out.append(f"hallucination.error_policy={h.error_policy!r}; expected 'raise' or 'skip'")
  return sorted(set(out), key=out.index)


def _problems_sample(s: Any, local_devices: int) -> list[str]:
  """The sample stage's section: an image folder and sane sampling settings."""
  out = []
  if not s.images:
    out.append("sample.images is empty: the folder of images to answer about (item image "
               "paths are relative to it)")
  if s.num_samples < 1:
    out.append(f"sample.num_samples={s.num_samples} must be >= 1")
  if s.temperature < 0:
    out.append(f"sample.temperature={s.temperature} must be >= 0 (0: greedy)")
  elif s.temperature == 0 and s.num_samples > 1:
    out.append(f"sample.num_samples={s.num_samples} with temperature 0: greedy decoding "
               "gives the same answer every time; sample with temperature > 0")
  if not 0 < s.top_p <= 1:
    out.append(f"sample.top_p={s.top_p} must be in (0, 1]")
  if not s.questions and not s.prompts:
    out.append("sample.prompts is empty and sample.questions is not set: nothing to ask")
  if s.max_new_tokens < 1:
    out.append(f"sample.max_new_tokens={s.max_new_tokens} must be >= 1")
  return out + _problems_answering("sample", s, local_devices)


def _problems_answering(name: str, section: Any, local_devices: int) -> list[str]:
  """What every answering stage's section needs: batches split over each process's
  devices, a prompt padding multiple, an error policy."""
  out = []
  for field in ("batch_size", "prompt_multiple"):
    if section[field] < 1:
      out.append(f"{name}.{field}={section[field]} must be >= 1")
  if section.batch_size >= 1 and section.batch_size % local_devices:
    out.append(f"{name}.batch_size={section.batch_size} must be a multiple of the "
               f"{local_devices} devices of each process (each batch is split over them)")
  if section.error_policy not in ("raise", "skip"):
    out.append(f"{name}.error_policy={section.error_policy!r}; expected 'raise' or 'skip'")
  return out


def _problems_label(lab: Any, local_devices: int) -> list[str]:
  """The label stage's section: a store, yes/no words and sane pair settings."""
  out = []
  if not lab.store:
    out.append("label.store is empty: the annotation store whose answers are labelled "
               "(the `sample` stage's <workdir>/annotations.sqlite)")
  if not lab.yes_words or not lab.no_words:
    out.append("label.yes_words and label.no_words name the answers' tokens, e.g. "
               "('yes', 'Yes') and ('no', 'No')")
  if lab.vocabulary and lab.claims_file:
    out.append(f"label.vocabulary={lab.vocabulary!r} is the rule extractor's and "
               f"label.claims_file={lab.claims_file!r} replaces it: set one of them")
  elif lab.vocabulary and not pathlib.Path(lab.vocabulary).is_file():
    out.append(f"label.vocabulary={lab.vocabulary!r} is not a file (one object class a "
               "line: 'name, synonym, ...'; '' for Object HalBench's COCO classes)")
  out += _problems_answering("label", lab, local_devices)
  if lab.min_gap <= 0:
    out.append(f"label.min_gap={lab.min_gap} must be > 0 (a pair's scores must differ)")
  if lab.max_pairs < 0:
    out.append(f"label.max_pairs={lab.max_pairs} must be >= 0")
  if lab.max_length_ratio < 1:
    out.append(f"label.max_length_ratio={lab.max_length_ratio} must be >= 1")
  return out


def _problems_checkpoint(cfg: Any) -> list[str]:
  out = []
  if cfg.every_steps <= 0:
    out.append(f"checkpoint.every_steps={cfg.every_steps} must be > 0")
  if cfg.max_to_keep < 1:
    out.append(f"checkpoint.max_to_keep={cfg.max_to_keep} must be >= 1")
  return out


def _problems_data_sources(data: Any, stage: str) -> list[str]:
  out = []
  reads_dataset = stage not in registry.STAGES or registry.STAGES[stage].reads_dataset
  if reads_dataset and not data.data_dir:
    out.append(f"data.data_dir is empty: stage {stage!r} reads its examples from a TFDS data "
               "directory (array_record). Set data.data_dir, and data.source_dir to build it "
               "from raw files on first use (see rlhfv_jax/data/tfds_builders.py).")
  if not data.tokenizer:
    out.append("data.tokenizer is empty: set it to a SentencePiece tokenizer.model file or a "
               "local HF tokenizer directory (nothing is downloaded)")
  return out


def _problems_data_and_model(config: Any) -> list[str]:
  out = []
  if "data" in config:
    out += _problems_data_sources(config.data, config.get("stage"))
    from rlhfv_jax.data.images import AugmentationPolicy  # validates the crop/flip rules
    try:
      AugmentationPolicy.from_config(config.data, warn=False)
    except ValueError as e:
      out.append(str(e))
  if "model" in config:
    from rlhfv_jax import model
    try:
      model.validate_config(config.model)
    except ValueError as e:
      out.append(f"model: {e}")
  return out


def with_defaults(config: Any) -> ml_collections.ConfigDict:
  """A copy of `config` whose sections have every field: those it lacks are taken from
  `defaults.base_config`, the one place defaults live (sections it lacks stay absent;
  `model` is taken whole, it has no defaults of its own)."""

  def merge(base: dict, given: dict) -> dict:
    return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(
        base.get(k), dict) else v for k, v in given.items()}}

  base = defaults.base_config().to_dict()
  given = config.to_dict()
  return ml_collections.ConfigDict({
      name: merge(base[name], section) if isinstance(section, dict) and name != "model"
      and isinstance(base.get(name), dict) else section for name, section in given.items()})


def validate_config(config: Any, *, num_devices: Optional[int] = None,
                    num_processes: Optional[int] = None) -> None:
  """Raises ValueError listing every problem of `config` (see the module docstring).

  Args:
    config: the run's ConfigDict (stage, ddpo, train, optim, init, checkpoint, data,
      model); sections a stage does not use may be absent.
    num_devices: global device count (default: `jax.device_count()`).
    num_processes: process count (default: `jax.process_count()`).
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  config = with_defaults(config)
  problems = []
  stage = config.get("stage")
  if stage not in registry.RUNNER_STAGES:
    problems.append(f"stage={stage!r} is not a stage of the runner; expected one of "
                    f"{registry.RUNNER_STAGES}")
  if "ddpo" in config:
    problems += _problems_ddpo(config.ddpo)
  if "train" in config:
    problems += _problems_batch(config, num_devices, num_processes)
  if "optim" in config and stage in registry.TRAINING_STAGES:
    problems += _problems_optim(config.optim)
    if "model" in config:  # a module LoRA adapts or trains must not be frozen
      from rlhfv_jax.model import lora
      problems += lora.frozen_problems(config.model, tuple(config.optim.frozen))
  if "init" in config:
    problems += _problems_init(config, stage)
  if "checkpoint" in config:
    problems += _problems_checkpoint(config.checkpoint)
  if "eval" in config and config.eval.objective not in EVAL_OBJECTIVES:
    problems.append(f"eval.objective={config.eval.objective!r}; expected one of "
                    f"{EVAL_OBJECTIVES}")
  problems += _problems_pass_batches(config, stage, num_devices, num_processes)
  if stage == "hallucination_eval":
    problems += _problems_hallucination(config.hallucination)
  if stage == "sample":
    problems += _problems_sample(config.sample, num_devices // num_processes)
  if stage == "label":
    problems += _problems_label(config.label, num_devices // num_processes)
  problems += _problems_data_and_model(config)
  if problems:
    raise ValueError(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n"
                     + "\n".join(f"  - {p}" for p in problems))
