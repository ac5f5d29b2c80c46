"""The studies (``demo.study = "sweep"``, configs/demo.py:sweep), every one over the seeds
of ``demo.seeds``, each seed a training run from the shared inputs:

  the cause      each seed's web base against its control on clean captions, on greedy
                 and on sampled held-out descriptions (``demo.eval.probe_temperature``),
                 with the share of hallucinations that name a co-occurring object;
  the VQA stage  the candidates of ``demo.sweep.vqa_candidates`` trained from every
                 seed's web base and scored on validation scenes (never the held-out
                 ones); `select` picks one on the seeds' mean, and each seed's own pick
                 is counted ("wins");
  the schedule   the preference schedules of ``demo.sweep.schedules`` (epochs, learning
                 rate), both arms, from every seed's chosen VQA stage, on validation
                 scenes; chosen the same way;
  the budget     per seed, DPO and DDPO with the chosen schedule on 25 / 50 / 100% of
                 the feedback pairs, on the held-out scenes.

Writes results.json, sweep.md, sweep.csv, sweep_differences.csv and sweep.png.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Sequence

import numpy as np
from absl import logging

from rlhfv_jax import sampler
from rlhfv_jax.demo import chain, datasets, report, runs, stats
from rlhfv_jax.demo.ablation import count_tables, paired_differences
from rlhfv_jax.demo.context import Context
from rlhfv_jax.demo.runs import CONTROL, SFT_VQA, SFT_WEB, Run, seed_paths
from rlhfv_jax.demo.settings import with_schedule, with_vqa_candidate
from rlhfv_jax.stages import runner

# The metrics `select` reads, averaged over seeds (and arms) for the pooled choice.
_SELECTION_METRICS = ("chair_i", "chair_s", "recall", "avg_words")


def num_stages(config: Any) -> int:
  """The progress stages after the shared ones."""
  sweep = config.demo.sweep
  first = len(chain.base_runs(config)) + 1 + 2 * len(sweep.vqa_candidates)
  second = 4 + bool(sweep.budgets) + len(runs.schedule_runs(config))
  return len(config.demo.seeds) * (first + second + len(runs.budget_runs(config)))


@dataclasses.dataclass(frozen=True)
class Choice:
  """A setting chosen on validation scenes across seeds.

  Attributes:
    chosen: the candidate `select` picks on the metrics averaged over the seeds.
    wins: candidate -> how many seeds' (or seed-and-arm) own picks it is.
    picks: "<seed>" or "<seed>/<arm>" -> that pick.
  """

  chosen: int
  wins: dict[int, int]
  picks: dict[str, int]

  def to_json(self) -> dict[str, Any]:
    return {"chosen": self.chosen, "wins": {str(k): v for k, v in self.wins.items()},
            "picks": self.picks}


def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
  """The studies (module docstring) from the shared inputs (`driver.run_shared`).

  Returns:
    The contents of results.json.
  """
  config, root = ctx.config, ctx.root
  sweep = config.demo.sweep
  seeds = [int(s) for s in config.demo.seeds]
  metrics: dict[int, dict[str, dict[str, float]]] = {}
  for seed in seeds:  # the cause and the VQA candidates, from each seed's bases
    metrics[seed] = chain.train_bases(ctx, seed, sampled=True)
    metrics[seed].update(score_vqa_candidates(ctx, seed))
  eligible = [k for k, c in enumerate(sweep.vqa_candidates)
              if not dict(c).get("diagnostic", False)]
  vqa = choose({str(s): ({k: metrics[s][Run(SFT_VQA, candidate=k).validation_name]
                          for k in eligible}, metrics[s][Run(SFT_WEB).validation_name])
                for s in seeds})
  logging.info("demo sweep: VQA candidate %d chosen on validation scenes (wins %s): %s",
               vqa.chosen, vqa.wins, dict(sweep.vqa_candidates[vqa.chosen]))
  vqa_ctx = dataclasses.replace(ctx, config=with_vqa_candidate(config, vqa.chosen))
  start = Run(SFT_VQA, candidate=vqa.chosen).validation_name  # the same run's settings
  per_seed: dict[int, chain.SeedResult] = {}
  for seed in seeds:  # the chosen VQA stage, feedback, the schedules on validation
    per_seed[seed] = chain.prepare_feedback(vqa_ctx, seed, sweep.budgets)
    metrics[seed].update(per_seed[seed].metrics)
    metrics[seed].update(chain.train_preference(vqa_ctx, seed, runs.schedule_runs(config),
                                                on_validation=True))
  schedules = range(len(sweep.schedules))
  schedule = choose({f"{s}/{arm}": ({k: metrics[s][Run(arm, candidate=k).validation_name]
                                     for k in schedules}, metrics[s][start])
                     for s in seeds for arm in sweep.arms})
  logging.info("demo sweep: preference schedule %d chosen on validation scenes (wins %s): %s",
               schedule.chosen, schedule.wins, dict(sweep.schedules[schedule.chosen]))
  final_ctx = dataclasses.replace(
      vqa_ctx, config=with_schedule(vqa_ctx.config, schedule.chosen))
  for seed in seeds:  # the feedback budgets with the chosen schedule, held-out scenes
    metrics[seed].update(chain.train_preference(final_ctx, seed, runs.budget_runs(config)))
  summary = {
      "seeds": seeds, "shared_seed": int(config.demo.shared_seed),
      "metrics": {str(s): m for s, m in metrics.items()},
      "vqa": vqa.to_json(), "schedule": schedule.to_json(),
      "vqa_candidates": [dict(c) for c in sweep.vqa_candidates],
      "schedules": [dict(c) for c in sweep.schedules],
      "feedback": {str(s): r.feedback for s, r in per_seed.items()},
      "budgets": {str(s): r.budgets for s, r in per_seed.items()},
      "perception": shared["perception"],
      "eval_scenes": len(ctx.eval_scenes), "val_scenes": len(ctx.val_scenes),
      "timings": ctx.progress.timings,
      "total_seconds": round(time.monotonic() - ctx.progress.start, 1),
  }
  (root / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_sweep_report(config, root, summary)
  logging.info("demo sweep finished in %.0fs:\n%s", summary["total_seconds"],
               (root / "sweep.md").read_text())
  return summary


def score_vqa_candidates(ctx: Context, seed: int) -> dict[str, dict[str, float]]:
  """Scores the seed's web base and every VQA-stage candidate trained from it (with the
  seed's data) on the validation scenes; returns metrics by ``validation_name``."""
  config, paths = ctx.config, seed_paths(ctx.root, seed)
  label = f"seed {seed}, validation"
  val: dict[str, dict[str, float]] = {}
  web = Run(SFT_WEB)
  web_stage = ctx.stage_config(seed, web)
  # The web base is trained already: the runner resumes it and returns its params.
  ctx.progress.stage(label, web.name, lambda: ctx.evaluate(
      paths, web, runner.run(web_stage, str(paths.run(web))),
      sampler.Sampler.from_config(web_stage), label, val, on_validation=True))
  for run in runs.vqa_candidate_runs(config):
    k = run.candidate
    ctx.progress.stage(label, f"data#{k}", lambda k=k: datasets.write_vqa_data(
        config, paths, ctx.train_scenes, ctx.train_images, seed, candidate=k))
    ctx.progress.stage(label, run.name, lambda run=run: ctx.train_and_eval(
        seed, paths, run, label, val, on_validation=True))
  return val


