"""End to end: the README's demo command with the `quick` variant, as a subprocess.

Runs `python -m rlhfv_jax.main --config configs/demo.py:quick --workdir DIR` on one
CPU device with default XLA flags (the suite's test-only flags are removed: the demo is
a single-device program), then checks every artefact and that DDPO lowered the held-out
hallucination rate of its own starting point, the VQA-tuned SFT model, without saying
less, with margins that hold on any machine (see the bounds' comment); then runs the
iterate study (`configs/demo.py:quick,iterate`) in the same workdir and checks that it
trained only what is new, its rounds, and its labeler against the world's truth. The
two runs take ~4.5 + ~1.6 min on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import config_files
from rlhfv_jax import jsonl
from rlhfv_jax.annotate import export as export_lib
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.demo import ablation, iteration, oracle, scoring, stats, world
from rlhfv_jax.demo.runs import ARMS, CONTROL, MODELS
from rlhfv_jax.stages import label as label_stage

pytestmark = pytest.mark.slow  # subprocesses / stages end to end

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_quick_demo(workdir: pathlib.Path, env: dict[str, str], arg: str = "quick"
                    ) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "rlhfv_jax.main", "--config", f"configs/demo.py:{arg}",
       "--workdir", str(workdir)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)


def test_quick_demo_end_to_end(tmp_path, user_env):
  # The demo runs as a user runs it: without the suite's test-only XLA flags (under
  # optimisation level 0 its 1200-step base model runs >2x slower).
  workdir = tmp_path / "demo"
  proc = _run_quick_demo(workdir, user_env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  check_quick_demo(workdir, proc.stderr)
  # Then the iterate study in the same workdir, as the config's docstring says: it
  # resumes the ablation's runs and trains only what is new (~1.6 min).
  checkpoints = {m: sorted(p.stat().st_mtime_ns for p in
                           (workdir / "seed_0" / m / "checkpoints").rglob("*"))
                 for m in ("sft_web", "sft_vqa", "ddpo_mean")}
  proc = _run_quick_demo(workdir, user_env, "quick,iterate")
  assert proc.returncode == 0, proc.stderr[-4000:]
  for model, times in checkpoints.items():  # found finished, not trained again
    assert sorted(p.stat().st_mtime_ns for p in (workdir / "seed_0" / model / "checkpoints")
                  .rglob("*")) == times, model
  check_quick_iterate(workdir, proc.stderr)


def check_quick_demo(workdir: pathlib.Path, log: str) -> None:
  """Checks a finished quick demo's workdir and console log."""

  # Progress: one line per finished stage.
  for stage in ("data", "perception"):
    assert f"shared (seed 0), stage {stage} done in" in log, stage
  for stage in ("sft_web", "data", "sft_vqa", "feedback", "reference") + ARMS:
    assert f"seed 0, stage {stage} done in" in log, stage
  # The crop arm's warning comes when that arm runs, not from validating it up front.
  crop_starts = log.index("seed 0, stage ddpo_crop (")
  assert "ABLATION: random crop" in log[crop_starts:log.index("seed 0, stage ddpo_crop done")]
  assert "ABLATION: random crop" not in log[:crop_starts]

  # The report.
  for name in ("ablation.md", "ablation.csv", "ablation_per_seed.csv",
               "ablation_differences.csv", "ablation.png", "results.json", "tokenizer.model",
               "demo_config.json"):
    assert (workdir / name).is_file(), name
  table = (workdir / "ablation.md").read_text()
  # Every comparison with its paired interval, recomputed here from the evaluation logs.
  differences = list(csv.DictReader((workdir / "ablation_differences.csv").open()))
  assert {(r["a"], r["b"]) for r in differences} == {
      (a, b) for a, b in ablation.COMPARISONS if CONTROL not in (a, b)}
  for row in differences:
    estimate, low, high = (float(row[k]) for k in ("estimate", "ci_low", "ci_high"))
    assert low <= estimate <= high, row
    a, b = (ablation.count_tables(workdir, m, [0])[0] for m in (row["a"], row["b"]))
    direct = stats.metric_from_sums(a.sum(0), row["metric"]) - stats.metric_from_sums(
        b.sum(0), row["metric"])
    assert abs(direct - estimate) < 1e-9, row
  assert "95% bootstrap intervals" in table
  results = json.loads((workdir / "results.json").read_text())
  assert results["seeds"] == [0]
  for model in MODELS:
    assert f"| {results['models'][model]['label']} |" in table
    (run,) = results["models"][model]["per_seed"]  # every model, the base too: seed 0
    assert run == "0"
    assert set(scoring.METRIC_NAMES) <= set(results["models"][model]["per_seed"][run])
  rows = list(csv.DictReader((workdir / "ablation.csv").open()))
  assert [r["arm"] for r in rows] == list(MODELS)
  png = np.asarray(Image.open(workdir / "ablation.png"))
  assert png.ndim == 3 and png.std() > 0

  # The shared captions and tower; the runs and evaluation logs of the seed.
  shared_dir, seed_dir = workdir / "shared", workdir / "seed_0"
  assert (shared_dir / "data" / "web" / "train.jsonl").stat().st_size > 0
  assert (shared_dir / "perception" / "perception.json").is_file()
  assert (seed_dir / "data" / "vqa" / "train.jsonl").stat().st_size > 0
  feedback = results["feedback"]["0"]
  pairs = seed_dir / "feedback_export" / "preference" / "train.jsonl"
  assert feedback["corrected"] == len(pairs.read_text().splitlines()) > 0
  assert feedback["corrected"] + feedback["clean"] + feedback["unfinished"] + feedback["emptied"] == (
      feedback["samples"])
  # The feedback went through the annotation store: the oracle annotated every finished
  # description there, and the DDPO data is the store's export.
  store = store_lib.AnnotationStore(seed_dir / "annotations.sqlite")
  annotations = store.annotations()
  assert len(annotations) == len(store.items()) == feedback["samples"] - feedback["unfinished"]
  assert {a.annotator for a in annotations} == {"oracle"}
  assert sum(a.verdict == "corrected" for a in annotations) == feedback["corrected"]
  for model in MODELS:
    assert (seed_dir / model / "metrics.jsonl").is_file(), model
    assert (seed_dir / model / "config.json").is_file(), model
    logged = (seed_dir / "eval" / f"{model}.jsonl").read_text().splitlines()
    assert len(logged) == results["eval_scenes"]
  assert list((seed_dir / "tfds").rglob("ref_logps-*.npz"))

  # What must hold on any machine. The quick run's trajectory depends on float rounding
  # (CPU model, kernel blocking), so every bound below is set well inside what base seeds
  # 0-4 and perturbed numerics (SSE4.2-only kernels; fast-math on one core) all measured
  # (docs/results.md, "The quick variant (CI)"); none sits at an edge.
  per_seed = {m: results["models"][m]["per_seed"] for m in MODELS}
  # The base model can see: it names the objects that are there (the pretrained, frozen
  # tower: one trained from scratch sits at the edge of learning shapes, and on one
  # machine never learnt them: recall 0.62, CHAIR_i 0.38; docs/decisions.md).
  web = per_seed["sft_web"]["0"]
  assert web["recall"] >= 0.9 and web["chair_i"] <= 0.15, web
  sft = per_seed["sft_vqa"]["0"]
  assert sft["chair_i"] > 0.0, sft  # there was something to correct
  for arm in ("ddpo_mean", "ddpo_sum"):
    ddpo = per_seed[arm]["0"]
    # Held out, per arm: fewer responses with a hallucination, without saying less.
    assert ddpo["chair_s"] <= 0.9 * sft["chair_s"], (arm, ddpo, sft)
    assert ddpo["recall"] >= 0.8 * sft["recall"], (arm, ddpo, sft)
    assert ddpo["avg_words"] >= 0.8 * sft["avg_words"], (arm, ddpo, sft)
    # On its training pairs it prefers the corrections, having made the hallucinated
    # answers less likely than the reference (sft_vqa) finds them.
    final = json.loads((seed_dir / arm / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["rewards/margin"] > 0 and final["rewards/accuracy"] >= 0.75, (arm, final)
    assert final["logps/policy_rejected"] < final["logps/ref_rejected"], (arm, final)
  # Held out, both normalizations together (less noisy than one arm): CHAIR_i down by
  # at least 15% of the VQA-SFT start.
  pooled = (per_seed["ddpo_mean"]["0"]["chair_i"] + per_seed["ddpo_sum"]["0"]["chair_i"]) / 2
  assert pooled <= 0.85 * sft["chair_i"], (pooled, sft)
  # Every held-out metric is a rate.
  for runs in per_seed.values():
    for value in runs.values():
      assert 0.0 <= value["chair_s"] <= 1.0 and 0.0 <= value["recall"] <= 1.0


def _words(text: str) -> list[str]:
  return [w.strip(".,").lower() for w in text.split()]


def _feedback_scenes(config) -> dict[str, world.Scene]:
  """The quick demo's seed-0 feedback scenes, drawn as `make_context` and
  `chain.feedback_scenes` draw them."""
  w = config.demo.world
  eval_scenes = world.sample_scenes(w.eval_seed, w.num_eval_scenes, "eval", w.min_objects,
                                    w.max_objects)
  val_scenes = world.sample_scenes(config.demo.validation.seed,
                                   config.demo.validation.num_scenes, "val", w.min_objects,
                                   w.max_objects, exclude=eval_scenes)
  scenes = world.sample_scenes(20_000, w.num_feedback_scenes, "feedback0", w.min_objects,
                               w.max_objects, exclude=list(eval_scenes) + list(val_scenes))
  return {s.scene_id: s for s in scenes}


def check_quick_iterate(workdir: pathlib.Path, log: str) -> None:
  """Checks the quick iterate study run in a finished quick demo's workdir."""
  config = config_files.load("demo.py", "quick,iterate")
  rounds = config.demo.iterate.rounds
  for stage in ("labeler data", "labeler", "ai data", "ai_ranking") + tuple(
      f"ai round {k}" for k in range(1, rounds + 1)):
    assert f"seed 0, stage {stage} done in" in log, stage
  for name in ("iterate.md", "iterate.csv", "iterate_per_seed.csv", "iterate_differences.csv",
               "iterate.png", "iterate_results.json"):
    assert (workdir / name).is_file(), name
  results = json.loads((workdir / "iterate_results.json").read_text())
  ablation_results = json.loads((workdir / "results.json").read_text())
  # The oracle's round and the VQA start are the ablation's runs, scored the same.
  for model in ("sft_vqa", "ddpo_mean"):
    assert results["models"][model]["per_seed"] == ablation_results["models"][model]["per_seed"]
  assert set(results["models"]) == set(iteration.models(config))
  table = (workdir / "iterate.md").read_text()
  assert "**Goal: 2 round(s) of AI-feedback DDPO" in table
  ai = workdir / "seed_0" / "ai_feedback"
  assert (ai / "rounds" / "iterate_report.md").is_file()

  # The labeler against the world's truth, recomputed here by the oracle's reading of each
  # claim's mention (not the study's `claim_is_true`).
  scenes = _feedback_scenes(config)
  prompt_set = [json.loads(l) for l in (ai / "questions.jsonl").read_text().splitlines()]
  assert len(prompt_set) == config.demo.iterate.num_scenes
  assert {q["id"] for q in prompt_set} <= set(scenes)
  for k in range(1, rounds + 1):
    directory = ai / "rounds" / f"round_{k}"
    answers = {i.id: i.answer for i in
               store_lib.AnnotationStore(directory / "annotations.sqlite").items()}
    assert len(answers) == config.demo.iterate.num_scenes * config.demo.iterate.num_samples
    counts = dict(claims=0, false=0, rejected=0, rejected_false=0)
    for _, row in jsonl.read_objects(directory / "label" / label_stage.VERDICTS_FILE):
      text = answers[row["item_id"]]
      scene = scenes[row["item_id"].rsplit("#", 1)[0]]
      parsed = oracle.parse_description(text)
      for claim in row["claims"]:
        assert claim["failed"] == (claim["p_no"] > claim["p_yes"])  # the verdict rule
        if claim["object"] == iteration.ANY_OBJECT and claim["kind"] == "count":
          # "There are three objects ...", as the oracle reads the count.
          stated = next(c for c in parsed.count_claims
                        if c.number_word.start == claim["span"][0])
          false = stated.count != len(scene.objects)
        elif claim["object"] == iteration.ANY_OBJECT:  # "There is one object": true
          false = False
        else:
          mention = next(m for m in parsed.mentions
                         if m.span[0] <= claim["span"][0] < m.span[1])
          present = oracle.ground_mention(mention, scene).exists
          # (A scene holds each colour-shape once: "two red circles" is false.)
          false = present != (claim["expected"] == "yes") or claim["kind"] == "count"
        counts["claims"] += 1
        counts["false"] += false
        counts["rejected"] += claim["failed"]
        counts["rejected_false"] += false and claim["failed"]
    assert results["labeler"]["0"][str(k)] == counts, k
    # The labeler's corrections only delete what it rejected: the corrected answer's words
    # are the original's in order, fewer of them.
    store = store_lib.AnnotationStore(directory / "annotations.sqlite")
    corrected = [a for a in store.annotations() if a.verdict == "corrected"]
    assert corrected and {a.annotator for a in store.annotations()} == {"ai:labeler"}
    for a in corrected:
      original, words = _words(a.original), _words(a.corrected)
      kept = iter(original)
      assert len(words) < len(original) and all(w in kept for w in words), a
    # Each round trains from the last round's policy, which is its reference too.
    ddpo = json.loads((directory / "ddpo" / "config.json").read_text())
    reference = json.loads((directory / "reference" / "config.json").read_text())
    start = (workdir / "seed_0" / "sft_vqa" if k == 1
             else ai / "rounds" / f"round_{k - 1}" / "ddpo")
    assert ddpo["init"]["checkpoint_dir"] == reference["init"]["checkpoint_dir"] == str(start)
    assert ddpo["data"]["source_dir"] == str(directory / "export" / "preference")
    logged = (workdir / "seed_0" / "eval" / f"ai_round_{k}.jsonl").read_text().splitlines()
    assert len(logged) == results["eval_scenes"]
  # The ranking run: round 1's ranking pairs alone, from sft_vqa.
  report = json.loads((ai / "ranking" / "export" / export_lib.REPORT).read_text())
  first = json.loads((ai / "rounds" / "round_1" / "export" / export_lib.REPORT).read_text())
  assert report["pairs"] == report["pairs_by_source"]["ai_ranking"] > 0
  assert report["pairs_left_out_by_source"]["ai"] == first["pairs"]

  # What must hold on any machine: the labeler, a model trained on VQA pairs alone, tells
  # hallucinated claims from true ones far better than chance (a labeler that rejects
  # claims at random has precision = the share of false claims, ~0.2 here) and finds
  # most of them. Round 1 measured precision 0.71, recall 0.74 here (400 steps; 0.74 /
  # 0.79 with 800), and 0.59-0.89 / 0.79-0.90 for the full demo's 3 seeds (800 steps;
  # docs/results.md). What the rounds do to the
  # policy is not bounded: the quick VQA start often stops mid-description, and the AI
  # rounds raise its CHAIR_s (one training run; docs/results.md).
  first_round = results["labeler"]["0"]["1"]
  precision = first_round["rejected_false"] / first_round["rejected"]
  recall = first_round["rejected_false"] / first_round["false"]
  assert precision >= 2 * first_round["false"] / first_round["claims"], first_round
  assert recall >= 0.5, first_round
