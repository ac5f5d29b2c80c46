"""The demo: the paper's experiment in miniature, one command, on a CPU.

`run(config, workdir)` (what ``python -m rlhfv_jax.main --config configs/demo.py``
runs) first prepares what every seed shares, as a lab shares its data and a released
CLIP (seeded by ``demo.shared_seed``):

  data        render the training scenes; write "web" captions, a share of them
              mismatched with their image, as a ``jsonl_sft`` dataset
  perception  pretrain the vision tower to read every grid cell (`perception`: the
              miniature's CLIP), saved as the base models' initial checkpoint
  data_clean  with ``demo.control_base``: the same scenes with every caption faithful

then runs the study ``demo.study``. Each seed in ``demo.seeds`` is one training run of
the whole chain (`chain`): the seed drives every model's initialisation and data order,
the VQA questions, sampling and feedback. Per seed:

  sft_web     train projector + language model on the web captions, the pretrained
              tower frozen as LLaVA-1.5 keeps CLIP frozen           (runner "sft")
  sft_web_clean  with ``demo.control_base``: the control, trained the same way on the
              clean captions (the rows that show the cause)
  ...         VQA data, sft_vqa, feedback from the oracle labeler through the
              annotation store, the reference log-probs, then the preference runs.

The ablation (`ablation`, the default) trains one preference run per arm:

  dpo        γ = 1 (plain DPO, length-normalised)
  ddpo_mean  γ = config.ddpo.gamma, weighted mean (the paper)
  ddpo_sum   γ = config.ddpo.gamma, weighted sum (released scripts)
  ddpo_crop  ddpo with config.ddpo.normalize + random-crop augmentation

The sweep (`sweep`, configs/demo.py:sweep) runs the studies instead: the cause (each
seed's web base against its control, greedy and sampled), the VQA-stage candidates and
the preference schedules scored on validation scenes from every seed with one of each
chosen across seeds (`sweep.select`), and per seed DPO and DDPO trained on 25 / 50 /
100% of the feedback pairs.

The iterate study (`iteration`, configs/demo.py:iterate) asks whether AI feedback works:
per seed, beside sft_vqa and the oracle's one round (ddpo_mean), on-policy rounds of
`rlhfv_jax.stages.iterate` labelled by a model of the seed tuned on VQA pairs alone
(never the world's truth), and
DDPO on round 1's ranking pairs alone; the labeler's verdicts are checked against the
truth for the report only. Its runs shared with the ablation are the same runs: in an
ablation's workdir it trains only what is new.

Every trained model is evaluated on the same held-out scenes (disjoint from all
training scenes): greedy descriptions -> CHAIR-style metrics (`scoring`). The reports
compare models by paired differences with two-level 95% bootstrap intervals, over the
seeds (training runs) and the scenes within each (`stats`).

Every training stage is the project's own `rlhfv_jax.stages.runner` on the project's
data path (TFDS array_record built from the JSONL files, grain loader, chat
template, segment masks), so the demo exercises exactly what a real run does.

Workdir layout::

  demo_config.json         the config this workdir belongs to (a re-run resumes; a
                           different config is refused)
  tokenizer.model          the demo tokenizer (`rlhfv_jax.demo.vocabulary`)
  shared/data/web/         train.jsonl + images/ (the web captions; web_clean/: the
                           control's)
  shared/perception/       checkpoints/ (random LLaVA + pretrained tower), perception.json
  shared/tfds/             the captions' built datasets
  seed_<s>/sft_web/        runner workdir: config.json, checkpoints/, metrics.jsonl,
                           tensorboard/ (and sft_web_clean/)
  seed_<s>/data/vqa/                train.jsonl + images/
  seed_<s>/annotations.sqlite       the annotation store (items, the oracle's annotations)
  seed_<s>/feedback_images/         its image root
  seed_<s>/feedback_export/         its export: preference/ (the DDPO data), rlhfv_parquet/, ...
  seed_<s>/feedback_samples.jsonl   every sampled description with the oracle's verdict
  seed_<s>/tfds/           built datasets (+ the reference log-prob cache)
  seed_<s>/<run>/          runner workdirs of sft_vqa, reference and the arms (a run's
                           directory is its `runs.Run.name`: "dpo", "sft_vqa#1", "dpo#2",
                           "dpo%25")
  seed_<s>/eval/<model>.jsonl  every evaluation description with its scores
  seed_<s>/ai_feedback/     the iterate study: questions.jsonl + images/ (the prompt set),
                           rounds/ (the iterate stage's workdir: round_<k>/, its report),
                           ranking/ (export/, reference/, ddpo/ of the ranking-pairs run)
  claims_vocabulary.txt    the world's objects, the label stage's claim vocabulary
  results.json             all metrics, feedback statistics and stage timings
  ablation.md / ablation.csv / ablation_per_seed.csv / ablation_differences.csv /
  ablation.png             (the sweep: sweep.md / sweep.csv / sweep.png; the iterate
                           study: iterate_results.json, iterate.md / .csv / .png)
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import jax
from absl import logging

from rlhfv_jax import model as model_lib
from rlhfv_jax.data import factory
from rlhfv_jax.demo import ablation, datasets, iteration, perception, sweep, world
from rlhfv_jax.demo.context import Context, make_context
from rlhfv_jax.demo.runs import SFT_WEB, Run, SeedPaths, shared_paths
from rlhfv_jax.demo.settings import STUDY_FIELDS, validate
from rlhfv_jax.stages import model_init
from rlhfv_jax.train import checkpointing


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the whole demo (see the module docstring) and writes the ablation report, or
  with ``demo.study == "sweep"`` the studies (`sweep.run`), or with "iterate" the AI
  feedback study (`iteration.run`).

  Args:
    config: the demo config (`configs/demo.py`).
    workdir: output directory (created; a re-run with the same config resumes).

  Returns:
    The contents of results.json.
  """
  validate(config)
  root = pathlib.Path(workdir)
  _check_workdir(config, root)
  _enable_compilation_cache(root)
  study = {"ablation": ablation, "sweep": sweep, "iterate": iteration}[config.demo.study]
  ctx = make_context(config, root, num_shared_stages(config) + study.num_stages(config))
  shared = run_shared(ctx)
  return study.run(ctx, shared)


