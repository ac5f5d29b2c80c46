"""The demo's configuration: defaults, the tiny model, the arms, where every run lives,
and the runner config of each stage (`stage_config`), validated as a whole (`validate`).
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any, Callable

import ml_collections

from rlhfv_jax import model as model_lib
from rlhfv_jax.data import factory
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import tokenizer as demo_tokenizer
from rlhfv_jax.stages import config_validation, defaults

SFT_STAGES = ("sft_web", "sft_vqa")
ARMS = ("dpo", "ddpo_mean", "ddpo_sum", "ddpo_crop")
# The control base: trained like sft_web on the same scenes, with every caption faithful.
CONTROL = "sft_web_clean"
BASE_MODELS = ("sft_web", CONTROL)  # trained once, shared by every seed
MODELS = SFT_STAGES + ARMS


def default_config() -> ml_collections.ConfigDict:
  """The full demo's config (`configs/demo.py` starts from it)."""
  config = defaults.base_config("sft", "tiny")
  config.stage = "demo"
  config.model = demo_model_config()
  config.data.update(
      system_message="A chat about an image.",  # short prompts keep sequences short
      # The SFT stages' lengths: VQA pairs fit 64 tokens, 97% of the captions 112 (the
      # rest lose their tail); the preference stages use demo.preference.bucket.
      buckets=(64, 112), num_threads=2)
  config.ddpo.update(gamma=5.0, beta=0.5, normalize=True, segment_mode="paper")
  config.optim.update(warmup_fraction=0.05, end_lr_fraction=0.1, max_grad_norm=1.0,
                      weight_decay=0.0)
  config.train.update(parallelism="pmap", log_every=100)
  config.checkpoint.update(every_steps=1_000_000, max_to_keep=1, async_save=False)
  config.precompute.batch_size = 32
  config.demo = ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),
      base_seed=0,  # the web-pretrained base model is trained once and shared by all seeds
      world=dict(image_size=48, min_objects=1, max_objects=4, num_train_scenes=6000,
                 num_feedback_scenes=512, num_eval_scenes=200, eval_seed=1000),
      corpus=dict(mismatch_rate=0.5, extra_object_weight=3.0, wrong_color_weight=1.0,
                  vqa_per_scene=2, vqa_stage_caption_share=0.3,
                  # What the VQA stage replays beside its VQA pairs: "web" (the base's
                  # own captions, mismatches included, as a recipe that mixes its earlier
                  # instruction data back in) or "none" (VQA pairs alone).
                  vqa_replay="web"),
      # The control base on clean captions (the row that shows the cause).
      control_base=True,
      # "ablation" (the table) or "sweep" (the studies: `pipeline.run_sweep`).
      study="ablation",
      # Scenes for choosing settings (`sweep`'s VQA selection), disjoint from the
      # training and held-out scenes: nothing is tuned on the table's scenes.
      validation=dict(num_scenes=200, seed=2000),
      vocab_size=demo_tokenizer.DEFAULT_VOCAB_SIZE,
      # Stage hyper-parameters: the tiny model trains from scratch, so the rates are far
      # above the paper's 5e-7 (which fine-tunes a 7B model).
      # The miniature's CLIP (see `perception`): learns to read all cells in ~200 steps.
      perception=dict(steps=300, batch_size=64, learning_rate=3e-3, num_val_scenes=256),
      # The pretrained tower stays frozen in every stage, as CLIP does in LLaVA-1.5.
      sft_web=dict(steps=1500, batch_size=32, learning_rate=3e-3, frozen=("vision_tower",)),
      sft_vqa=dict(steps=100, batch_size=32, learning_rate=1e-3, frozen=("vision_tower",)),
      sampling=dict(temperature=0.7, top_p=0.95, max_new_tokens=80, batch_size=64),
      preference=dict(num_epochs=2.0, batch_size=16, learning_rate=1e-4,
                      frozen=("vision_tower",), explicit_spans=False,
                      # One shared-prefix row per pair (the prompt once, both sampled
                      # descriptions of <= 80 tokens): one length, one compilation.
                      bucket=208),
      eval=dict(max_new_tokens=80, batch_size=100),
      # The `sweep` variant's studies (configs/demo.py docstring).
      sweep=dict(
          # Feedback budgets (percent of each seed's pairs) for the data-efficiency sweep.
          budgets=(25, 50, 100), arms=("dpo", "ddpo_mean"),
          # VQA-stage settings tried on the validation scenes; the rule that picks one
          # is `pipeline.select_vqa`. Fields override demo.corpus.vqa_replay /
          # vqa_stage_caption_share and demo.sft_vqa.steps / learning_rate.
          # VQA alone ("none") is in the list to show why a recipe replays: the tiny
          # model then answers every prompt in a word or two. Candidates marked
          # `diagnostic` are never chosen; they tell where the stage's effect comes from:
          # the replayed captions alone (no VQA pairs), and the VQA pairs without the
          # presence questions (which name absent objects in the prompt).
          vqa_candidates=(
              dict(replay="web", caption_share=0.3, steps=100, learning_rate=1e-3),
              dict(replay="web", caption_share=0.3, steps=100, learning_rate=3e-4),
              dict(replay="web", caption_share=0.5, steps=100, learning_rate=3e-4),
              dict(replay="none", steps=100, learning_rate=3e-4),
              dict(replay="web", caption_share=0.3, steps=100, learning_rate=1e-3,
                   vqa_pairs=False, diagnostic=True),
              dict(replay="web", caption_share=0.3, steps=100, learning_rate=1e-3,
                   presence_questions=False, diagnostic=True),
          )),
  ))
  return config


