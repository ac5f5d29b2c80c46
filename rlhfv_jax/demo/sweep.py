"""The studies (``demo.study = "sweep"``, configs/demo.py:sweep): the control base beside
the web base (the cause), the VQA-stage candidates of ``demo.sweep`` scored on
validation scenes (never the held-out ones) with one chosen by `select_vqa`, and per
seed the chain with DPO and DDPO on 25 / 50 / 100% of the feedback pairs.

Writes results.json, sweep.md, sweep.csv, sweep_differences.csv and sweep.png.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Sequence

import numpy as np
from absl import logging

from rlhfv_jax import sampler
from rlhfv_jax.demo import chain, datasets, report, runs, stats
from rlhfv_jax.demo.ablation import count_tables, paired_differences
from rlhfv_jax.demo.context import Context
from rlhfv_jax.demo.runs import BASE_MODELS, CONTROL, SFT_VQA, SFT_WEB, Run
from rlhfv_jax.demo.settings import with_vqa_candidate
from rlhfv_jax.stages import runner


def num_stages(config: Any) -> int:
  """The progress stages after the base models."""
  per_seed = chain.num_stages(runs.budget_runs(config), config.demo.sweep.budgets)
  return (1 + 2 * len(config.demo.sweep.vqa_candidates)
          + len(config.demo.seeds) * per_seed)


def run(ctx: Context, base: dict[str, Any]) -> dict[str, Any]:
  """The studies (module docstring) from the base models (`base`: `driver.run_base`).

  Returns:
    The contents of results.json.
  """
  config, root = ctx.config, ctx.root
  sweep = config.demo.sweep
  seeds = [int(s) for s in config.demo.seeds]
  labels = runs.model_labels(config)
  val, chosen = choose_vqa_stage(ctx, seeds[0])
  # Per seed: the chosen VQA stage, feedback, and each arm on each feedback budget.
  seed_ctx = dataclasses.replace(ctx, config=with_vqa_candidate(config, chosen))
  per_seed: dict[int, dict[str, Any]] = {}
  for seed in seeds:
    result = chain.run_seed(seed_ctx, seed, runs.budget_runs(config), sweep.budgets)
    per_seed[seed] = {"metrics": result.metrics, "feedback": result.feedback,
                      "budgets": result.budgets}
  summary = {
      "seeds": seeds, "base_seed": int(config.demo.base_seed),
      "base": base["metrics"], "validation": val, "vqa_chosen": chosen,
      "vqa_candidates": [dict(c) for c in sweep.vqa_candidates],
      "per_seed": {str(s): v for s, v in per_seed.items()},
      "eval_scenes": len(ctx.eval_scenes), "val_scenes": len(ctx.val_scenes),
      "timings": ctx.progress.timings,
      "total_seconds": round(time.monotonic() - ctx.progress.start, 1),
  }
  (root / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_sweep_report(config, root, summary, labels)
  logging.info("demo sweep finished in %.0fs:\n%s", summary["total_seconds"],
               (root / "sweep.md").read_text())
  return summary


def choose_vqa_stage(ctx: Context, seed: int) -> tuple[dict[str, dict[str, float]], int]:
  """Trains every VQA-stage candidate from the web base (with `seed`'s data) and scores
  it and the web base on the validation scenes.

  Returns:
    (validation metrics by ``validation_name``, the candidate `select_vqa` chooses).
  """
  config, root = ctx.config, ctx.root
  paths = runs.seed_paths(root, seed)
  val: dict[str, dict[str, float]] = {}
  web = Run(SFT_WEB)
  web_stage = ctx.stage_config(seed, web)
  # The web base is trained already: the runner resumes it and returns its params.
  ctx.progress.stage("validation", web.name, lambda: ctx.evaluate(
      paths, web, runner.run(web_stage, str(runs.base_paths(root).run(web))),
      sampler.Sampler.from_config(web_stage), "validation", val, on_validation=True))
  candidates = runs.vqa_candidate_runs(config)
  for run in candidates:
    k = run.candidate
    ctx.progress.stage("validation", f"data#{k}", lambda k=k: datasets.write_vqa_data(
        config, paths, ctx.train_scenes, ctx.train_images, seed, candidate=k))
    ctx.progress.stage("validation", run.name, lambda run=run: ctx.train_and_eval(
        seed, paths, run, "validation", val, on_validation=True))
  settings = config.demo.sweep.vqa_candidates
  chosen = select_vqa({run.candidate: val[run.validation_name] for run in candidates
                       if not dict(settings[run.candidate]).get("diagnostic", False)},
                      val[web.validation_name])
  logging.info("demo sweep: VQA candidate %d chosen on validation scenes: %s", chosen,
               dict(settings[chosen]))
  return val, chosen


def select_vqa(candidates: dict[int, dict[str, float]], base: dict[str, float]) -> int:
  """The VQA-stage candidate to use, from validation-scene metrics: the lowest CHAIR_i
  (then CHAIR_s) among those that keep object recall >= 0.9x and length >= 0.8x the web
  base's (a stage that makes the model say less is not a mitigation); if none does, the
  one with the highest recall. Pass only eligible (non-diagnostic) candidates."""
  keeps = [k for k, m in candidates.items()
           if m["recall"] >= 0.9 * base["recall"] and m["avg_words"] >= 0.8 * base["avg_words"]]
  if not keeps:
    return max(candidates, key=lambda k: candidates[k]["recall"])
  return min(keeps, key=lambda k: (candidates[k]["chair_i"], candidates[k]["chair_s"]))


def write_sweep_report(config: Any, root: pathlib.Path, summary: dict,
                       labels: dict[str, str]) -> None:
  """sweep.md (the control base, the VQA selection, the budget sweep with paired
  intervals), sweep.csv, sweep_differences.csv and sweep.png."""
  sweep, seeds = config.demo.sweep, summary["seeds"]
  bases = [m for m in BASE_MODELS if m in summary["base"]]
  cause_pairs = [(SFT_WEB, CONTROL)] if CONTROL in bases else []
  cause = paired_differences({m: count_tables(root, m, seeds) for m in bases}, cause_pairs)
  base_rows = {m: {"base": summary["base"][m]} for m in bases}
  val_rows = {name: {"validation": values} for name, values in summary["validation"].items()}
  val_names, val_labels = _validation_rows(config, labels, summary["vqa_chosen"])
  ordered = [SFT_VQA] + [run.name for run in runs.budget_runs(config)]
  measured = {name: {s: summary["per_seed"][str(s)]["metrics"][name] for s in seeds}
              for name in ordered}
  labels = {**labels, SFT_VQA: labels[SFT_VQA] + " (the chosen candidate)"}
  tables = {name: count_tables(root, name, seeds) for name in ordered}
  dense, plain = sweep.arms[-1], sweep.arms[0]
  comparisons = [(Run(dense, budget=b).name, Run(plain, budget=b).name)
                 for b in sweep.budgets]
  comparisons += [(run.name, SFT_VQA) for run in runs.budget_runs(config)]
  differences = paired_differences(tables, comparisons)
  pairs = {s: summary["per_seed"][str(s)]["budgets"] for s in seeds}
  text = "\n".join([
      f"# RLHF-V demo studies over {len(seeds)} seed(s) {seeds}", "",
      f"## The cause: web captions against clean ones ({summary['eval_scenes']} held-out "
      "scenes)", "",
      report.markdown_table(base_rows, bases, labels), "",
      report.differences_table(cause, cause_pairs, labels) if cause_pairs else
      "(no control base: demo.control_base is off)", "",
      f"## The VQA stage, chosen on {summary['val_scenes']} validation scenes", "",
      "Rule (`sweep.select_vqa`): the lowest CHAIR_i among candidates keeping recall "
      ">= 0.9x and length >= 0.8x the web base's; diagnostic candidates are never chosen.",
      "",
      report.markdown_table(val_rows, val_names, val_labels), "",
      "## Feedback budget: DPO and DDPO on a share of each seed's pairs", "",
      f"Pairs per seed and budget: {pairs}. Held-out scenes; mean ± std over seeds.", "",
      report.markdown_table(measured, ordered, labels), "",
      "Paired differences with 95% bootstrap intervals (as in ablation.md):", "",
      report.differences_table(differences, comparisons, labels), "",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  (root / "sweep.md").write_text(text)
  report.write_csv(root / "sweep.csv", measured, ordered, labels)
  report.write_differences_csv(root / "sweep_differences.csv", {**differences, **cause})
  plot_budgets(root / "sweep.png", sweep, tables, seeds)


def _validation_rows(config: Any, labels: dict[str, str], chosen: int
                     ) -> tuple[list[str], dict[str, str]]:
  """The validation table's rows (the web base, then every candidate) and labels."""
  web, candidates = Run(SFT_WEB), runs.vqa_candidate_runs(config)
  names = [web.validation_name] + [run.validation_name for run in candidates]
  row_labels = {web.validation_name: labels[web.name]}
  row_labels.update({run.validation_name: labels[run.name] + (
      " (chosen)" if run.candidate == chosen else "") for run in candidates})
  return names, row_labels


def plot_budgets(path: pathlib.Path, sweep: Any, tables: dict[str, list[np.ndarray]],
                 seeds: Sequence[int]) -> None:
  """CHAIR_i and object recall against the feedback budget, one line per arm, 95%
  bootstrap intervals as error bars, the VQA-SFT start as a dashed line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
  for ax, metric, title in zip(axes, ("chair_i", "recall"),
                               ("CHAIR_i (lower is better)", "object recall (higher is better)")):
    start = stats.interval(tables[SFT_VQA], metric)
    ax.axhline(start.estimate, color="gray", linestyle="--", label="VQA-SFT start")
    for k, arm in enumerate(sweep.arms):
      values = [stats.interval(tables[Run(arm, budget=b).name], metric)
                for b in sweep.budgets]
      x = np.asarray(sweep.budgets, float) * (1 + 0.03 * (k - 0.5))  # dodge the bars
      y = np.array([v.estimate for v in values])
      err = np.array([[v.estimate - v.low for v in values],
                      [v.high - v.estimate for v in values]]).clip(min=0)
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sweep.budgets), [f"{b}%" for b in sweep.budgets])
    ax.set_xlabel("feedback pairs used")
    ax.set_title(title, fontsize=10)
  axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
  fig.suptitle(f"Feedback budget, {len(seeds)} seed(s), 95% bootstrap intervals", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