def _check_workdir(config: Any, workdir: pathlib.Path) -> None:
  """A workdir belongs to one config: a re-run resumes it, another config is refused.

  The studies' own fields (`settings.STUDY_FIELDS`) are not part of it: every run a
  study shares with another (the bases, sft_vqa, the feedback, the arms) depends only
  on the rest, so e.g. the iterate study in a finished ablation's workdir trains only
  what is new (its runs find the ablation's finished and resume them).
  """
  stamp = workdir / "demo_config.json"
  shared = copy.deepcopy(config)
  with shared.unlocked():
    for field in STUDY_FIELDS:
      del shared.demo[field]
  text = shared.to_json_best_effort(indent=2, sort_keys=True)
  if stamp.exists() and stamp.read_text() != text:
    raise ValueError(f"{workdir} holds a demo run with a different config ({stamp}); use a "
                     "fresh --workdir (re-running with the same config resumes)")
  workdir.mkdir(parents=True, exist_ok=True)
  stamp.write_text(text)


def _enable_compilation_cache(workdir: pathlib.Path) -> None:
  """Seeds 2.. compile the same programs as seed 1: cache them on disk."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def num_shared_stages(config: Any) -> int:
  """The progress stages of `run_shared`."""
  return 2 + config.demo.control_base


def run_shared(ctx: Context) -> dict[str, Any]:
  """What every seed starts from: the web captions (and the clean ones with
  ``demo.control_base``) and the pretrained vision tower.

  Returns:
    "corpus" (data statistics) and "perception" (the tower's validation accuracy).
  """
  paths = shared_paths(ctx.root)
  out: dict[str, Any] = {}
  label = f"shared (seed {ctx.config.demo.shared_seed})"
  out["corpus"] = ctx.progress.stage(label, "data", lambda: datasets.write_web_data(
      ctx.config, paths, ctx.train_scenes, ctx.train_images))
  if ctx.config.demo.control_base:
    out["corpus"].update(ctx.progress.stage(label, "data_clean", lambda: datasets.write_web_data(
        ctx.config, paths, ctx.train_scenes, ctx.train_images, clean=True)))
  out["perception"] = ctx.progress.stage(label, "perception",
                                         lambda: pretrain_perception(ctx, paths))
  logging.info("demo: %s, perception: %s", label, json.dumps(out["perception"]))
  return out


def pretrain_perception(ctx: Context, paths: SeedPaths) -> dict[str, Any]:
  """The base models' initial checkpoint: a random LLaVA holding the pretrained tower.

  Returns the tower's accuracy per attribute on validation scenes (disjoint from the
  held-out evaluation scenes). A re-run finds the checkpoint and its summary and resumes.
  """
  run_dir = paths.perception
  summary_file = run_dir / "perception.json"
  ckpt = checkpointing.Checkpointer(model_init.checkpoint_dir(run_dir), save_every_steps=1,
                                    async_save=False)
  try:
    if ckpt.latest_step() is not None and summary_file.is_file():
      return json.loads(summary_file.read_text())
    demo, seed = ctx.config.demo, int(ctx.config.demo.shared_seed)
    p, w = demo.perception, demo.world
    stage = ctx.stage_config(seed, Run(SFT_WEB))
    preprocessor = factory.make_preprocessor(stage, factory.ModelFacts.from_config(stage),
                                             augment=False)
    val_scenes = world.sample_scenes(30_000 + seed, p.num_val_scenes, "perception-val",
                                     w.min_objects, w.max_objects, exclude=ctx.eval_scenes)
    result = perception.pretrain_vision_tower(
        stage.model, preprocessor, ctx.train_scenes, ctx.train_images, val_scenes,
        datasets.render_all(val_scenes, w.image_size), steps=p.steps, batch_size=p.batch_size,
        learning_rate=p.learning_rate, seed=seed)
    worst = min(result.accuracy.values())
    if worst < 0.95:
      logging.warning("demo: the pretrained vision tower reads only %.3f of validation cells "
                      "right (%s); raise demo.perception.steps", worst, result.accuracy)
    params = dict(model_lib.init_params(stage.model, jax.random.PRNGKey(seed)),
                  vision_tower=result.vision_tower)
    ckpt.save(0, {"params": params})
    summary = {"val_accuracy": result.accuracy, "final_loss": result.final_loss,
               "val_scenes": len(val_scenes)}
    summary_file.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
  finally:
    ckpt.close()