def demo_model_config() -> ml_collections.ConfigDict:
  """The tiny LLaVA of the demo (~0.25M parameters).

  48px images in 16px patches give one image token per grid cell (9 tokens). The
  vocabulary fields are placeholders: `stage_config` sets them from the tokenizer.
  """
  cfg = model_lib.llava_config("tiny", vocab_size=demo_tokenizer.DEFAULT_VOCAB_SIZE + 1)
  cfg.vision.update(image_size=48, patch_size=16, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=4, feature_layer=-1)
  cfg.text.update(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                  num_kv_heads=4, head_dim=16, max_position_embeddings=256)
  return cfg


@dataclasses.dataclass(frozen=True)
class ArmSpec:
  """A preference-training arm of the ablation."""

  label: str
  ddpo_overrides: Callable[[Any], dict]
  augmentation: str = "none"


ARM_SPECS: dict[str, ArmSpec] = {
    "dpo": ArmSpec("+ DPO (γ=1)", lambda d: dict(gamma=1.0, normalize=True)),
    "ddpo_mean": ArmSpec("+ DDPO (γ={gamma:g}, weighted mean)",
                         lambda d: dict(gamma=d.gamma, normalize=True)),
    "ddpo_sum": ArmSpec("+ DDPO (γ={gamma:g}, weighted sum)",
                        lambda d: dict(gamma=d.gamma, normalize=False)),
    "ddpo_crop": ArmSpec("+ DDPO (γ={gamma:g}) with random crop",
                         lambda d: dict(gamma=d.gamma, normalize=d.normalize),
                         augmentation="random_crop_ablation"),
}
SFT_LABELS = {"sft_web": "SFT on web captions", CONTROL: "SFT on clean captions (control)",
              "sft_vqa": "+ VQA SFT"}


def models(config: Any) -> tuple[str, ...]:
  """The table's rows, in order: the control base if ``demo.control_base``, then
  `MODELS`."""
  return ((CONTROL,) if config.demo.control_base else ()) + MODELS


