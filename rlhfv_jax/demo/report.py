"""The demo's ablation report: Markdown tables, CSV and a PNG plot.

Input is `results[arm][run] -> {metric: value}` (metrics of `scoring.METRIC_NAMES`),
one entry per seed (training run). Spread is the sample standard deviation over the
runs (ddof=1); a single run has none (empty in the CSV, nothing after the mean in the
table, never "± 0.0"). NaN values (an undefined rate, e.g. CHAIR_i of a model that
mentions nothing) are left out of their cell's mean. A cell over fewer runs than the
table's most says so: "(n=1)".

Comparisons between models are paired differences with two-level 95% bootstrap
intervals over the seeds and the held-out scenes (`stats`): `differences_table` /
`write_differences_csv`, and the plot's error bars are the same kind of interval around
each model's own value.
"""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

from rlhfv_jax.demo import stats

# (metric, column title, better direction) in table order.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("chair_s", "CHAIR_s", "↓"),
    ("chair_i", "CHAIR_i", "↓"),
    ("recall", "Object recall", "↑"),
    ("attribute_error_rate", "Attribute errors", "↓"),
    ("count_accuracy", "Count accuracy", "↑"),
    ("avg_words", "Words", ""),
)
Results = Mapping[str, Mapping[int, Mapping[str, float]]]


def summarize(values: Sequence[float]) -> tuple[float, float, int]:
  """(mean, sample std, n) over the finite values (NaN, NaN, 0 if there are none); the
  std of a single value is NaN: one run has no spread."""
  finite = [v for v in values if not math.isnan(v)]
  if not finite:
    return math.nan, math.nan, 0
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
  return float(np.mean(finite)), std, len(finite)


def _cell(mean: float, std: float, n: int, total: int, digits: int) -> str:
  if n == 0:
    return "n/a"
  # One run has no spread to show (its "std" of 0 would read as a measured one).
  text = f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
  return text if n == total else f"{text} (n={n})"


def _values(results: Results, arm: str, metric: str) -> list[float]:
  return [float(m[metric]) for m in results[arm].values()]


# Where hallucinations come from (the sweep's cause table): not a quality metric.
CO_OCCURRENCE_COLUMN = ("co_occurrence_share", "Co-occurring share", "")