def select(candidates: dict[int, dict[str, float]], start: dict[str, float]) -> int:
  """The candidate to use, from validation-scene metrics: the lowest CHAIR_i (then
  CHAIR_s) among those that keep object recall >= 0.9x and length >= 0.8x the `start`'s
  (the model the stage trains from: a stage that makes the model say less is not a
  mitigation); if none does, the one with the highest recall. Pass only eligible
  candidates (no diagnostics)."""
  keeps = [k for k, m in candidates.items()
           if m["recall"] >= 0.9 * start["recall"] and m["avg_words"] >= 0.8 * start["avg_words"]]
  if not keeps:
    return max(candidates, key=lambda k: candidates[k]["recall"])
  return min(keeps, key=lambda k: (candidates[k]["chair_i"], candidates[k]["chair_s"]))


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
  """The selection metrics averaged over runs (NaN runs left out, as the tables do)."""
  out = {}
  for metric in _SELECTION_METRICS:
    values = [r[metric] for r in rows if not math.isnan(r[metric])]
    out[metric] = float(np.mean(values)) if values else math.nan
  return out


def choose(groups: dict[str, tuple[dict[int, dict[str, float]], dict[str, float]]]
           ) -> Choice:
  """`select` on the metrics averaged over the groups (seeds, or seeds and arms), and each
  group's own pick.

  Args:
    groups: group name -> (candidate -> validation metrics, the start's metrics).

  Returns:
    The pooled choice with every group's pick and the win counts.
  """
  picks = {name: select(candidates, start) for name, (candidates, start) in groups.items()}
  keys = next(iter(groups.values()))[0].keys()
  pooled = {k: _mean([candidates[k] for candidates, _ in groups.values()]) for k in keys}
  chosen = select(pooled, _mean([start for _, start in groups.values()]))
  counts = collections.Counter(picks.values())
  return Choice(chosen, {k: counts.get(k, 0) for k in keys}, picks)


