"""The full run config with every field at its default; config files start from it.

Sections (see `rlhfv_jax.stages.config_validation` for what is checked):

  stage        "sft" | "precompute_ref" | "ddpo" | "eval"
  seed         run seed (parameter init, the step RNG)
  init         where the starting params come from: params = "random" | "hf" |
               "checkpoint"; hf_checkpoint (local HF checkpoint dir); checkpoint_dir (workdir
               of an earlier stage) and checkpoint_step (-1: its latest);
               model_from_checkpoint (architecture from the HF checkpoint)
  model        the model config (`rlhfv_jax.model.model_config`: a family's named size)
  data         the data config (`rlhfv_jax.data.factory.get_data_config`)
  ddpo         the fields of `rlhfv_jax.ddpo.DDPOConfig` (gamma, beta, normalize,
               loss_type, label_smoothing, segment_mode, segment_min_match, ...)
  train        global_batch_size, grad_accum_steps, num_epochs / num_steps,
               parallelism ("pmap" | "fsdp"), mesh.{data, fsdp, min_fsdp_size}, log_every,
               max_consecutive_nonfinite
  optim        AdamW + schedule (`rlhfv_jax.train.optimizer`), frozen sub-trees
  checkpoint   every_steps, max_to_keep, async_save
  precompute   batch_size (per process) of the reference log-prob pass
  eval         split, batch_size, objective ("ddpo" | "sft")
  hallucination  the hallucination_eval stage (`rlhfv_jax/stages/hallucination_eval.py`)
  sample       the sample stage: answers to correct (`rlhfv_jax/stages/sample.py`)
  label        the label stage: an AI labeler's verdicts, corrections and ranking pairs
               (`rlhfv_jax/stages/label.py`)
  iterate      the iterate stage: rounds of sample -> label -> export -> DDPO
               (`rlhfv_jax/stages/iterate.py`)
  export_hf    the export_hf stage: out_dir of the HF directory

Defaults are the paper's DDPO settings (Yu et al. 2024, Sec. 4.1 / App.): beta 0.5,
gamma 5, lr 5e-7, batch 32, 7 epochs, 10% warmup, no image cropping; the vision tower
is frozen as in LLaVA-1.5.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from rlhfv_jax import ddpo
from rlhfv_jax import model
from rlhfv_jax.data import factory
from rlhfv_jax.evals import objhal


def base_config(stage: str = "ddpo", model_size: str = "7b",
                family: str = "llava15") -> ml_collections.ConfigDict:
  """Every field, at its default, for `stage` and a `model_size` of a model `family`."""
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.seed = 0
  config.init = ml_collections.ConfigDict(dict(
      params="random", hf_checkpoint="", checkpoint_dir="", checkpoint_step=-1,
      # With params="hf": take the architecture from the checkpoint's config.json
      # (`model_init.resolve_model_config`) instead of config.model.
      model_from_checkpoint=False,
      # A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)
      # folded into the params above: evaluate it, or train on from it.
      peft_adapter=""))
  config.model = model.model_config(family, model_size)
  config.data = factory.get_data_config()
  config.ddpo = ml_collections.ConfigDict(ddpo.DDPOConfig().to_dict())
  config.train = ml_collections.ConfigDict(dict(
      global_batch_size=32, grad_accum_steps=1, num_epochs=7.0, num_steps=0,
      parallelism="pmap", mesh=dict(data=-1, fsdp=1, min_fsdp_size=2 ** 14), log_every=10,
      max_consecutive_nonfinite=10))
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=5e-7, schedule="cosine", warmup_fraction=0.1, warmup_steps=0,
      end_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, max_grad_norm=1.0,
      frozen=("vision_tower",)))
  config.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, max_to_keep=3,
                                                     async_save=True))
  config.precompute = ml_collections.ConfigDict(dict(batch_size=8))
  config.eval = ml_collections.ConfigDict(dict(split="train", batch_size=8, objective="ddpo"))
  config.hallucination = ml_collections.ConfigDict(dict(
      benchmarks=("pope", "objhal", "amber"), error_policy="raise", batch_size=8,
      # Short for yes/no answers, long enough for a full description.
      max_new_tokens=dict(pope=16, amber=16, objhal=512), prompt_multiple=32,
      short_answer_suffix="\nAnswer the question using a single word or phrase.",
      pope_dir="", pope_splits=("random", "popular", "adversarial"), coco_images="",
      coco_annotations="", objhal_questions="", objhal_num_images=300, seed=0,
      amber_dir="", amber_images="", repope_dir=""))
  config.sample = ml_collections.ConfigDict(dict(
      images="", questions="", prompts=objhal.PROMPTS, num_samples=2, temperature=0.7,
      top_p=0.9, seed=0, max_new_tokens=512, batch_size=8, prompt_multiple=32, store="",
      error_policy="raise"))
  config.label = ml_collections.ConfigDict(dict(
      store="", claims_file="", labeler="",
      # The rule extractor's object vocabulary: "" = Object HalBench's COCO list, or a
      # synonyms file of your own (one class a line: "name, synonym, ...").
      vocabulary="",
      # RLAIF-V asks each claim's question with this instruction and reads one token.
      question_suffix=" Please answer yes or no.", yes_words=("yes", "Yes"),
      no_words=("no", "No"), batch_size=8, prompt_multiple=32, error_policy="raise",
      # RLAIF-V's pairs: scores differing by >= 1, at most 2 per prompt, length balanced.
      min_gap=1.0, max_pairs=2, max_length_ratio=2.0))
  config.iterate = ml_collections.ConfigDict(dict(
      rounds=4,  # RLAIF-V's 4 on-policy rounds
      stop_after_label=False, ranking_pairs=False, evaluate=False,
      # Another labeler than the policy itself: "hf" / "checkpoint" and its location.
      labeler_params="", labeler_hf_checkpoint="", labeler_checkpoint_dir=""))
  config.export_hf = ml_collections.ConfigDict(dict(out_dir=""))
  return config


@dataclasses.dataclass(frozen=True)
class FamilyRecipe:
  """What the recipes in configs/ set differently per model family (recipe data only:
  the code that builds a run is the same for every family).

  Attributes:
    shape_size: the size config.model holds until the checkpoint's architecture is read
      (`init.model_from_checkpoint`), when a recipe pins none.
    lora: rank and alpha of the family's usual LoRA recipe.
    buckets: data bucket lengths: the image tokens + a prompt + the answers (both, in a
      shared-prefix preference row) must fit the largest.
  """

  shape_size: str
  lora: dict
  buckets: tuple[int, ...]


RECIPES = {
    # LLaVA-1.5's own LoRA recipe (scripts/v1_5/finetune_lora.sh, Liu et al. 2023):
    # rank 128, alpha 256 on every linear layer of the language model. 576 image tokens.
    "llava15": FamilyRecipe("7b", dict(rank=128, alpha=256.0),
                            tuple(factory.get_data_config().buckets)),
    # Gemma 3: the LoRA of TRL's Gemma 3 vision fine-tuning example (r 16, alpha 16, every
    # linear layer of the language model). 256 image tokens + ~20 prompt tokens + answers
    # of RLHF-V's 100-250 tokens (two in a shared-prefix row) fit 768-1280.
    "gemma3": FamilyRecipe("4b", dict(rank=16, alpha=16.0), (512, 768, 1024, 1280, 1536)),
}


def family_base(family: str, stage: str, size: str = "") -> ml_collections.ConfigDict:
  """What every recipe in configs/ shares: bf16 + remat, the family's HF checkpoint as
  init, FSDP over every device (f32 master params + Adam moments of 7B and up do not fit
  one 80 GB accelerator; the paper used DeepSpeed ZeRO on 8 A100s).

  Args:
    family: a `rlhfv_jax.model.families` name.
    stage: the run's stage.
    size: a named size pins the architecture; "" lets it follow the checkpoint
      (`init.model_from_checkpoint`; config.model holds `FamilyRecipe.shape_size`'s
      shapes until then).
  """
  recipe = RECIPES[family]
  config = base_config(stage, size or recipe.shape_size, family)
  config.model.update(dtype="bfloat16", remat=True)
  config.init.update(params="hf", model_from_checkpoint=not size)
  config.data.buckets = recipe.buckets
  config.train.parallelism = "fsdp"
  config.train.mesh.update(data=1, fsdp=-1)
  return config


def use_lora(config: ml_collections.ConfigDict, learning_rate: float) -> None:
  """Turns a recipe into its LoRA variant (the family's `FamilyRecipe.lora`, at
  `learning_rate`): only the adapters train and hold optimizer state, the base is
  stored in bfloat16 (adapters float32)."""
  config.model.lora.update(RECIPES[model.family_of(config.model).name].lora)
  config.model.param_dtype = "bfloat16"
  config.optim.learning_rate = learning_rate


def parse_arg(arg: str, config_file: str, **choices: Sequence[str]) -> ml_collections.ConfigDict:
  """The argument after ":" of a config file (`configs/x.py:13b,eval`), by its choices.

  Each comma-separated part is a value of exactly one choice, or "name=value"; a choice
  that no part names is "" (its default). The one parser of every config file's argument.

  Args:
    arg: the text after ":" (may be empty).
    config_file: the file's name, for the error message.
    **choices: choice name -> its allowed values, e.g. size=SIZES, variant=VARIANTS.

  Returns:
    A ConfigDict with one string field per choice.

  Raises:
    ValueError: a part is no choice's value, or names a choice twice.
  """
  parsed = {name: "" for name in choices}
  for part in (p.strip() for p in arg.split(",")):
    if not part:
      continue
    name, _, value = part.rpartition("=")
    names = [name] if name else [n for n, allowed in choices.items() if value in allowed]
    if len(names) != 1 or names[0] not in choices or value not in choices[names[0]]:
      raise ValueError(
          f"{config_file}:{arg}: {part!r} is not one of " + "; ".join(
              f"{n} in {tuple(v)}" for n, v in choices.items()))
    if parsed[names[0]]:
      raise ValueError(f"{config_file}:{arg}: {names[0]} given twice")
    parsed[names[0]] = value
  return ml_collections.ConfigDict(parsed)