def model_labels(config: Any) -> dict[str, str]:
  """Row labels of the ablation table."""
  labels = dict(SFT_LABELS)
  labels.update({arm: spec.label.format(gamma=config.ddpo.gamma)
                 for arm, spec in ARM_SPECS.items()})
  for k, candidate in enumerate(config.demo.sweep.vqa_candidates):
    labels[f"sft_vqa#{k}"] = "+ VQA SFT, " + ", ".join(f"{key}={value}" for key, value
                                                       in sorted(dict(candidate).items()))
  for arm in config.demo.sweep.arms:
    for budget in config.demo.sweep.budgets:
      labels[f"{arm}%{budget}"] = f"{labels[arm]}, {budget}% of the pairs"
  return labels


@dataclasses.dataclass(frozen=True)
class SeedPaths:
  """Where one seed's data and runs live."""

  root: pathlib.Path

  def data(self, name: str) -> pathlib.Path:
    return self.root / "data" / name

  @property
  def feedback_samples(self) -> pathlib.Path:
    """Every sampled description with the oracle's verdict (outside the dataset dir:
    each ``*.jsonl`` there is a split)."""
    return self.root / "feedback_samples.jsonl"

  @property
  def annotations(self) -> pathlib.Path:
    """The annotation store the sampled descriptions and the oracle's verdicts go to."""
    return self.root / "annotations.sqlite"

  @property
  def feedback_images(self) -> pathlib.Path:
    """The image root of the annotation store."""
    return self.root / "feedback_images"

  @property
  def feedback_export(self) -> pathlib.Path:
    """The store's export (`rlhfv_jax.annotate.export`); DDPO reads its preference/."""
    return self.root / "feedback_export"

  @property
  def tfds(self) -> pathlib.Path:
    return self.root / "tfds"

  def run(self, name: str) -> pathlib.Path:
    return self.root / name

  def eval(self, name: str) -> pathlib.Path:
    return self.root / "eval" / f"{name}.jsonl"


def base_paths(root: pathlib.Path) -> SeedPaths:
  """The shared base model's directories (web data, sft_web)."""
  return SeedPaths(root / "base")


def seed_paths(root: pathlib.Path, seed: int) -> SeedPaths:
  """One seed's directories (VQA data, feedback, sft_vqa, reference, arms)."""
  return SeedPaths(root / f"seed_{seed}")