def write_sweep_report(config: Any, root: pathlib.Path, summary: dict) -> None:
  """sweep.md (the cause, the VQA and schedule selections, the budget sweep, with paired
  intervals), sweep.csv, sweep_differences.csv and sweep.png."""
  sweep, seeds = config.demo.sweep, summary["seeds"]
  labels = runs.model_labels(config)
  measured = {str(s): m for s, m in summary["metrics"].items()}

  def rows(names: Sequence[str]) -> dict[str, dict[int, dict[str, float]]]:
    return {name: {s: measured[str(s)][name] for s in seeds} for name in names}

  web, control = Run(SFT_WEB), Run(CONTROL)
  sampled_labels = {web.sampled_name: labels[SFT_WEB] + ", sampled",
                    control.sampled_name: labels[CONTROL] + ", sampled"}
  labels.update(sampled_labels)
  cause_pairs = [(SFT_WEB, CONTROL), (web.sampled_name, control.sampled_name)]
  cause_names = [SFT_WEB, CONTROL, web.sampled_name, control.sampled_name]
  cause = paired_differences({m: count_tables(root, m, seeds) for m in cause_names},
                             cause_pairs)
  vqa, schedule = summary["vqa"], summary["schedule"]
  vqa_names, vqa_labels = _vqa_rows(config, labels, vqa)
  schedule_names, schedule_labels = _schedule_rows(config, labels, vqa, schedule)
  ordered = [SFT_VQA] + [run.name for run in runs.budget_runs(config)]
  labels = {**labels, SFT_VQA: labels[SFT_VQA] + " (the chosen candidate)"}
  tables = {name: count_tables(root, name, seeds) for name in ordered}
  dense, plain = sweep.arms[-1], sweep.arms[0]
  comparisons = [(Run(dense, budget=b).name, Run(plain, budget=b).name)
                 for b in sweep.budgets]
  comparisons += [(run.name, SFT_VQA) for run in runs.budget_runs(config)]
  differences = paired_differences(tables, comparisons)
  temperature = config.demo.eval.probe_temperature
  text = "\n".join([
      f"# RLHF-V demo studies over {len(seeds)} seed(s) {seeds}", "",
      "Each seed is a training run of every model, the base models included. Paired "
      "differences with two-level 95% bootstrap intervals (seeds resampled, then scenes "
      "within each; `rlhfv_jax/demo/stats.py`): * the interval excludes 0, (every seed) "
      "each seed alone has that sign, **bold** both (established).", "",
      f"## The cause: web captions against clean ones ({summary['eval_scenes']} held-out "
      "scenes)", "",
      f"Greedy descriptions, and descriptions sampled at temperature {temperature:g}. "
      "Co-occurring share: of the hallucinated mentions, those naming the web corpus's "
      "companion of a present object.", "",
      report.markdown_table(rows(cause_names), cause_names, labels,
                            report.COLUMNS + (report.CO_OCCURRENCE_COLUMN,)), "",
      report.differences_table(cause, cause_pairs, labels), "",
      "Per seed (CHAIR_s, web − clean): " + "; ".join(
          f"{labels[a]}: " + ", ".join(f"{d:+.3f}" for d in cause[(a, b, 'chair_s')].per_seed)
          for a, b in cause_pairs), "",
      f"## The VQA stage, chosen on {summary['val_scenes']} validation scenes", "",
      "Rule (`sweep.select`): the lowest CHAIR_i among candidates keeping recall >= 0.9x "
      "and length >= 0.8x the web base's, applied to the seeds' mean; wins: how many "
      "seeds' own validation scores pick it. Diagnostic candidates are never chosen.", "",
      report.markdown_table(rows(vqa_names), vqa_names, vqa_labels), "",
      "## The preference schedule, chosen on the validation scenes", "",
      "The same rule against the chosen VQA stage, over both arms "
      f"({', '.join(sweep.arms)}) and every seed; wins: seed-and-arm picks.", "",
      report.markdown_table(rows(schedule_names), schedule_names, schedule_labels), "",
      "## Feedback budget: DPO and DDPO with the chosen schedule on a share of each seed's "
      "pairs", "",
      f"Pairs per seed and budget: {summary['budgets']}. Held-out scenes; mean ± std "
      "over seeds.", "",
      report.markdown_table(rows(ordered), ordered, labels), "",
      report.differences_table(differences, comparisons, labels), "",
      f"Total time: {summary['total_seconds']:.0f}s.", ""])
  (root / "sweep.md").write_text(text)
  report.write_csv(root / "sweep.csv", rows(ordered), ordered, labels)
  report.write_differences_csv(root / "sweep_differences.csv", {**differences, **cause})
  plot_budgets(root / "sweep.png", sweep, tables, seeds)


