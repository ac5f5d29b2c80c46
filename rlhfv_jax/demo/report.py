"""The demo's ablation report: mean ± spread over seeds as Markdown, CSV and a PNG plot.

Input is `results[arm][run] -> {metric: value}` (metrics of `metrics.METRIC_NAMES`),
one entry per seed — or a single one for a model shared by all seeds (the demo's
base model). Spread is the sample standard deviation over the runs (ddof=1; 0 for a
single run). NaN values (an undefined rate, e.g. CHAIR_i of a model that mentions
nothing) are left out of their cell's mean. A cell over fewer runs than the table's
most says so: "(n=1)"; a single run is shown without a spread.
"""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

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
  """(mean, sample std, n) over the finite values (NaN, NaN, 0 if there are none)."""
  finite = [v for v in values if not math.isnan(v)]
  if not finite:
    return math.nan, math.nan, 0
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
  return float(np.mean(finite)), std, len(finite)


def _cell(mean: float, std: float, n: int, total: int, digits: int) -> str:
  if n == 0:
    return "n/a"
  # One run has no spread to show (its "std" of 0 would read as a measured one).
  text = f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
  return text if n == total else f"{text} (n={n})"


def _values(results: Results, arm: str, metric: str) -> list[float]:
  return [float(m[metric]) for m in results[arm].values()]


def markdown_table(results: Results, arms: Sequence[str], labels: Mapping[str, str]) -> str:
  """The ablation table as GitHub Markdown (one row per arm, mean ± std per metric)."""
  total = max(len(results[arm]) for arm in arms)
  header = "| Model | " + " | ".join(f"{title} {arrow}".strip()
                                      for _, title, arrow in COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
  for arm in arms:
    cells = []
    for metric, _, _ in COLUMNS:
      mean, std, n = summarize(_values(results, arm, metric))
      cells.append(_cell(mean, std, n, total, 1 if metric == "avg_words" else 3))
    lines.append(f"| {labels[arm]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(path: pathlib.Path, results: Results, arms: Sequence[str],
              labels: Mapping[str, str]) -> None:
  """One row per arm: number of runs, then mean, std and n of every metric."""
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arm", "label", "runs"] + [f"{m}_{stat}" for m, _, _ in COLUMNS
                                                for stat in ("mean", "std", "n")])
    for arm in arms:
      row = [arm, labels[arm], len(results[arm])]
      for metric, _, _ in COLUMNS:
        row += list(summarize(_values(results, arm, metric)))
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


def plot(path: pathlib.Path, results: Results, arms: Sequence[str],
         labels: Mapping[str, str], title: str) -> None:
  """Grouped bars of CHAIR_s, CHAIR_i and recall per arm, error bars = std over runs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  shown = [("chair_s", "CHAIR_s (lower is better)"), ("chair_i", "CHAIR_i (lower is better)"),
           ("recall", "object recall (higher is better)")]
  x = np.arange(len(arms))
  width = 0.8 / len(shown)
  fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(arms)), 4.2))
  for k, (metric, name) in enumerate(shown):
    stats = [summarize(_values(results, arm, metric)) for arm in arms]
    means = [0.0 if n == 0 else m for m, _, n in stats]
    stds = [0.0 if n == 0 else s for _, s, n in stats]
    ax.bar(x + (k - (len(shown) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
           label=name)
  ax.set_xticks(x, [labels[a] for a in arms], rotation=20, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("rate")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
