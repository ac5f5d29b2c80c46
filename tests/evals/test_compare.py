"""`evals.compare` on hand-made run directories in the stage's format (results JSON with
the scorers' figures, `<bench>_scored.jsonl`): hand-computed table values, paired
intervals, a run against itself, other benchmark versions and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlhfv_jax import evals
from rlhfv_jax.evals import amber, bootstrap, chair, compare, pope

POPE_LABELS = {"random/1": "yes", "random/2": "no", "random/3": "yes", "random/4": "no",
               "popular/1": "yes", "popular/2": "no"}
POPE_FILES = {"random": "a" * 64, "popular": "b" * 64}
AMBER_ITEMS = [("1005", "discriminative-hallucination", "no"),
               ("1006", "discriminative-attribute-state", "yes"),
               ("1007", "relation", "no"), ("1008", "relation", "yes")]
AMBER_FILES = {"annotations.json": "c" * 64, "query/query_discriminative.json": "d" * 64}


def write_run(root, pope_parsed, chair_counts, amber_answers, pope_files=POPE_FILES,
              drop=()):
  """A run directory as `hallucination_eval` writes it: figures from the scorers."""
  root.mkdir(parents=True)
  pope_rows = [{"id": i, "split": i.split("/")[0], "parsed": p, "label": POPE_LABELS[i]}
               for i, p in zip(POPE_LABELS, pope_parsed) if i not in drop]
  splits = {s: pope.score([r["parsed"] for r in pope_rows if r["split"] == s],
                          [r["label"] for r in pope_rows if r["split"] == s])
            for s in ("random", "popular")}
  counts = [chair.MentionCounts(m, h, 0, 2, 10) for m, h in chair_counts]
  objhal_rows = [dict(id=str(k), image_id=k, mentions=c.mentions, hallucinated=c.hallucinated,
                      covered=c.covered, objects=c.objects, words=c.words)
                 for k, c in enumerate(counts)]
  amber_rows = [{"id": i, "type": t, "label": label, "answer": a}
                for (i, t, label), a in zip(AMBER_ITEMS, amber_answers)]
  results = {"settings": {}, "benchmarks": {
      "pope": {"splits": splits, "files": dict(pope_files), "scored": len(pope_rows),
               "f1": float(np.mean([s["f1"] for s in splits.values()]))},
      "objhal": dict(chair.chair_metrics(counts), scored=len(counts),
                     files={"captions_val2014.json": "e" * 64}),
      "amber": dict(amber.score(amber_answers, [i[2] for i in AMBER_ITEMS],
                                [i[1] for i in AMBER_ITEMS]),
                    scored=len(AMBER_ITEMS), files=dict(AMBER_FILES))}}
  (root / evals.RESULTS_JSON).write_text(json.dumps(results))
  for name, rows in (("pope", pope_rows), ("objhal", objhal_rows), ("amber", amber_rows)):
    (root / evals.scored_file(name)).write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
  return root


@pytest.fixture
def runs(tmp_path):
  # POPE random: A yes,no,yes,yes (TP 2 FP 1 TN 1) -> F1 0.8, accuracy 0.75; popular all
  # right -> 1, 1. B random yes,no,no,no (TP 1 TN 2 FN 1) -> 2/3, 0.75; popular no,no
  # (TN 1 FN 1) -> 0, 0.5.
  a = write_run(tmp_path / "base", ["yes", "no", "yes", "yes", "yes", "no"],
                [(2, 1), (3, 0), (1, 0)], ["No", "Yes", "Yes", "yes"])
  b = write_run(tmp_path / "ddpo", ["yes", "no", "no", "no", "no", "no"],
                [(2, 0), (3, 0), (0, 0)], ["No", "Yes", "No", "Yes"])
  return a, b


def test_table_values_are_the_hand_computed_ones(runs, tmp_path):
  c = compare.compare(runs, resamples=200)
  assert c.runs == ["base", "ddpo"] and not c.warnings
  want = {"base": {"POPE F1": 0.9, "POPE accuracy": 0.875, "CHAIR_s": 1 / 3, "CHAIR_i": 1 / 6,
                   "AMBER accuracy": 0.5},
          "ddpo": {"POPE F1": 1 / 3, "POPE accuracy": 0.625, "CHAIR_s": 0.0, "CHAIR_i": 0.0,
                   "AMBER accuracy": 1.0}}
  for run, figures in want.items():
    for label, figure in figures.items():
      assert c.values[run][label] == pytest.approx(figure), (run, label)
  # AMBER F1 as the official script prints it: base P = 1 / 1.001 -> 99.9, R = 1 / 2.001
  # -> 50.0, F1 = 2PR / (P + R + 0.0001) = 66.6; ddpo 2 / 2.0001 -> 100.0.
  assert (c.values["base"]["AMBER F1"], c.values["ddpo"]["AMBER F1"]) == (0.666, 1.0)
  assert "RePOPE F1" not in c.values["base"]  # no run has RePOPE: no column
  # Paired differences (ddpo − base), each interval around its estimate.
  d = c.differences["ddpo"]
  assert d["POPE F1"].estimate == pytest.approx(1 / 3 - 0.9)
  assert d["CHAIR_i"].estimate == pytest.approx(-1 / 6)
  assert d["AMBER accuracy"].estimate == pytest.approx(0.5)
  assert d["AMBER F1"].estimate == pytest.approx(1.0 - 2 / 3)  # unrounded ratios
  for diff in d.values():
    assert diff.low <= diff.estimate <= diff.high

  md, png = compare.write(c, tmp_path / "out")
  text = md.read_text()
  assert "| base | 90.0 | 87.5 | 33.3 | 16.7 | 50.0 | 66.6 |" in text
  assert "| ddpo | 33.3 | 62.5 | 0.0 | 0.0 | 100.0 | 100.0 |" in text
  assert "| LLaVA-1.5-7B (published) | 85.9 |  |  |  | 73.5 | 77.6 |" in text
  assert "| LLaVA-1.5-7B (GPT path) (published) |  |  |  | 25.2 |  |  |" in text
  assert "## Differences from `base`" in text and "| ddpo | -56.7 [" in text
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_against_itself_is_zero(runs):
  c = compare.compare([runs[0], runs[0]], resamples=100)
  assert c.runs == ["base", "base #2"]
  for diff in c.differences["base #2"].values():
    assert isinstance(diff, bootstrap.Difference)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
  assert "+0.0 [+0.0, +0.0]" in compare.markdown(c)


def test_other_benchmark_files_warn_naming_them(runs, tmp_path):
  other = write_run(tmp_path / "e3e3926", ["yes"] * 6, [(1, 0)] * 3, ["No"] * 4,
                    pope_files=dict(POPE_FILES, random="f" * 64))
  c = compare.compare([runs[0], other], resamples=50)
  (warning,) = c.warnings
  assert "coco_pope_random.json (aaaaaaaaaaaa vs ffffffffffff)" in warning
  assert "coco_pope_popular.json" not in warning and "e3e3926" in warning
  assert c.differences["e3e3926"]["POPE F1"] == "different files"
  assert isinstance(c.differences["e3e3926"]["CHAIR_s"], bootstrap.Difference)
  text = compare.markdown(c)
  assert "## Warnings" in text and "coco_pope_random.json" in text
  assert "— (different files)" in text
  assert c.values["e3e3926"]["POPE accuracy"] == pytest.approx(0.5)  # still tabled


def test_different_items_or_no_item_file_give_no_interval(runs, tmp_path):
  fewer = write_run(tmp_path / "skipped", ["yes"] * 6, [(1, 0)] * 3, ["No"] * 4,
                    drop=("random/4",))
  (runs[1] / evals.scored_file("objhal")).unlink()
  c = compare.compare([runs[0], fewer, runs[1]], resamples=50)
  assert c.differences["skipped"]["POPE F1"] == "different items"
  assert c.differences["ddpo"]["CHAIR_s"] == "no per-item values"
  assert isinstance(c.differences["ddpo"]["POPE F1"], bootstrap.Difference)
  assert any("no per-item file" in w and "objhal_scored.jsonl" in w for w in c.warnings)
  # A per-item file that does not give the results' figure is not used either.
  rows = (runs[1] / evals.scored_file("pope")).read_text().replace('"no"', '"yes"')
  (runs[1] / evals.scored_file("pope")).write_text(rows)
  c = compare.compare([runs[0], runs[1]], resamples=50)
  assert c.differences["ddpo"]["POPE F1"] == "per-item values disagree"


def test_missing_or_unreadable_results_are_errors_naming_the_path(runs, tmp_path, capsys):
  missing = tmp_path / "nowhere"
  with pytest.raises(ValueError, match=f"{missing / evals.RESULTS_JSON}: no such"):
    compare.compare([runs[0], missing])
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / evals.RESULTS_JSON).write_text("{not json")
  with pytest.raises(ValueError, match=f"{broken / evals.RESULTS_JSON}: unreadable"):
    compare.compare([broken])
  with pytest.raises(SystemExit) as exit_info:
    compare.main([str(runs[0]), str(missing), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  assert str(missing / evals.RESULTS_JSON) in capsys.readouterr().err


def test_the_command_writes_the_table_and_the_plot(runs, tmp_path, capsys):
  out = tmp_path / "cmp"
  assert compare.main([str(runs[0]), str(runs[1]), "--out", str(out), "--names",
                       "sft,ddpo", "--resamples", "50"]) == 0
  assert "| sft | 90.0 |" in (out / compare.MARKDOWN).read_text()
  assert (out / compare.PLOT).stat().st_size > 1000
  assert str(out / compare.MARKDOWN) in capsys.readouterr().out
  assert math.isnan(compare.value({"splits": {}}, compare.METRICS[0]))  # no split scored