def markdown_table(results: Results, arms: Sequence[str], labels: Mapping[str, str],
                   columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
  """The ablation table as GitHub Markdown (one row per arm, mean ± std per metric of
  `columns`)."""
  total = max(len(results[arm]) for arm in arms)
  header = "| Model | " + " | ".join(f"{title} {arrow}".strip()
                                      for _, title, arrow in columns) + " |"
  lines = [header, "|" + "---|" * (len(columns) + 1)]
  for arm in arms:
    cells = []
    for metric, _, _ in columns:
      mean, std, n = summarize(_values(results, arm, metric))
      cells.append(_cell(mean, std, n, total, 1 if metric == "avg_words" else 3))
    lines.append(f"| {labels[arm]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(path: pathlib.Path, results: Results, arms: Sequence[str],
              labels: Mapping[str, str]) -> None:
  """One row per arm: number of runs, then mean, std and n of every metric (the std
  cell is empty for a single run)."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arm", "label", "runs"] + [f"{m}_{stat}" for m, _, _ in COLUMNS
                                                for stat in ("mean", "std", "n")])
    for arm in arms:
      row = [arm, labels[arm], len(results[arm])]
      for metric, _, _ in COLUMNS:
        mean, std, n = summarize(_values(results, arm, metric))
        row += [mean, "" if math.isnan(std) else std, n]
      writer.writerow(row)


def write_per_seed_csv(path: pathlib.Path, results: Results, arms: Sequence[str]) -> None:
  """One row per (arm, run) with every metric."""
  metrics = [m for m, _, _ in COLUMNS]
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arm", "seed"] + metrics)
    for arm in arms:
      for run, values in results[arm].items():
        writer.writerow([arm, run] + [values[m] for m in metrics])


DIFFERENCE_METRICS = ("chair_s", "chair_i", "recall")


def differences_table(differences: Mapping[tuple[str, str, str], stats.Difference],
                      comparisons: Sequence[tuple[str, str]], labels: Mapping[str, str],
                      metrics_shown: Sequence[str] = DIFFERENCE_METRICS) -> str:
  """Paired differences as Markdown: estimate [95% interval] per metric, a star where
  the interval excludes 0, "(every seed)" where each seed alone has that sign, and the
  cell in bold where both hold over several seeds (`stats.Difference.established`)."""
  titles = {m: f"{t} {a}".strip() for m, t, a in COLUMNS}
  lines = ["| Comparison (A − B) | " + " | ".join(f"Δ {titles[m]}" for m in metrics_shown)
           + " |", "|" + "---|" * (len(metrics_shown) + 1)]
  for a, b in comparisons:
    cells = []
    for metric in metrics_shown:
      d = differences[(a, b, metric)]
      if math.isnan(d.estimate):
        cells.append("n/a")
        continue
      cell = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
      if d.excludes_zero:
        cell += " *"
      if len(d.per_seed) > 1 and d.same_sign_every_seed:
        cell += " (every seed)"
      if len(d.per_seed) > 1 and d.established:
        cell = f"**{cell}**"
      cells.append(cell)
    lines.append(f"| {labels[a]} − {labels[b]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_differences_csv(path: pathlib.Path,
                          differences: Mapping[tuple[str, str, str], stats.Difference]
                          ) -> None:
  """One row per (A, B, metric): estimate, interval, per-seed differences."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["a", "b", "metric", "estimate", "ci_low", "ci_high", "excludes_zero",
                     "per_seed"])
    for (a, b, metric), d in differences.items():
      writer.writerow([a, b, metric, d.estimate, d.low, d.high, d.excludes_zero,
                       " ".join(f"{x:.6g}" for x in d.per_seed)])


def plot(path: pathlib.Path, results: Results, arms: Sequence[str],
         labels: Mapping[str, str], title: str,
         intervals: Mapping[tuple[str, str], tuple[float, float]] | None = None) -> None:
  """Hallucination rates (CHAIR_s, CHAIR_i) and object recall per arm, on two axes of
  their own scale; error bars are `intervals[(arm, metric)]` (95% bootstrap, `stats`),
  else none. The legend sits beside the bars, never on them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  panels = [([("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i")], "hallucination rate (lower is better)"),
            ([("recall", "object recall")], "object recall (higher is better)")]
  x = np.arange(len(arms))
  fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 1.9 * len(arms)), 4.6),
                           gridspec_kw={"width_ratios": [2, 1]})
  for ax, (shown, ylabel) in zip(axes, panels):
    width = 0.8 / len(shown)
    top = 0.0
    for k, (metric, name) in enumerate(shown):
      means = np.array([summarize(_values(results, arm, metric))[0] for arm in arms])
      means = np.nan_to_num(means)
      errors = None
      if intervals is not None:
        low = np.array([intervals.get((arm, metric), (np.nan, np.nan))[0] for arm in arms])
        high = np.array([intervals.get((arm, metric), (np.nan, np.nan))[1] for arm in arms])
        errors = np.nan_to_num(np.stack([means - low, high - means]).clip(min=0))
        top = max(top, float(np.nanmax(high)) if np.isfinite(high).any() else 0.0)
      if metric == "recall":  # near 1: points on a zoomed axis (bars would need 0)
        ax.errorbar(x, means, yerr=errors, fmt="o", capsize=3, label=name, color="C2")
        low_end = means - (errors[0] if errors is not None else 0)
        ax.set_ylim(max(0.0, float(np.min(low_end)) - 0.05), 1.005)
      else:
        ax.bar(x + (k - (len(shown) - 1) / 2) * width, means, width, yerr=errors,
               capsize=3, label=name)
        top = max(top, float(means.max()))
        ax.set_ylim(0, top * 1.15 or 1.0)
    ax.set_xticks(x, [labels[a] for a in arms], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
