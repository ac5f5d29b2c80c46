"""Tests of the ablation report against hand-computed tables."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from rlhfv_jax.demo import report, stats

LABELS = {"a": "SFT", "b": "+ DDPO", "base": "Base"}


def _metrics(chair_s, chair_i=0.5, recall=0.5, words=10.0):
  return {"chair_s": chair_s, "chair_i": chair_i, "recall": recall,
          "attribute_error_rate": 0.25, "count_accuracy": 1.0, "avg_words": words}


RESULTS = {
    "a": {0: _metrics(0.5), 1: _metrics(0.7), 2: _metrics(0.6, words=13.0)},
    "b": {0: _metrics(0.2, chair_i=math.nan), 1: _metrics(0.4, chair_i=0.1),
          2: _metrics(0.3, chair_i=0.3)},
    "base": {"base": _metrics(0.9)},  # one run shared by all seeds
}
ARMS = ["base", "a", "b"]


def test_summarize():
  assert report.summarize([0.5, 0.7, 0.6]) == pytest.approx((0.6, 0.1, 3))
  assert report.summarize([math.nan, 0.1, 0.3]) == pytest.approx((0.2, math.sqrt(0.02), 2))
  mean, std, n = report.summarize([0.4])  # one run: no spread, not a spread of 0
  assert (mean, n) == (0.4, 1) and math.isnan(std)
  mean, std, n = report.summarize([math.nan])
  assert math.isnan(mean) and math.isnan(std) and n == 0


def test_markdown_table():
  table = report.markdown_table(RESULTS, ARMS, LABELS).splitlines()
  assert table[0] == ("| Model | CHAIR_s ↓ | CHAIR_i ↓ | Object recall ↑ | Attribute errors ↓ "
                      "| Count accuracy ↑ | Words |")
  assert table[2].startswith("| Base | 0.900 (n=1) | 0.500 (n=1) |")
  assert table[3] == ("| SFT | 0.600 ± 0.100 | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.250 ± 0.000 "
                      "| 1.000 ± 0.000 | 11.0 ± 1.7 |")
  assert table[4].startswith("| + DDPO | 0.300 ± 0.100 | 0.200 ± 0.141 (n=2) |")


def test_markdown_table_of_one_seed_shows_no_spread():
  one_seed = {"base": RESULTS["base"], "a": {0: _metrics(0.5, words=12.0)}}
  table = report.markdown_table(one_seed, ["base", "a"], LABELS).splitlines()
  assert table[2] == "| Base | 0.900 | 0.500 | 0.500 | 0.250 | 1.000 | 10.0 |"
  assert table[3] == "| SFT | 0.500 | 0.500 | 0.500 | 0.250 | 1.000 | 12.0 |"


def test_csv_files(tmp_path):
  report.write_csv(tmp_path / "s.csv", RESULTS, ARMS, LABELS)
  rows = list(csv.DictReader((tmp_path / "s.csv").open()))
  assert [r["arm"] for r in rows] == ARMS and [r["runs"] for r in rows] == ["1", "3", "3"]
  assert float(rows[1]["chair_s_mean"]) == pytest.approx(0.6)
  assert float(rows[1]["chair_s_std"]) == pytest.approx(0.1)
  assert rows[2]["chair_i_n"] == "2"
  assert rows[0]["chair_s_std"] == "" and rows[0]["chair_s_n"] == "1"  # no fake "± 0.0"
  report.write_per_seed_csv(tmp_path / "p.csv", RESULTS, ARMS)
  rows = list(csv.DictReader((tmp_path / "p.csv").open()))
  assert len(rows) == 7 and rows[0]["seed"] == "base"
  assert float(rows[5]["chair_s"]) == pytest.approx(0.4)


def test_plot_writes_a_png(tmp_path):
  path = tmp_path / "plot.png"
  intervals = {(arm, m): (0.1, 0.7) for arm in ARMS for m in ("chair_s", "chair_i", "recall")}
  for given in (None, intervals):
    report.plot(path, RESULTS, ARMS, LABELS, "title", intervals=given)
    image = np.asarray(Image.open(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


def test_differences_table_and_csv(tmp_path):
  d = {("b", "a", "chair_s"): stats.Difference(-0.3, -0.45, -0.12, (-0.3, -0.3, -0.3)),
       ("b", "a", "chair_i"): stats.Difference(0.01, -0.02, 0.05, (0.02, -0.01, 0.02)),
       ("b", "a", "recall"): stats.Difference(math.nan, math.nan, math.nan, ())}
  table = report.differences_table(d, [("b", "a")], LABELS).splitlines()
  assert table[0] == "| Comparison (A − B) | Δ CHAIR_s ↓ | Δ CHAIR_i ↓ | Δ Object recall ↑ |"
  # Established (interval and every seed) is bold.
  assert table[2] == ("| + DDPO − SFT | **-0.300 [-0.450, -0.120] * (every seed)** | "
                      "+0.010 [-0.020, +0.050] | n/a |")
  report.write_differences_csv(tmp_path / "d.csv", d)
  rows = list(csv.DictReader((tmp_path / "d.csv").open()))
  assert rows[0]["excludes_zero"] == "True" and rows[1]["excludes_zero"] == "False"
  assert rows[0]["per_seed"] == "-0.3 -0.3 -0.3"
