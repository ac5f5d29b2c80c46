"""One seed's chain from the base model, the same for both studies:

  data        VQA pairs about the training scenes + replayed captions (``jsonl_sft``)
  sft_vqa     continue the base model on them                        (runner "sft")
  feedback    sample descriptions of new scenes from sft_vqa into an annotation store;
              the oracle labeler corrects their hallucinated segments; the store's
              export is the preference data (`datasets.collect_feedback`)
  budgets     with feedback budgets (the sweep): nested subsets of those pairs
  reference   sft_vqa's per-token log-probs of the feedback (runner "precompute_ref")
  <run>       each preference run from sft_vqa                       (runner "ddpo"):
              the ablation's arms, or the sweep's arms on each budget
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from absl import logging

from rlhfv_jax.demo import datasets, world
from rlhfv_jax.demo.context import Context
from rlhfv_jax.demo.runs import REFERENCE, SFT_VQA, Run, seed_paths
from rlhfv_jax.stages import runner


@dataclasses.dataclass(frozen=True)
class SeedResult:
  """What one seed's chain measured and wrote.

  Attributes:
    metrics: run name -> held-out metrics, for sft_vqa and every preference run.
    corpus: the VQA stage's data statistics (`datasets.write_vqa_data`).
    feedback: the feedback statistics (`datasets.collect_feedback`).
    budgets: budget -> pairs in its subset (`datasets.write_budget_subsets`); empty
      without budgets.
  """

  metrics: dict[str, dict[str, float]]
  corpus: dict[str, int]
  feedback: dict[str, Any]
  budgets: dict[int, int]


def num_stages(preference_runs: Sequence[Run], budgets: Sequence[int] = ()) -> int:
  """The progress stages `run_seed` counts."""
  return 4 + bool(budgets) + len(preference_runs)


def run_seed(ctx: Context, seed: int, preference_runs: Sequence[Run],
             budgets: Sequence[int] = ()) -> SeedResult:
  """Runs one seed's chain (module docstring) with ``ctx.config``.

  Args:
    ctx: the study's context.
    seed: drives the VQA questions, data order, feedback scenes, sampling and the
      preference runs' data order.
    preference_runs: the runs trained from sft_vqa on the feedback, in order.
    budgets: feedback budgets (percent) whose subsets the runs read; none: the full set.

  Returns:
    The seed's metrics and statistics.
  """
  config, w = ctx.config, ctx.config.demo.world
  paths = seed_paths(ctx.root, seed)
  label = f"seed {seed}"
  feedback_scenes = world.sample_scenes(20_000 + seed, w.num_feedback_scenes,
                                        f"feedback{seed}", w.min_objects, w.max_objects,
                                        exclude=list(ctx.eval_scenes) + list(ctx.val_scenes))
  metrics: dict[str, dict[str, float]] = {}
  corpus = ctx.progress.stage(label, "data", lambda: datasets.write_vqa_data(
      config, paths, ctx.train_scenes, ctx.train_images, seed))
  sft_params, sample = ctx.progress.stage(label, SFT_VQA, lambda: ctx.train_and_eval(
      seed, paths, Run(SFT_VQA), label, metrics))
  feedback = ctx.progress.stage(label, "feedback", lambda: datasets.collect_feedback(
      config, paths, sft_params, sample, feedback_scenes, seed))
  logging.info("demo: %s feedback: %s", label, json.dumps(feedback))
  subsets = {}
  if budgets:
    subsets = ctx.progress.stage(label, "budgets", lambda: datasets.write_budget_subsets(
        paths, budgets, seed))
  reference = Run(REFERENCE)
  ctx.progress.stage(label, reference.name, lambda: runner.run(
      ctx.stage_config(seed, reference), str(paths.run(reference))))
  for run in preference_runs:
    ctx.progress.stage(label, run.name, lambda run=run: ctx.train_and_eval(
        seed, paths, run, label, metrics))
  return SeedResult(metrics, corpus, feedback, subsets)
