"""Binary-classification counts and metrics shared by the yes/no benchmarks (POPE, AMBER)."""

from __future__ import annotations

from typing import Sequence


def confusion(predicted: Sequence[str], truth: Sequence[str], positive: str
              ) -> dict[str, int]:
  """TP / FP / TN / FN of `predicted` against `truth` with `positive` the positive label."""
  if len(predicted) != len(truth):
    raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
  counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
  for p, t in zip(predicted, truth):
    if p == positive:
      counts["tp" if t == positive else "fp"] += 1
    else:
      counts["fn" if t == positive else "tn"] += 1
  return counts


def metrics(counts: dict[str, int]) -> dict[str, float]:
  """accuracy, precision, recall, f1 (0 where a denominator is 0, as the official scorers
  would divide by zero) from TP / FP / TN / FN."""
  tp, fp, tn, fn = (counts[k] for k in ("tp", "fp", "tn", "fn"))
  total = tp + fp + tn + fn
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"accuracy": (tp + tn) / total if total else 0.0, "precision": precision,
          "recall": recall, "f1": f1}