def stage_config(config: Any, root: pathlib.Path, seed: int, name: str,
                 tokenizer_path: pathlib.Path,
                 tokenizer: tokenizer_lib.Tokenizer | TokenIds) -> ml_collections.ConfigDict:
  """The runner config of one stage ("sft_web", "sft_vqa", "reference" or an arm).

  Args:
    config: the demo config.
    root: the demo workdir.
    seed: the seed (ignored for "sft_web", which uses ``demo.base_seed``).
    name: the stage.
    tokenizer_path: the demo tokenizer file.
    tokenizer: the loaded tokenizer (its ids fix the model's vocabulary fields).

  Returns:
    A validated-ready config for `rlhfv_jax.stages.runner` (stage, init, data, ...).
  """
  demo = config.demo
  arm, budget = split_budget(name)
  stage_name, candidate = split_candidate(name)
  kind = {"sft_web": "sft", CONTROL: "sft", "sft_vqa": "sft",
          "reference": "precompute_ref"}.get(stage_name if budget is None else arm, "ddpo")
  out = defaults.base_config(kind, "tiny")
  for section in ("model", "data", "ddpo", "train", "optim", "checkpoint", "precompute",
                  "eval"):
    out[section] = copy.deepcopy(config[section])
  if name in BASE_MODELS:
    seed = int(demo.base_seed)
    paths = base_paths(root)
  else:
    paths = seed_paths(root, seed)
  out.seed = seed
  out.model.text.vocab_size = tokenizer.vocab_size
  out.model.image_token_id = tokenizer.image_token_id
  out.model.pad_token_id = tokenizer.pad_id
  out.model.bos_token_id = tokenizer.bos_id
  out.model.eos_token_id = tokenizer.eos_id
  out.data.update(tokenizer=str(tokenizer_path), seed=seed)
  if name in BASE_MODELS:
    out.init.update(params="checkpoint", checkpoint_dir=str(paths.run("perception")))
    settings = demo.sft_web
  elif stage_name == "sft_vqa":
    out.init.update(params="checkpoint",
                    checkpoint_dir=str(base_paths(root).run("sft_web")))
    settings = vqa_settings(config, candidate)
  else:  # the reference and every arm start from the VQA-tuned model
    out.init.update(params="checkpoint", checkpoint_dir=str(paths.run("sft_vqa")))
    settings = demo.preference
  if kind == "sft":
    source = {"sft_web": "web", CONTROL: "web_clean"}.get(name, vqa_data_name(candidate))
    # One TFDS data dir per source: the SFT sources are all `jsonl_sft` datasets, and a
    # shared dir would serve the first one built to every stage.
    out.data.update(dataset="jsonl_sft", source_dir=str(paths.data(source)),
                    data_dir=str(paths.tfds / source))
    out.train.update(global_batch_size=settings.batch_size, num_steps=settings.steps)
  else:
    feedback = paths.tfds / "feedback"
    out.data.update(dataset="jsonl_preference",
                    source_dir=str(paths.feedback_export / preference_data_name(budget)),
                    data_dir=str(feedback if budget is None else paths.tfds / f"feedback%{budget}"))
    if budget is not None:
      # A budget's pairs are a subset of the full feedback: the full set's reference
      # cache holds their log-probs (looked up by id).
      out.data.ref_cache_dir = str(factory.default_cache_dir(
          feedback, "jsonl_preference", out.data.split, out.data.ref_cache_tag))
    out.data.buckets = (settings.bucket,)
    out.train.update(global_batch_size=settings.batch_size, num_steps=0,
                     num_epochs=settings.num_epochs)
  out.optim.update(learning_rate=settings.learning_rate, frozen=tuple(settings.frozen))
  if arm in ARM_SPECS:
    spec = ARM_SPECS[arm]
    out.ddpo.update(spec.ddpo_overrides(config.ddpo))
    out.data.augmentation = spec.augmentation
    # The cache holds log-probs of un-augmented images; a cropped policy input needs
    # the reference forward on the same crop.
    out.data.use_ref_cache = spec.augmentation == "none"
  return out


def split_budget(name: str) -> tuple[str, int | None]:
  """"dpo%25" -> ("dpo", 25): an arm trained on 25% of the feedback pairs (`sweep`)."""
  arm, sep, budget = name.partition("%")
  return (arm, int(budget)) if sep else (name, None)


def split_candidate(name: str) -> tuple[str, int | None]:
  """"sft_vqa#1" -> ("sft_vqa", 1): VQA-stage candidate 1 of ``demo.sweep``."""
  stage, sep, k = name.partition("#")
  return (stage, int(k)) if sep else (name, None)


# A VQA candidate's fields -> the demo config fields they set (``demo.sweep``).
_CANDIDATE_FIELDS = {"replay": ("corpus", "vqa_replay"),
                     "caption_share": ("corpus", "vqa_stage_caption_share"),
                     "steps": ("sft_vqa", "steps"),
                     "learning_rate": ("sft_vqa", "learning_rate")}
# Fields of diagnostic candidates only: the stage's data without some of its parts.
_DIAGNOSTIC_FIELDS = {"vqa_pairs": True, "presence_questions": True}


def with_vqa_candidate(config: Any, candidate: int | None) -> ml_collections.ConfigDict:
  """A copy of the config whose VQA stage has the settings of
  ``demo.sweep.vqa_candidates[candidate]`` (the config itself for None)."""
  if candidate is None:
    return config
  chosen = copy.deepcopy(config)
  for key, value in dict(config.demo.sweep.vqa_candidates[candidate]).items():
    if key in _CANDIDATE_FIELDS:
      section, field = _CANDIDATE_FIELDS[key]
      chosen.demo[section][field] = value
  return chosen


def vqa_settings(config: Any, candidate: int | None) -> ml_collections.ConfigDict:
  """The VQA stage's training settings (``demo.sft_vqa``, a candidate's if given)."""
  return with_vqa_candidate(config, candidate).demo.sft_vqa


