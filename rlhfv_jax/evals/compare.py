"""Several `hallucination_eval` runs side by side: one Markdown table and one plot.

  python -m rlhfv_jax.evals.compare /runs/eval_base /runs/eval_sft /runs/eval_ddpo \
      --out /runs/compare [--names base,sft,ddpo] [--resamples 2000] [--seed 0]

Reads each RUN_DIR's `hallucination_results.json` (a `hallucination_eval` workdir) and
writes `comparison.md` and `comparison.png` into --out: each benchmark's headline metrics
per run (`METRICS`: POPE mean F1 and mean accuracy over its splits, RePOPE mean F1,
Object HalBench CHAIR_s and CHAIR_i, AMBER's official accuracy and F1), with the
published numbers (`evals.PUBLISHED`) as reference rows and lines.

Every later run is compared with the first: the difference of each metric with a paired
bootstrap 95% interval (`evals.bootstrap`: the items resampled, within each POPE / RePOPE
split, one resample for both runs) computed from the per-item values in each run's
`<name>_scored.jsonl`. An interval needs both runs scored on the same benchmark files
(equal sha256 in the results) and the same items, and per-item values that reproduce the
results' figure; otherwise the cell says why there is none. Runs scored on other files
(another POPE commit, another AMBER annotation file) are still tabled, with a warning
naming the differing files: their figures are of another benchmark version. AMBER's
interval is on unrounded ratios; the table shows the official rounded figures.

A missing or unreadable results file is an error naming its path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

from rlhfv_jax import evals
from rlhfv_jax.evals import bootstrap

MARKDOWN = "comparison.md"
PLOT = "comparison.png"


@dataclasses.dataclass(frozen=True)
class Metric:
  """One headline figure of a results entry.

  Attributes:
    benchmark: the results entry ("pope", "repope", "objhal", "amber").
    key: the metric's name in the entry (POPE / RePOPE: in each split, then averaged).
    label: the column header.
    lower_is_better: CHAIR counts hallucinations.
  """

  benchmark: str
  key: str
  label: str
  lower_is_better: bool = False


METRICS = (Metric("pope", "f1", "POPE F1"), Metric("pope", "accuracy", "POPE accuracy"),
           Metric("repope", "f1", "RePOPE F1"),
           Metric("objhal", "chair_s", "CHAIR_s", True),
           Metric("objhal", "chair_i", "CHAIR_i", True),
           Metric("amber", "accuracy", "AMBER accuracy"), Metric("amber", "f1", "AMBER F1"))
# How far a per-item recomputation may be from the results' figure: AMBER's official
# figures are rounded to 0.1 percent (and F1 comes from rounded P and R).
_TOLERANCE = {"amber": 0.0015}
_SPLIT_BENCHMARKS = ("pope", "repope")


# ------------------------------------------------------------------------ per-item values

def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
  """2PR / (P + R) = 2TP / (2TP + FP + FN); 0 where undefined, as `binary.metrics`."""
  denominator = 2 * tp + fp + fn
  return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)


def _yes_no_counts(row: dict[str, Any]) -> list[bool]:
  """TP, FP, TN, FN of one POPE / RePOPE item ("yes" positive)."""
  yes, truth = row["parsed"] == "yes", row["label"] == "yes"
  return [yes and truth, yes and not truth, not yes and not truth, not yes and truth]


def _chair_counts(row: dict[str, Any]) -> list[float]:
  """responses, hallucinating responses, hallucinated mentions, mentions."""
  return [1, row["hallucinated"] > 0, row["hallucinated"], row["mentions"]]


def _amber_counts(row: dict[str, Any]) -> list[bool]:
  """items, correct, TP, FP, FN of one AMBER item: the official exact match, "No"
  the positive class."""
  said_no, truth_no = row["answer"] == "No", row["label"] == "no"
  return [True, row["answer"] == ("No" if truth_no else "Yes"), said_no and truth_no,
          said_no and not truth_no, truth_no and not said_no]


_YES_NO = {"f1": lambda s: _f1(s[..., 0], s[..., 1], s[..., 3]),
           "accuracy": lambda s: bootstrap.ratio(s[..., 0] + s[..., 2], s.sum(-1))}
# Per results entry: the per-item counts of a scored row, and each metric from summed counts.
_PER_ITEM: dict[str, tuple[Callable[[dict], Sequence[float]],
                           dict[str, Callable[[np.ndarray], np.ndarray]]]] = {
    "pope": (_yes_no_counts, _YES_NO),
    "repope": (_yes_no_counts, _YES_NO),
    "objhal": (_chair_counts, {"chair_s": lambda s: bootstrap.ratio(s[..., 1], s[..., 0]),
                               "chair_i": lambda s: bootstrap.ratio(s[..., 2], s[..., 3])}),
    "amber": (_amber_counts, {"accuracy": lambda s: bootstrap.ratio(s[..., 1], s[..., 0]),
                              "f1": lambda s: _f1(s[..., 2], s[..., 3], s[..., 4])}),
}


@dataclasses.dataclass(frozen=True)
class Items:
  """A run's per-item counts of one results entry, per group (POPE's splits; one group
  "" otherwise), rows sorted by item id."""

  ids: dict[str, tuple[str, ...]]
  tables: dict[str, np.ndarray]


class NoItems(Exception):
  """Why a run's per-item values cannot be used (the reason is the message)."""


