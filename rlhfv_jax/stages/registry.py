"""The stage registry: the one list of what `python -m rlhfv_jax.main` can run.

`config.stage` names an entry. `main` prints the help texts; `runner.run` calls the
entry's `validate` and `run`; `config_validation` reads which stages train. Entries name their
functions as "module:function" and are imported only when used, so this module stays a
leaf that any layer may read (the demo's chain of stages lives above the runner).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

_VALIDATE_CONFIG = "rlhfv_jax.stages.config_validation:validate_config"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One runnable stage.

  Attributes:
    help: what it does and which config sections it needs (shown by `main`).
    run: "module:function" taking (config, workdir).
    validate: "module:function" taking (config); raises ValueError listing problems.
    trains: whether it updates parameters (optimizer settings are checked).
  """

  help: str
  run: str
  validate: str = _VALIDATE_CONFIG
  trains: bool = False
  reads_dataset: bool = True  # a TFDS split (config.data.data_dir)

  def load(self) -> tuple[Callable[[Any], None], Callable[[Any, str], Any]]:
    """(validate, run), imported now."""
    return _resolve(self.validate), _resolve(self.run)


def _resolve(target: str) -> Callable:
  module, function = target.split(":")
  return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    "sft": Stage(
        "supervised VQA fine-tuning. Needs: data (an SFT dataset: vqav2 / jsonl_sft), "
        "init.params (random | hf | checkpoint), train, optim.",
        run="rlhfv_jax.stages.training:run", trains=True),
    "precompute_ref": Stage(
        "reference per-token log-probs for every preference example. Needs: data (a "
        "preference dataset), init (the reference), precompute.",
        run="rlhfv_jax.stages.reference:run"),
    "ddpo": Stage(
        "dense DPO on fine-grained corrections. Needs: data (a preference dataset: "
        "rlhfv_parquet / rlaifv_parquet / jsonl_preference), init (hf | checkpoint: the "
        "instruction-tuned model, also the reference), ddpo (gamma, beta, ...), train, optim.",
        run="rlhfv_jax.stages.training:run", trains=True),
    "eval": Stage(
        "the objective's metrics on eval.split. Needs: data, init, eval.",
        run="rlhfv_jax.stages.evaluate:run"),
    "hallucination_eval": Stage(
        "POPE, Object HalBench (CHAIR, rule) and AMBER from local benchmark files. Needs: "
        "init, data.tokenizer, hallucination (benchmarks and their files).",
        run="rlhfv_jax.stages.hallucination_eval:run", reads_dataset=False),
    "sample": Stage(
        "the model's own answers (K per image and prompt) into the annotation store, for "
        "`python -m rlhfv_jax.annotate`. Needs: init, data.tokenizer, sample (images, "
        "questions or prompts, num_samples, temperature, top_p, seed).",
        run="rlhfv_jax.stages.sample:run", reads_dataset=False),
    "label": Stage(
        "an AI labeler over the annotation store's answers: claims, yes/no verdicts from "
        "the model, fine-grained corrections (annotator ai:<labeler>) and ranking pairs. "
        "Needs: init (the labeler), data.tokenizer, label.store.",
        run="rlhfv_jax.stages.label:run", reads_dataset=False),
    "iterate": Stage(
        "on-policy rounds of AI feedback: sample -> label -> export -> precompute_ref -> "
        "ddpo (-> hallucination_eval), each round from the last one's policy. Needs: init "
        "(the first policy), data.tokenizer, sample, label, ddpo, train, optim, iterate.",
        run="rlhfv_jax.stages.iterate:run", validate="rlhfv_jax.stages.iterate:validate",
        trains=True, reads_dataset=False),
    "export_hf": Stage(
        "a run's params -> an HF directory (config, safetensors, tokenizer, image "
        "processor, chat template) that transformers loads. Needs: init (checkpoint), "
        "data.tokenizer, export_hf.out_dir (default <workdir>/hf).",
        run="rlhfv_jax.stages.export_hf:run", reads_dataset=False),
    "demo": Stage(
        "the embedded default (configs/demo.py): the whole miniature experiment, data to "
        "ablation table, on a synthetic world. Needs: nothing.",
        run="rlhfv_jax.demo.driver:run", validate="rlhfv_jax.demo.settings:validate"),
}
# Stages that `config_validation.validate_config` accepts (the demo validates its own
# config and each of its stage configs through it).
RUNNER_STAGES = tuple(name for name, stage in STAGES.items()
                      if stage.validate == _VALIDATE_CONFIG)
TRAINING_STAGES = tuple(name for name, stage in STAGES.items() if stage.trains)


def get(name: Any) -> Stage:
  """The stage called `name`, or a ValueError listing the stages."""
  if name not in STAGES:
    raise ValueError(f"stage={name!r} is not a stage; expected one of {tuple(STAGES)}")
  return STAGES[name]