def vqa_data_settings(config: Any, candidate: int | None) -> dict[str, Any]:
  """The VQA stage's data settings (replay, caption share; for diagnostics, whether it
  has VQA pairs and presence questions), a candidate's if given."""
  corpus = with_vqa_candidate(config, candidate).demo.corpus
  out = dict(_DIAGNOSTIC_FIELDS, replay=corpus.vqa_replay,
             caption_share=corpus.vqa_stage_caption_share)
  if candidate is not None:
    overrides = config.demo.sweep.vqa_candidates[candidate]
    out.update({k: overrides[k] for k in _DIAGNOSTIC_FIELDS if k in overrides})
  return out


def vqa_data_name(candidate: int | None) -> str:
  return "vqa" if candidate is None else f"vqa#{candidate}"


def preference_data_name(budget: int | None) -> str:
  """The export's preference dataset, or a budget's subset of it (written by `sweep`)."""
  return "preference" if budget is None else f"preference%{budget}"


def validate(config: Any) -> None:
  """Checks the demo section and, through the trainer's own validation, every stage."""
  demo = config.demo
  problems = []
  if not demo.seeds:
    problems.append("demo.seeds is empty")
  if len(set(demo.seeds)) != len(demo.seeds):
    problems.append(f"demo.seeds={tuple(demo.seeds)} repeats a seed")
  w = demo.world
  if w.image_size != config.model.vision.image_size:
    problems.append(f"demo.world.image_size={w.image_size} must equal "
                    f"model.vision.image_size={config.model.vision.image_size}")
  for field in ("num_train_scenes", "num_feedback_scenes", "num_eval_scenes"):
    if w[field] < 1:
      problems.append(f"demo.world.{field}={w[field]} must be >= 1")
  if demo.preference.batch_size > w.num_feedback_scenes:
    problems.append(f"demo.preference.batch_size={demo.preference.batch_size} exceeds "
                    f"demo.world.num_feedback_scenes={w.num_feedback_scenes}")
  if demo.study not in ("ablation", "sweep"):
    problems.append(f"demo.study={demo.study!r}; expected 'ablation' or 'sweep'")
  if not set(demo.sweep.arms) <= set(ARMS):
    problems.append(f"demo.sweep.arms={tuple(demo.sweep.arms)} must be arms of {ARMS}")
  if any(not 0 < b <= 100 for b in demo.sweep.budgets):
    problems.append(f"demo.sweep.budgets={tuple(demo.sweep.budgets)} must be percentages "
                    "in (0, 100]")
  if problems:
    raise ValueError("invalid demo config:\n  - " + "\n  - ".join(problems))
  names = ("sft_web", CONTROL, "sft_vqa", "reference") + ARMS
  if demo.study == "sweep":
    names += tuple(f"sft_vqa#{k}" for k in range(len(demo.sweep.vqa_candidates)))
    names += tuple(f"{a}%{b}" for a in demo.sweep.arms for b in demo.sweep.budgets)
  for name in names:
    stage = stage_config(config, pathlib.Path("/nonexistent"), demo.seeds[0], name,
                         pathlib.Path("tokenizer.model"), TokenIds.of_model(config.model))
    stage.data.source_dir = ""  # validation must not build datasets
    try:
      config_validation.validate_config(stage)
    except ValueError as e:
      raise ValueError(f"demo stage {name!r}: {e}") from e


@dataclasses.dataclass(frozen=True)
class TokenIds:
  """The tokenizer facts a stage config needs (a loaded tokenizer has them too)."""

  vocab_size: int
  image_token_id: int
  pad_id: int
  bos_id: int
  eos_id: int

  @classmethod
  def of_model(cls, model_config: Any) -> "TokenIds":
    """The ids a model config holds (to validate stage configs before the tokenizer)."""
    return cls(model_config.text.vocab_size, model_config.image_token_id,
               model_config.pad_token_id, model_config.bos_token_id,
               model_config.eos_token_id)