def read_items(run_dir: pathlib.Path, benchmark: str) -> Items:
  """The per-item counts of `benchmark` from ``<benchmark>_scored.jsonl``.

  Raises:
    NoItems: the file is missing or a line is unreadable (named in the message).
  """
  path = run_dir / evals.scored_file(benchmark)
  counts, _ = _PER_ITEM[benchmark]
  if not path.is_file():
    raise NoItems(f"no per-item file {path}")
  groups: dict[str, list[tuple[str, Sequence[float]]]] = {}
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      group = row["split"] if benchmark in _SPLIT_BENCHMARKS else ""
      groups.setdefault(group, []).append((str(row["id"]), counts(row)))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise NoItems(f"{path} line {number}: unreadable ({type(e).__name__}: {e})") from e
  ids, tables = {}, {}
  for group, rows in sorted(groups.items()):
    rows.sort(key=lambda r: r[0])
    ids[group] = tuple(r[0] for r in rows)
    tables[group] = np.asarray([r[1] for r in rows], np.float64)
  return Items(ids, tables)


def _from_items(items: Items, metric: Metric) -> float:
  """The metric on all items: the mean over groups of each group's figure."""
  statistic = _PER_ITEM[metric.benchmark][1][metric.key]
  return float(np.mean([statistic(t.sum(0)) for t in items.tables.values()]))


# ------------------------------------------------------------------------ results

def read_results(run_dir: str | pathlib.Path) -> dict[str, Any]:
  """A run's `hallucination_results.json`.

  Raises:
    ValueError: the file is missing, unreadable or not a results file (its path named).
  """
  path = pathlib.Path(run_dir) / evals.RESULTS_JSON
  try:
    results = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError as e:
    raise ValueError(f"{path}: no such results file ({run_dir} is not a finished "
                     "hallucination_eval workdir)") from e
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: unreadable results file ({e})") from e
  if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), dict):
    raise ValueError(f"{path}: not a hallucination_eval results file (no 'benchmarks')")
  return results


def value(result: dict[str, Any], metric: Metric) -> float:
  """The metric of a results entry (POPE / RePOPE: the mean over its splits); NaN if the
  entry does not have it."""
  if metric.benchmark in _SPLIT_BENCHMARKS:
    figures = [s[metric.key] for s in (result.get("splits") or {}).values()]
    return float(np.mean(figures)) if figures else math.nan
  figure = result.get(metric.key)
  return float(figure) if isinstance(figure, (int, float)) else math.nan


def file_name(benchmark: str, key: str) -> str:
  """The benchmark file a `files` entry of the results hashes."""
  if benchmark in _SPLIT_BENCHMARKS:
    return f"coco_{benchmark}_{key}.json"
  return f"data/{key}" if benchmark == "amber" else key


