"""One seed's chain: a training run from the shared inputs to the preference runs, the
same steps for both studies.

  sft_web     the base model on the shared web captions, from the shared tower (runner
              "sft"); with ``demo.control_base`` also sft_web_clean on the clean ones
  data        VQA pairs about the training scenes + replayed captions (``jsonl_sft``)
  sft_vqa     continue the seed's web base on them                    (runner "sft")
  feedback    sample descriptions of new scenes from sft_vqa into an annotation store;
              the oracle labeler corrects their hallucinated segments; the store's
              export is the preference data (`datasets.collect_feedback`)
  budgets     with feedback budgets (the sweep): nested subsets of those pairs
  reference   sft_vqa's per-token log-probs of the feedback (runner "precompute_ref")
  <run>       each preference run from sft_vqa                       (runner "ddpo"):
              the ablation's arms, or the sweep's schedules and budgets

`run_seed` runs it all; the sweep calls the parts (`train_bases`, `prepare_feedback`,
`train_preference`) with its choices made in between.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from absl import logging

from rlhfv_jax.demo import datasets, world
from rlhfv_jax.demo.context import Context
from rlhfv_jax.demo.runs import CONTROL, REFERENCE, SFT_VQA, SFT_WEB, Run, seed_paths
from rlhfv_jax.stages import runner


@dataclasses.dataclass(frozen=True)
class SeedResult:
  """What one seed's chain measured and wrote.

  Attributes:
    metrics: run name -> held-out metrics (or validation metrics under a run's
      ``validation_name``), for the base models, sft_vqa and every preference run.
    corpus: the VQA stage's data statistics (`datasets.write_vqa_data`).
    feedback: the feedback statistics (`datasets.collect_feedback`).
    budgets: budget -> pairs in its subset (`datasets.write_budget_subsets`); empty
      without budgets.
  """

  metrics: dict[str, dict[str, float]]
  corpus: dict[str, int]
  feedback: dict[str, Any]
  budgets: dict[int, int]


def base_runs(config: Any) -> tuple[Run, ...]:
  """The seed's base models: the web base, and its control with ``demo.control_base``."""
  return (Run(SFT_WEB),) + ((Run(CONTROL),) if config.demo.control_base else ())


def num_stages(config: Any, preference_runs: Sequence[Run], budgets: Sequence[int] = ()
               ) -> int:
  """The progress stages `run_seed` counts."""
  return len(base_runs(config)) + 4 + bool(budgets) + len(preference_runs)


def run_seed(ctx: Context, seed: int, preference_runs: Sequence[Run],
             budgets: Sequence[int] = ()) -> SeedResult:
  """Runs one seed's chain (module docstring) with ``ctx.config``.

  Args:
    ctx: the study's context.
    seed: the training run: initialisation and data order of every model, the VQA
      questions, feedback scenes, sampling.
    preference_runs: the runs trained from sft_vqa on the feedback, in order.
    budgets: feedback budgets (percent) whose subsets the runs read; none: the full set.

  Returns:
    The seed's metrics and statistics.
  """
  metrics = train_bases(ctx, seed)
  result = prepare_feedback(ctx, seed, budgets)
  metrics.update(result.metrics)
  metrics.update(train_preference(ctx, seed, preference_runs))
  return dataclasses.replace(result, metrics=metrics)


def train_bases(ctx: Context, seed: int, sampled: bool = False
                ) -> dict[str, dict[str, float]]:
  """Trains and evaluates the seed's base models (`base_runs`), with `sampled` also on
  sampled descriptions (`Context.train_and_eval`); returns their metrics."""
  paths, metrics = seed_paths(ctx.root, seed), {}
  for run in base_runs(ctx.config):
    ctx.progress.stage(f"seed {seed}", run.name, lambda run=run: ctx.train_and_eval(
        seed, paths, run, f"seed {seed}", metrics, sampled=sampled))
  return metrics


def feedback_scenes(ctx: Context, seed: int) -> list[world.Scene]:
  """The seed's feedback scenes (new scenes, disjoint from the held-out and validation
  ones), whose sampled descriptions become the preference data."""
  w = ctx.config.demo.world
  return world.sample_scenes(20_000 + seed, w.num_feedback_scenes, f"feedback{seed}",
                             w.min_objects, w.max_objects,
                             exclude=list(ctx.eval_scenes) + list(ctx.val_scenes))


def prepare_feedback(ctx: Context, seed: int, budgets: Sequence[int] = ()) -> SeedResult:
  """From the seed's web base to the preference data and its reference log-probs: VQA
  data, sft_vqa (evaluated), feedback, budget subsets, reference."""
  config = ctx.config
  paths = seed_paths(ctx.root, seed)
  label = f"seed {seed}"
  scenes = feedback_scenes(ctx, seed)
  metrics: dict[str, dict[str, float]] = {}
  corpus = ctx.progress.stage(label, "data", lambda: datasets.write_vqa_data(
      config, paths, ctx.train_scenes, ctx.train_images, seed))
  sft_params, sample = ctx.progress.stage(label, SFT_VQA, lambda: ctx.train_and_eval(
      seed, paths, Run(SFT_VQA), label, metrics))
  feedback = ctx.progress.stage(label, "feedback", lambda: datasets.collect_feedback(
      config, paths, sft_params, sample, scenes, seed))
  logging.info("demo: %s feedback: %s", label, json.dumps(feedback))
  subsets = {}
  if budgets:
    subsets = ctx.progress.stage(label, "budgets", lambda: datasets.write_budget_subsets(
        paths, budgets, seed))
  reference = Run(REFERENCE)
  ctx.progress.stage(label, reference.name, lambda: runner.run(
      ctx.stage_config(seed, reference), str(paths.run(reference))))
  return SeedResult(metrics, corpus, feedback, subsets)


def train_preference(ctx: Context, seed: int, preference_runs: Sequence[Run],
                     on_validation: bool = False) -> dict[str, dict[str, float]]:
  """Trains each preference run from the seed's sft_vqa (after `prepare_feedback`) and
  evaluates it on the held-out scenes, or with `on_validation` the validation scenes."""
  paths, metrics = seed_paths(ctx.root, seed), {}
  for run in preference_runs:
    ctx.progress.stage(f"seed {seed}", run.name, lambda run=run: ctx.train_and_eval(
        seed, paths, run, f"seed {seed}", metrics, on_validation))
  return metrics
