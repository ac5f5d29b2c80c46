"""The demo's configuration: defaults, the tiny model, the runner config of each run
(`stage_config`), and the validation of the whole (`validate`).
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any

import ml_collections

from rlhfv_jax import model as model_lib
from rlhfv_jax.data import factory
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, runs, vocabulary
from rlhfv_jax.demo.runs import CONTROL, SFT_VQA, SFT_WEB, Run
from rlhfv_jax.stages import config_validation, defaults


# The demo's studies (`driver`): the ablation table, the sweep, the AI-feedback rounds.
STUDIES = ("ablation", "sweep", "iterate")
# Study-specific sections: a workdir's other runs do not depend on them, so one workdir
# serves every study of the same settings (`driver`).
STUDY_FIELDS = ("study", "iterate", "labeler")


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
      # Each seed is a training run: the base models, the VQA stage, the feedback and
      # every arm (initialisation, data order, VQA questions, sampling).
      seeds=(0, 1, 2),
      # What every seed shares, as a lab shares its data and a released CLIP: the
      # training scenes, their web (and clean) captions and the pretrained vision tower.
      shared_seed=0,
      world=dict(image_size=48, min_objects=1, max_objects=4, num_train_scenes=6000,
                 num_feedback_scenes=512, num_eval_scenes=200, eval_seed=1000),
      corpus=dict(mismatch_rate=0.5, extra_object_weight=3.0, wrong_color_weight=1.0,
                  vqa_per_scene=2, vqa_stage_caption_share=0.3,
                  # What the VQA stage replays beside its VQA pairs: "web" (the base's
                  # own captions, mismatches included, as a recipe that mixes its earlier
                  # instruction data back in) or "none" (VQA pairs alone).
                  vqa_replay="web"),
      # The control base on clean captions, per seed (the rows that show the cause). Off
      # in the full demo (its budget); on in the sweep, whose cause study it is.
      control_base=False,
      # "ablation" (the table) or "sweep" (the studies: `sweep.run`).
      study="ablation",
      # Scenes for choosing settings (`sweep`'s VQA selection), disjoint from the
      # training and held-out scenes: nothing is tuned on the table's scenes.
      validation=dict(num_scenes=200, seed=2000),
      vocab_size=vocabulary.DEFAULT_VOCAB_SIZE,
      # Stage hyper-parameters: the tiny model trains from scratch, so the rates are far
      # above the paper's 5e-7 (which fine-tunes a 7B model).
      # The miniature's CLIP (see `perception`): learns to read all cells in ~200 steps.
      perception=dict(steps=300, batch_size=64, learning_rate=3e-3, num_val_scenes=256),
      # The pretrained tower stays frozen in every stage, as CLIP does in LLaVA-1.5.
      # One base model per seed: 800 steps keep three of them in the full demo's budget.
      sft_web=dict(steps=800, batch_size=32, learning_rate=3e-3, frozen=("vision_tower",)),
      # The VQA stage and the preference schedule are the sweep's choices on validation
      # scenes across 3 seeds (docs/results.md: VQA candidate 1, 2 of 3 seeds' picks;
      # schedule 3, 2 of 6 seed-and-arm picks, the gentler 0.5 epoch at 1e-4 taking 3).
      sft_vqa=dict(steps=100, batch_size=32, learning_rate=3e-4, frozen=("vision_tower",)),
      sampling=dict(temperature=0.7, top_p=0.95, max_new_tokens=80, batch_size=64),
      preference=dict(num_epochs=2.0, batch_size=16, learning_rate=3e-5,
                      frozen=("vision_tower",), explicit_spans=False,
                      # One shared-prefix row per pair (the prompt once, both sampled
                      # descriptions of <= 80 tokens): one length, one compilation.
                      bucket=208),
      # probe_temperature: the sweep's cause study also samples the base models'
      # descriptions at this temperature (greedy decoding shows a learnt mismatch only
      # where it beats the faithful continuation).
      eval=dict(max_new_tokens=80, batch_size=100, probe_temperature=1.0),
      # The `sweep` variant's studies (configs/demo.py docstring).
      sweep=_sweep_settings(),
      # The `iterate` study (`iteration`): on-policy rounds of AI feedback from each
      # seed's sft_vqa, labelled by that sft_vqa (a model trained on the VQA data, kept
      # fixed), beside the oracle's one round (the ablation's ddpo_mean). Each round
      # samples `num_samples` descriptions of the first `num_scenes` feedback scenes, so
      # a round labels as many descriptions as the oracle's round corrects from.
      iterate=dict(rounds=3, num_scenes=256, num_samples=2, label_batch_size=64),
      # The iterate study's labeler: the seed's web base fine-tuned on VQA pairs about
      # the training scenes alone (`vqa_per_scene` per scene, no captions replayed): the
      # yes/no questions the claims are asked as, presence ("Is there a red circle in
      # the image?", half the negatives its companions) and counts ("Are there three
      # objects in the image?"), drawn uniformly from `question_types`: presence 3 in 4
      # (counts are learnt from few; presence errors are what delete true sentences).
      # With every VQA type mixed in (1 in 6 a presence question) 300 steps left it at
      # chance (P(Yes) ~ 0.51 whatever the image; docs/results.md).
      labeler=dict(steps=800, batch_size=32, learning_rate=1e-3, vqa_per_scene=4,
                   question_types=("presence", "presence", "presence", "count_check"),
                   frozen=("vision_tower",)),
  ))
  return config


def _sweep_settings() -> dict[str, Any]:
  """``demo.sweep``: the feedback budgets and the VQA-stage candidates."""
  return dict(
      # Feedback budgets (percent of each seed's pairs) for the data-efficiency sweep.
      budgets=(25, 50, 100), arms=("dpo", "ddpo_mean"),
      # The preference stage's schedules tried on the validation scenes from every
      # seed's VQA stage, both arms; the rule that picks one is `sweep.select`. Fields
      # override demo.preference.num_epochs / learning_rate.
      schedules=(
          dict(num_epochs=2.0, learning_rate=1e-4),
          dict(num_epochs=1.0, learning_rate=1e-4),
          dict(num_epochs=0.5, learning_rate=1e-4),
          dict(num_epochs=2.0, learning_rate=3e-5),
      ),
      # VQA-stage settings tried on the validation scenes from every seed's web base;
      # the rule that picks one is `sweep.select`. Fields override demo.corpus.vqa_replay
      # / vqa_stage_caption_share and demo.sft_vqa.steps / learning_rate. VQA alone
      # ("none") is in the list to show why a recipe replays: the tiny model then answers
      # every prompt in a word or two. A candidate marked `diagnostic` is never chosen:
      # it tells where the stage's effect comes from, e.g.
      #   dict(replay="web", caption_share=0.3, steps=100, learning_rate=1e-3,
      #        vqa_pairs=False, diagnostic=True)       # the replayed captions alone
      #   dict(..., presence_questions=False, diagnostic=True)  # no presence questions
      # (docs/results.md reports both from one training run).
      vqa_candidates=(
          dict(replay="web", caption_share=0.3, steps=100, learning_rate=1e-3),
          dict(replay="web", caption_share=0.3, steps=100, learning_rate=3e-4),
          dict(replay="web", caption_share=0.5, steps=100, learning_rate=3e-4),
          dict(replay="none", steps=100, learning_rate=3e-4),
      ))


def demo_model_config() -> ml_collections.ConfigDict:
  """The tiny LLaVA of the demo (~0.25M parameters).

  48px images in 16px patches give one image token per grid cell (9 tokens). The
  vocabulary fields are placeholders: `stage_config` sets them from the tokenizer.
  """
  cfg = model_lib.llava_config("tiny", vocab_size=vocabulary.DEFAULT_VOCAB_SIZE + 1)
  cfg.vision.update(image_size=48, patch_size=16, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=4, feature_layer=-1)
  cfg.text.update(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
                  num_kv_heads=4, head_dim=16, max_position_embeddings=256)
  return cfg


def stage_config(config: Any, root: pathlib.Path, seed: int, run: Run,
                 tokenizer_path: pathlib.Path,
                 tokenizer: tokenizer_lib.Tokenizer | TokenIds) -> ml_collections.ConfigDict:
  """The runner config of one run (a base model, the VQA stage, the reference or an arm).

  Args:
    config: the demo config.
    root: the demo workdir.
    seed: the seed: the training run this run belongs to.
    run: the run.
    tokenizer_path: the demo tokenizer file.
    tokenizer: the loaded tokenizer (its ids fix the model's vocabulary fields).

  Returns:
    A validated-ready config for `rlhfv_jax.stages.runner` (stage, init, data, ...).
  """
  paths = runs.seed_paths(root, seed)
  out = _runner_config(config, run.runner_stage, seed, tokenizer_path, tokenizer)
  out.init.update(params="checkpoint", checkpoint_dir=str(_initial_checkpoint(root, paths, run)))
  settings = _training_settings(config, run)
  if run.runner_stage == "sft":
    # The base models read the captions every seed shares (built once).
    _set_sft_data(out, runs.shared_paths(root) if run.is_base else paths, run, settings)
  else:
    _set_preference_data(out, paths, run, settings)
  out.optim.update(learning_rate=settings.learning_rate, frozen=tuple(settings.frozen))
  if run.stage in runs.ARM_SPECS:
    _set_arm(out, config.ddpo, runs.ARM_SPECS[run.stage])
  return out


def _runner_config(config: Any, runner_stage: str, seed: int, tokenizer_path: pathlib.Path,
                   tokenizer: tokenizer_lib.Tokenizer | TokenIds) -> ml_collections.ConfigDict:
  """The recipe base of `runner_stage` with the demo's sections, seed and token ids."""
  out = defaults.base_config(runner_stage, "tiny")
  for section in ("model", "data", "ddpo", "train", "optim", "checkpoint", "precompute",
                  "eval"):
    out[section] = copy.deepcopy(config[section])
  out.seed = seed
  out.model.text.vocab_size = tokenizer.vocab_size
  out.model.image_token_id = tokenizer.image_token_id
  out.model.pad_token_id = tokenizer.pad_id
  out.model.bos_token_id = tokenizer.bos_id
  out.model.eos_token_id = tokenizer.eos_id
  out.data.update(tokenizer=str(tokenizer_path), seed=seed)
  return out


def _initial_checkpoint(root: pathlib.Path, paths: runs.SeedPaths, run: Run) -> pathlib.Path:
  """Where a run starts: a base model from the shared pretrained tower, the VQA stage
  from the seed's web base, the reference and every arm from the seed's VQA stage."""
  if run.is_base:
    return runs.shared_paths(root).perception
  if run.stage in (SFT_VQA, runs.LABELER):
    return paths.run(Run(SFT_WEB))
  return paths.run(Run(SFT_VQA))


def _training_settings(config: Any, run: Run) -> ml_collections.ConfigDict:
  """The demo section with a run's batch size, length and learning rate."""
  if run.is_base:
    return config.demo.sft_web
  if run.stage == SFT_VQA:
    return vqa_settings(config, run.candidate)
  if run.stage == runs.LABELER:
    return config.demo.labeler
  return preference_settings(config, run.candidate)


def iterate_config(config: Any, root: pathlib.Path, seed: int, tokenizer_path: pathlib.Path,
                   tokenizer: tokenizer_lib.Tokenizer | TokenIds) -> ml_collections.ConfigDict:
  """The runner config of a seed's AI-feedback rounds (`rlhfv_jax.stages.iterate`).

  Round 1 starts from the seed's sft_vqa; each round samples ``demo.iterate.num_samples``
  descriptions per scene of ``runs.ai_paths``' prompt set (the sampling settings of the
  oracle's feedback), the seed's labeler (``demo.labeler``) labels every round's claims
  (over the world's
  colour-shape objects, asked as its VQA data asks: the short-answer instruction on a
  line of its own, answered "Yes"/"No"), and
  DDPO trains with the oracle arm's settings (ddpo_mean, `preference_settings`).
  """
  demo, it = config.demo, config.demo.iterate
  paths, ai = runs.seed_paths(root, seed), runs.ai_paths(root, seed)
  out = _runner_config(config, "iterate", seed, tokenizer_path, tokenizer)
  out.init.update(params="checkpoint", checkpoint_dir=str(paths.run(Run(SFT_VQA))))
  settings = preference_settings(config, None)
  out.data.buckets = (settings.bucket,)
  out.train.update(global_batch_size=settings.batch_size, num_steps=0,
                   num_epochs=settings.num_epochs)
  out.optim.update(learning_rate=settings.learning_rate, frozen=tuple(settings.frozen))
  _set_arm(out, config.ddpo, runs.ARM_SPECS[runs.ORACLE_ARM])
  s = demo.sampling
  out.sample.update(images=str(ai.images), questions=str(ai.questions),
                    num_samples=it.num_samples, temperature=s.temperature, top_p=s.top_p,
                    seed=seed, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                    prompt_multiple=16)
  out.label.update(vocabulary=str(runs.claims_vocabulary_path(root)),
                   question_suffix="\n" + corpora.VQA_SUFFIX,
                   yes_words=("Yes",), no_words=("No",), batch_size=it.label_batch_size,
                   prompt_multiple=16,
                   # A description naming no object has no claim: a counted skip.
                   error_policy="skip")
  out.iterate.update(rounds=it.rounds, labeler_params="checkpoint",
                     labeler_checkpoint_dir=str(paths.run(Run(runs.LABELER))),
                     ranking_pairs=False, evaluate=False)
  return out


def _set_sft_data(out: ml_collections.ConfigDict, paths: runs.SeedPaths, run: Run,
                  settings: ml_collections.ConfigDict) -> None:
  source = {SFT_WEB: "web", CONTROL: "web_clean", runs.LABELER: runs.LABELER_DATA}.get(
      run.stage, runs.vqa_data_name(run.candidate))
  # One TFDS data dir per source: the SFT sources are all `jsonl_sft` datasets, and a
  # shared dir would serve the first one built to every stage.
  out.data.update(dataset="jsonl_sft", source_dir=str(paths.data(source)),
                  data_dir=str(paths.tfds / source))
  out.train.update(global_batch_size=settings.batch_size, num_steps=settings.steps)


def _set_preference_data(out: ml_collections.ConfigDict, paths: runs.SeedPaths, run: Run,
                         settings: ml_collections.ConfigDict) -> None:
  feedback = paths.tfds / "feedback"
  budget = run.budget
  out.data.update(dataset="jsonl_preference",
                  source_dir=str(paths.feedback_export / runs.preference_data_name(budget)),
                  data_dir=str(feedback if budget is None else paths.tfds / f"feedback%{budget}"))
  if budget is not None:
    # A budget's pairs are a subset of the full feedback: the full set's reference
    # cache holds their log-probs (looked up by id).
    out.data.ref_cache_dir = str(factory.default_cache_dir(
        feedback, "jsonl_preference", out.data.split, out.data.ref_cache_tag))
  out.data.buckets = (settings.bucket,)
  out.train.update(global_batch_size=settings.batch_size, num_steps=0,
                   num_epochs=settings.num_epochs)


def _set_arm(out: ml_collections.ConfigDict, ddpo: Any, spec: runs.ArmSpec) -> None:
  out.ddpo.update(spec.ddpo_overrides(ddpo))
  out.data.augmentation = spec.augmentation
  # The cache holds log-probs of un-augmented images; a cropped policy input needs
  # the reference forward on the same crop.
  out.data.use_ref_cache = spec.augmentation == "none"


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


def with_schedule(config: Any, schedule: int | None) -> ml_collections.ConfigDict:
  """A copy of the config whose preference stage has the epochs and learning rate of
  ``demo.sweep.schedules[schedule]`` (the config itself for None)."""
  if schedule is None:
    return config
  chosen = copy.deepcopy(config)
  chosen.demo.preference.update(dict(config.demo.sweep.schedules[schedule]))
  return chosen


def preference_settings(config: Any, schedule: int | None) -> ml_collections.ConfigDict:
  """The preference stage's training settings (``demo.preference``, a schedule's if
  given)."""
  return with_schedule(config, schedule).demo.preference


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
  if demo.study not in STUDIES:
    problems.append(f"demo.study={demo.study!r}; expected one of {STUDIES}")
  if demo.study == "iterate":
    problems += _iterate_problems(demo)
  if not set(demo.sweep.arms) <= set(runs.ARMS):
    problems.append(f"demo.sweep.arms={tuple(demo.sweep.arms)} must be arms of {runs.ARMS}")
  if any(not 0 < b <= 100 for b in demo.sweep.budgets):
    problems.append(f"demo.sweep.budgets={tuple(demo.sweep.budgets)} must be percentages "
                    "in (0, 100]")
  for k, schedule in enumerate(demo.sweep.schedules):
    unknown = set(dict(schedule)) - {"num_epochs", "learning_rate"}
    if unknown:
      problems.append(f"demo.sweep.schedules[{k}] sets {sorted(unknown)}; a schedule sets "
                      "num_epochs and learning_rate")
  if demo.study == "sweep" and not demo.control_base:
    problems.append("demo.study='sweep' needs demo.control_base=True: the cause study "
                    "compares each seed's web base with its control")
  if problems:
    raise ValueError("invalid demo config:\n  - " + "\n  - ".join(problems))
  if demo.study == "iterate":
    from rlhfv_jax.stages import iterate  # the stage validates each step of a round
    try:
      rounds = iterate_config(config, pathlib.Path("/nonexistent"), demo.seeds[0],
                              pathlib.Path("tokenizer.model"), TokenIds.of_model(config.model))
      rounds.label.vocabulary = ""  # the study writes it before the first round
      iterate.validate(rounds)
    except ValueError as e:
      raise ValueError(f"demo study 'iterate': {e}") from e
  checked = tuple(Run(stage) for stage in runs.STAGES)
  if demo.study == "sweep":
    checked += (runs.vqa_candidate_runs(config) + runs.schedule_runs(config)
                + runs.budget_runs(config))
  for run in checked:
    stage = stage_config(config, pathlib.Path("/nonexistent"), demo.seeds[0], run,
                         pathlib.Path("tokenizer.model"), TokenIds.of_model(config.model))
    stage.data.source_dir = ""  # validation must not build datasets
    try:
      config_validation.validate_config(stage)
    except ValueError as e:
      raise ValueError(f"demo stage {run.name!r}: {e}") from e


def _iterate_problems(demo: Any) -> list[str]:
  """The iterate study's own fields (they matter only to it)."""
  it, w, out = demo.iterate, demo.world, []
  if it.rounds < 1:
    out.append(f"demo.iterate.rounds={it.rounds} must be >= 1")
  if not 1 <= it.num_scenes <= w.num_feedback_scenes:
    out.append(f"demo.iterate.num_scenes={it.num_scenes} must lie in [1, "
               f"demo.world.num_feedback_scenes={w.num_feedback_scenes}]: the AI rounds ask "
               "about the seed's feedback scenes")
  if it.num_samples < 2:
    out.append(f"demo.iterate.num_samples={it.num_samples} must be >= 2: ranking pairs "
               "compare answers to one prompt")
  return out


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