def _choice_note(choice: dict[str, Any], k: int) -> str:
  """How candidate k fared: "chosen, wins 2/3" or "wins 1/3" (a `Choice.to_json`)."""
  note = f"wins {choice['wins'][str(k)]}/{len(choice['picks'])}"
  return "chosen, " + note if k == choice["chosen"] else note


def _vqa_rows(config: Any, labels: dict[str, str], vqa: dict[str, Any]
              ) -> tuple[list[str], dict[str, str]]:
  """The VQA validation table's rows (the web base, then every candidate) and labels."""
  web, candidates = Run(SFT_WEB), runs.vqa_candidate_runs(config)
  names = [web.validation_name] + [run.validation_name for run in candidates]
  row_labels = {web.validation_name: labels[web.name]}
  for run in candidates:
    diagnostic = dict(config.demo.sweep.vqa_candidates[run.candidate]).get("diagnostic")
    note = "diagnostic" if diagnostic else _choice_note(vqa, run.candidate)
    row_labels[run.validation_name] = f"{labels[run.name]} ({note})"
  return names, row_labels


def _schedule_rows(config: Any, labels: dict[str, str], vqa: dict[str, Any],
                   schedule: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
  """The schedule validation table's rows (the VQA start, then every arm's schedules)."""
  start = Run(SFT_VQA, candidate=vqa["chosen"])
  names = [start.validation_name]
  row_labels = {start.validation_name: labels[start.name] + " (the start)"}
  for run in runs.schedule_runs(config):
    names.append(run.validation_name)
    note = _choice_note(schedule, run.candidate)
    row_labels[run.validation_name] = f"{labels[run.name]} ({note})"
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