def differing_files(benchmark: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
  """The files whose sha256 differs between two results entries (or is recorded by one
  only), each named with both hashes' first 12 digits."""
  files_a, files_b = a.get("files") or {}, b.get("files") or {}
  short = lambda h: h[:12] if isinstance(h, str) else "not recorded"
  return [f"{file_name(benchmark, k)} ({short(files_a.get(k))} vs {short(files_b.get(k))})"
          for k in sorted(set(files_a) | set(files_b)) if files_a.get(k) != files_b.get(k)]


# ------------------------------------------------------------------------ comparison

@dataclasses.dataclass
class Comparison:
  """What `compare` found.

  Attributes:
    runs: the runs' names, in the order given (the first is the baseline).
    directories: their directories.
    metrics: the `METRICS` some run has.
    values: run -> metric label -> value (a fraction; NaN where the run lacks it).
    differences: run (after the first) -> metric label -> the paired difference from
      the first run (run − first), or why there is none.
    warnings: what the reader must know (other benchmark versions, unusable files).
  """

  runs: list[str]
  directories: list[str]
  metrics: list[Metric]
  values: dict[str, dict[str, float]]
  differences: dict[str, dict[str, bootstrap.Difference | str]]
  warnings: list[str]


def _names(run_dirs: Sequence[str | pathlib.Path], names: Optional[Sequence[str]]
           ) -> list[str]:
  if names:
    if len(names) != len(run_dirs) or len(set(names)) != len(names):
      raise ValueError(f"names {list(names)}: need {len(run_dirs)} different names, one "
                       "per run")
    return list(names)
  resolved = [pathlib.Path(d).resolve() for d in run_dirs]
  base = [r.name or str(r) for r in resolved]
  # Other directories of the same name (runs/a/eval, runs/b/eval): their paths instead;
  # a directory given twice is numbered.
  named = [n if len({r for r, m in zip(resolved, base) if m == n}) == 1 else str(d)
           for n, d in zip(base, run_dirs)]
  return [n if named[:k].count(n) == 0 else f"{n} #{named[:k].count(n) + 1}"
          for k, n in enumerate(named)]


class _PerItem:
  """Each run's per-item values, read once, used only where they reproduce the run's
  figure (each problem is warned about once)."""

  def __init__(self, values: dict[str, dict[str, float]], warnings: list[str]):
    self._values, self._warnings = values, warnings
    self._items: dict[tuple[str, str], Items | str] = {}
    self._checked: dict[tuple[str, str], Items | str] = {}

  def usable(self, name: str, directory: pathlib.Path, metric: Metric) -> Items | str:
    """The run's per-item values for `metric`, or why there are none."""
    key = (name, metric.benchmark)
    if key not in self._items:
      try:
        self._items[key] = read_items(directory, metric.benchmark)
      except NoItems as e:
        self._items[key] = str(e)
        self._warnings.append(f"{metric.benchmark} of {name}: {e}; no paired interval")
    if (name, metric.label) not in self._checked:
      found, figure = self._items[key], self._values[name][metric.label]
      if isinstance(found, str):
        found = "no per-item values"
      elif not abs(_from_items(found, metric) - figure) <= _TOLERANCE.get(metric.benchmark,
                                                                           1e-9):
        self._warnings.append(f"{metric.label} of {name}: its per-item file gives "
                              f"{_from_items(found, metric):.4f}, its results "
                              f"{figure:.4f}; no paired interval")
        found = "per-item values disagree"
      self._checked[(name, metric.label)] = found
    return self._checked[(name, metric.label)]


def _benchmark_differences(benchmark: str, shared: Sequence[Metric],
                           runs: tuple[tuple[str, pathlib.Path, dict], ...],
                           per_item: _PerItem, warnings: list[str], *, resamples: int,
                           seed: int) -> dict[str, bootstrap.Difference | str]:
  """`benchmark`'s metrics of the run `runs[1]` minus the baseline `runs[0]`: a paired
  interval each, or why there is none."""
  (first, first_dir, first_results), (name, directory, results) = runs
  if benchmark not in results or benchmark not in first_results:
    return {m.label: "not in both runs" for m in shared}
  differ = differing_files(benchmark, first_results[benchmark], results[benchmark])
  if differ:
    warnings.append(f"{benchmark}: {name} was scored on other files than {first}: "
                    f"{'; '.join(differ)}. Another benchmark version: its figures are "
                    "not comparable item for item, and no paired interval is given.")
    return {m.label: "different files" for m in shared}
  out: dict[str, bootstrap.Difference | str] = {}
  for metric in shared:
    mine = per_item.usable(name, directory, metric)
    theirs = per_item.usable(first, first_dir, metric)
    if isinstance(mine, str) or isinstance(theirs, str):
      out[metric.label] = mine if isinstance(mine, str) else theirs
    elif mine.ids != theirs.ids:
      out[metric.label] = "different items"
      if metric is shared[0]:
        warnings.append(f"{benchmark}: {name} and {first} were scored on different "
                        "items (skips or another subset); no paired interval")
    else:
      statistic = _PER_ITEM[benchmark][1][metric.key]
      out[metric.label] = bootstrap.paired_difference(
          list(mine.tables.values()), list(theirs.tables.values()), statistic,
          resamples=resamples, seed=seed)
  return out


def compare(run_dirs: Sequence[str | pathlib.Path], names: Optional[Sequence[str]] = None,
            *, resamples: int = 2000, seed: int = 0) -> Comparison:
  """Reads the runs and computes the table's values and the paired differences.

  Args:
    run_dirs: `hallucination_eval` workdirs; the first is the baseline.
    names: one display name per run (default: the directories' names).
    resamples, seed: the bootstrap's.

  Raises:
    ValueError: a results file is missing or unreadable (its path named).
  """
  if not run_dirs:
    raise ValueError("no run directories given")
  runs = _names(run_dirs, names)
  dirs = [pathlib.Path(d) for d in run_dirs]
  results = {name: read_results(d)["benchmarks"] for name, d in zip(runs, dirs)}
  metrics = [m for m in METRICS if any(m.benchmark in r for r in results.values())]
  if not metrics:
    raise ValueError(f"no benchmark these runs scored has a headline metric: "
                     f"{sorted({b for r in results.values() for b in r})}")
  values = {name: {m.label: value(results[name][m.benchmark], m)
                   if m.benchmark in results[name] else math.nan for m in metrics}
            for name in runs}
  warnings: list[str] = []
  per_item = _PerItem(values, warnings)
  baseline = (runs[0], dirs[0], results[runs[0]])
  differences: dict[str, dict[str, bootstrap.Difference | str]] = {}
  for name, directory in zip(runs[1:], dirs[1:]):
    differences[name] = {}
    for benchmark in dict.fromkeys(m.benchmark for m in metrics):
      differences[name].update(_benchmark_differences(
          benchmark, [m for m in metrics if m.benchmark == benchmark],
          (baseline, (name, directory, results[name])), per_item, warnings,
          resamples=resamples, seed=seed))
  return Comparison(runs, [str(d) for d in dirs], metrics, values, differences, warnings)


# ------------------------------------------------------------------------ outputs

def _percent(x: float) -> str:
  return "" if math.isnan(x) else f"{100 * x:.1f}"


def _points(x: float) -> str:
  return f"{100 * x + 0.0:+.1f}"  # + 0.0: no "-0.0"


def published_rows(metrics: Sequence[Metric]) -> dict[str, dict[str, float]]:
  """Model name -> metric label -> published value, for the metrics shown."""
  rows: dict[str, dict[str, float]] = {}
  for metric in metrics:
    for model, numbers in evals.PUBLISHED.get(metric.benchmark, []):
      if metric.key in numbers:
        rows.setdefault(model, {})[metric.label] = numbers[metric.key]
  return rows


def markdown(c: Comparison) -> str:
  """The comparison as Markdown: runs, warnings, the values, the differences."""
  header = ("| run | " + " | ".join(m.label + (" ↓" if m.lower_is_better else "")
                                    for m in c.metrics) + " |")
  rule = "|---" * (len(c.metrics) + 1) + "|"
  lines = [f"# Hallucination benchmarks: {len(c.runs)} runs compared", ""]
  lines += [f"- `{name}`: {directory}" for name, directory in zip(c.runs, c.directories)]
  if c.warnings:
    lines += ["", "## Warnings", ""] + [f"- {w}" for w in c.warnings]
  lines += ["", "## Headline metrics (percent; ↓ lower is better)", "", header, rule]
  for name in c.runs:
    lines.append(f"| {name} | " + " | ".join(_percent(c.values[name][m.label])
                                             for m in c.metrics) + " |")
  for model, numbers in published_rows(c.metrics).items():
    lines.append(f"| {model} (published) | " + " | ".join(
        _percent(numbers.get(m.label, math.nan)) for m in c.metrics) + " |")
  lines += ["", "POPE and RePOPE: means over the splits scored. CHAIR: Object HalBench's "
            "rule path (the published rows use GPT extraction). AMBER: the official "
            "figures (exact \"Yes\"/\"No\")."]
  if c.differences:
    lines += ["", f"## Differences from `{c.runs[0]}` (percentage points, run − "
              f"{c.runs[0]}; paired bootstrap 95% interval)", "", header, rule]
    for name, cells in c.differences.items():
      shown = []
      for m in c.metrics:
        d = cells.get(m.label, "not in both runs")
        shown.append(f"— ({d})" if isinstance(d, str) else
                     f"{_points(d.estimate)} [{_points(d.low)}, {_points(d.high)}]"
                     + (" *" if d.excludes_zero else ""))
      lines.append(f"| {name} | " + " | ".join(shown) + " |")
    lines += ["", "\\* the interval excludes 0. Items resampled with replacement (within "
              "each POPE / RePOPE split), the same resample for both runs. AMBER's "
              "differences are of unrounded ratios."]
  return "\n".join(lines) + "\n"


def plot(c: Comparison, path: pathlib.Path) -> None:
  """One panel per metric: a bar per run, the published numbers as dashed lines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  published = published_rows(c.metrics)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  fig, axes = plt.subplots(1, len(c.metrics), figsize=(2.4 * len(c.metrics) + 1, 3.8),
                           squeeze=False)
  for axis, metric in zip(axes[0], c.metrics):
    heights = [100 * c.values[name][metric.label] for name in c.runs]
    for k, height in enumerate(heights):
      if not math.isnan(height):
        axis.bar(k, height, color=colors[k % len(colors)])
        axis.annotate(f"{height:.1f}", (k, height), ha="center", va="bottom", fontsize=7)
    for j, (model, numbers) in enumerate(published.items()):
      if metric.label in numbers:
        axis.axhline(100 * numbers[metric.label], color="0.3", linewidth=1,
                     linestyle=("--", ":", "-.")[j % 3], label=f"{model} (published)")
    axis.set_xticks(range(len(c.runs)), c.runs, rotation=45, ha="right", fontsize=8)
    axis.set_title(metric.label + (" (lower is better)" if metric.lower_is_better else ""),
                   fontsize=9)
    axis.tick_params(axis="y", labelsize=8)
    if axis.get_legend_handles_labels()[0]:
      axis.legend(fontsize=6, loc="best")
  axes[0][0].set_ylabel("percent")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(c: Comparison, out_dir: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """`comparison.md` and `comparison.png` in `out_dir` (created)."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / MARKDOWN).write_text(markdown(c), encoding="utf-8")
  plot(c, out / PLOT)
  return out / MARKDOWN, out / PLOT


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rlhfv_jax.evals.compare",
      description="Compare hallucination_eval runs: a Markdown table and a plot of each "
                  "benchmark's headline metrics, with paired bootstrap intervals of the "
                  "differences from the first run.")
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="hallucination_eval workdirs; the first is the baseline")
  parser.add_argument("--out", required=True, help="where comparison.md/.png are written")
  parser.add_argument("--names", default="",
                      help="comma-separated names, one per RUN_DIR (default: their names)")
  parser.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates")
  parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.names.split(",")] if args.names else None
  try:
    comparison = compare(args.run_dirs, names, resamples=args.resamples, seed=args.seed)
  except ValueError as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  for warning in comparison.warnings:
    print(f"warning: {warning}", file=sys.stderr)
  for path in write(comparison, args.out):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
