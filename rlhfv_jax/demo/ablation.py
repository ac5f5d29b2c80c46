"""The ablation (``demo.study = "ablation"``, the full demo): per seed, the chain with one
run per arm, then the table of every model with paired differences.

Writes results.json and ablation.md / ablation.csv / ablation_per_seed.csv /
ablation_differences.csv / ablation.png. `count_tables` and `paired_differences` are the
one rule both studies compare models by.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Sequence

import numpy as np
from absl import logging

from rlhfv_jax.demo import chain, report, scoring, stats
from rlhfv_jax.demo.context import Context
from rlhfv_jax.demo.runs import (ARMS, CONTROL, SFT_VQA, SFT_WEB, Run, model_labels, models,
                                 seed_paths)

ARM_RUNS = tuple(Run(arm) for arm in ARMS)

# The comparisons of the ablation, (A, B): A − B, each a claim of the paper.
COMPARISONS = (
    (SFT_WEB, CONTROL),          # the cause: mismatched captions teach hallucination
    (SFT_VQA, SFT_WEB),          # the mitigation: VQA SFT lowers it
    ("dpo", SFT_VQA),            # preference training on corrections lowers it
    ("ddpo_mean", SFT_VQA),
    ("ddpo_mean", "dpo"),        # dense (γ > 1) against plain DPO
    ("ddpo_sum", "ddpo_mean"),   # the released scripts' sum against the paper's mean
    ("ddpo_crop", "ddpo_mean"),  # random cropping (the ablation) against none
)


def num_stages(config: Any) -> int:
  """The progress stages after the shared ones."""
  return len(config.demo.seeds) * chain.num_stages(config, ARM_RUNS)


def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
  """Every seed's chain from the shared inputs (`shared`: `driver.run_shared`), then the
  report.

  Returns:
    The contents of results.json.
  """
  config, root = ctx.config, ctx.root
  seeds = [int(s) for s in config.demo.seeds]
  per_seed = {seed: chain.run_seed(ctx, seed, ARM_RUNS) for seed in seeds}
  results = {model: {seed: per_seed[seed].metrics[model] for seed in seeds}
             for model in models(config)}
  labels = model_labels(config)
  summary = {
      "seeds": seeds,
      "shared_seed": int(config.demo.shared_seed),
      "models": {m: {"label": labels[m],
                     "per_seed": {str(s): v for s, v in results[m].items()}}
                 for m in models(config)},
      "feedback": {str(s): per_seed[s].feedback for s in seeds},
      "corpus": dict(shared["corpus"], **{f"seed_{s}": per_seed[s].corpus for s in seeds}),
      "perception": shared["perception"],
      "eval_scenes": len(ctx.eval_scenes),
      "timings": ctx.progress.timings,
      "total_seconds": round(time.monotonic() - ctx.progress.start, 1),
  }
  (root / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_report(config, root, results, labels, seeds, summary)
  logging.info("demo finished in %.0fs; ablation table:\n%s", summary["total_seconds"],
               (root / "ablation.md").read_text())
  return summary


def count_tables(root: pathlib.Path, model: str, seeds: Sequence[int]) -> list[np.ndarray]:
  """Per seed, the per-scene counts (`stats.count_table`) of a model's descriptions
  (`model`: a run's name, ``validation_name`` or ``sampled_name``), read back from its
  evaluation log."""
  fields = {f.name for f in dataclasses.fields(scoring.ResponseScore)}
  tables = []
  for seed in seeds:
    with seed_paths(root, seed).eval(model).open(encoding="utf-8") as f:
      scores = [scoring.ResponseScore(**{k: v for k, v in json.loads(line).items()
                                         if k in fields}) for line in f if line.strip()]
    tables.append(stats.count_table(scores))
  return tables


def paired_differences(tables: dict[str, list[np.ndarray]],
                       comparisons: Sequence[tuple[str, str]]
                       ) -> dict[tuple[str, str, str], stats.Difference]:
  """`stats.paired_difference` (two levels: seeds, then scenes) of every (A, B) and
  `report.DIFFERENCE_METRICS`, over the per-seed tables of `count_tables`."""
  return {(a, b, metric): stats.paired_difference(tables[a], tables[b], metric)
          for a, b in comparisons for metric in report.DIFFERENCE_METRICS}


def write_report(config: Any, root: pathlib.Path, results: report.Results,
                 labels: dict[str, str], seeds: Sequence[int], summary: dict) -> None:
  """ablation.md / ablation.csv / ablation_per_seed.csv / ablation_differences.csv /
  ablation.png."""
  shown = models(config)
  table = report.markdown_table(results, shown, labels)
  tables = {m: count_tables(root, m, seeds) for m in shown}
  comparisons = [(a, b) for a, b in COMPARISONS if a in shown and b in shown]
  differences = paired_differences(tables, comparisons)
  feedback = summary["feedback"]
  corrected = [feedback[str(s)]["corrected"] for s in seeds]
  sampled = [feedback[str(s)]["samples"] for s in seeds]
  text = "\n".join([
      f"# RLHF-V demo: ablation over {len(seeds)} seed(s) {list(seeds)}", "",
      f"Greedy descriptions of {summary['eval_scenes']} held-out scenes; mean ± sample std "
      "over seeds. Each seed is a training run of every model, the base models included "
      "(from the shared captions and vision tower). CHAIR_s: share of descriptions with "
      "a hallucinated object; CHAIR_i: share of object mentions that are hallucinated; "
      "recall: share of ground-truth objects mentioned; attribute errors: wrong "
      "size/position among mentions of present objects.", "", table, "",
      "Paired differences A − B, mean over seeds, with two-level 95% bootstrap intervals "
      "(the seeds resampled, then the held-out scenes within each; "
      "`rlhfv_jax/demo/stats.py`). * : the interval excludes 0; (every seed): each seed's "
      "own difference has that sign; both together: **established**.", "",
      report.differences_table(differences, comparisons, labels), "",
      f"Feedback per seed: {corrected} corrected of {sampled} sampled descriptions "
      f"(temperature {config.demo.sampling.temperature}); DDPO γ={config.ddpo.gamma:g}, "
      f"β={config.ddpo.beta:g}, segment mode {config.ddpo.segment_mode!r}.",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  write_files(root / "ablation", text, results, shown, labels, tables, differences,
              f"RLHF-V demo, {len(seeds)} seed(s), {summary['eval_scenes']} held-out scenes; "
              "95% bootstrap intervals")


def write_files(stem: pathlib.Path, text: str, results: report.Results, shown: Sequence[str],
                labels: dict[str, str], tables: dict[str, list[np.ndarray]],
                differences: dict[tuple[str, str, str], stats.Difference], title: str) -> None:
  """A study's report files: <stem>.md (`text`), .csv, _per_seed.csv, _differences.csv
  and .png (each model's metrics with its own bootstrap interval over `tables`)."""
  intervals = {}
  for m in shown:
    for metric in report.DIFFERENCE_METRICS:
      value = stats.interval(tables[m], metric)
      intervals[(m, metric)] = (value.low, value.high)
  stem.with_suffix(".md").write_text(text)
  report.write_csv(stem.with_suffix(".csv"), results, shown, labels)
  report.write_per_seed_csv(stem.parent / f"{stem.name}_per_seed.csv", results, shown)
  report.write_differences_csv(stem.parent / f"{stem.name}_differences.csv", differences)
  report.plot(stem.with_suffix(".png"), results, shown, labels, title, intervals=intervals)
