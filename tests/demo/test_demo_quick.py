"""End to end: the README's demo command with the `quick` variant, as a subprocess.

Runs `python -m rlhfv_jax.main --config configs/demo.py:quick --workdir DIR` on one
CPU device (the suite's forced 4-device flag is removed: the demo is a single-device
program), then checks every artefact and that DDPO moved the policy away from the
hallucinated answers of its own starting point, the VQA-tuned SFT model.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from rlhfv_jax.demo import metrics, pipeline

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_quick_demo(workdir: pathlib.Path) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
      [sys.executable, "-m", "rlhfv_jax.main", "--config", "configs/demo.py:quick",
       "--workdir", str(workdir)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_quick_demo_end_to_end(tmp_path):
  workdir = tmp_path / "demo"
  proc = _run_quick_demo(workdir)
  assert proc.returncode == 0, proc.stderr[-4000:]

  # Progress: one line per finished stage.
  for stage in ("data", "sft_web"):
    assert f"base (seed 0), stage {stage} done in" in proc.stderr, stage
  for stage in ("data", "sft_vqa", "feedback", "reference") + pipeline.ARMS:
    assert f"seed 0, stage {stage} done in" in proc.stderr, stage

  # The report.
  for name in ("ablation.md", "ablation.csv", "ablation_per_seed.csv", "ablation.png",
               "results.json", "tokenizer.model", "demo_config.json"):
    assert (workdir / name).is_file(), name
  table = (workdir / "ablation.md").read_text()
  results = json.loads((workdir / "results.json").read_text())
  assert results["seeds"] == [0]
  for model in pipeline.MODELS:
    assert f"| {results['models'][model]['label']} |" in table
    (run,) = results["models"][model]["per_seed"]  # the shared base model or seed 0
    assert run == ("base" if model == "sft_web" else "0")
    assert set(metrics.METRIC_NAMES) <= set(results["models"][model]["per_seed"][run])
  rows = list(csv.DictReader((workdir / "ablation.csv").open()))
  assert [r["arm"] for r in rows] == list(pipeline.MODELS)
  png = np.asarray(Image.open(workdir / "ablation.png"))
  assert png.ndim == 3 and png.std() > 0

  # The data, runs and evaluation logs of the base model and the seed.
  base_dir, seed_dir = workdir / "base", workdir / "seed_0"
  assert (base_dir / "data" / "web" / "train.jsonl").stat().st_size > 0
  for dataset in ("vqa", "feedback"):
    assert (seed_dir / "data" / dataset / "train.jsonl").stat().st_size > 0
  feedback = results["feedback"]["0"]
  assert feedback["corrected"] == len(
      (seed_dir / "data" / "feedback" / "train.jsonl").read_text().splitlines())
  assert feedback["corrected"] + feedback["clean"] + feedback["unfinished"] == feedback["samples"]
  for model in pipeline.MODELS:
    run_dir = base_dir if model == "sft_web" else seed_dir
    assert (run_dir / model / "metrics.jsonl").is_file(), model
    assert (run_dir / model / "config.json").is_file(), model
    logged = (run_dir / "eval" / f"{model}.jsonl").read_text().splitlines()
    assert len(logged) == results["eval_scenes"]
  assert list((seed_dir / "tfds").rglob("ref_logps-*.npz"))

  # DDPO lowered the likelihood of the hallucinated answers against its own SFT starting
  # point (the frozen reference): on the corrected pairs the policy now prefers the
  # corrections more than sft_vqa did, and it made the rejected answers less likely.
  # (The held-out CHAIR drop is measured by the full demo: a 2-minute base model has not
  # learnt to look at the image yet, so its held-out hallucination rate is ~0.85 either
  # way and moves by noise.)
  for arm in ("ddpo_mean", "ddpo_sum"):
    final = json.loads((seed_dir / arm / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["rewards/margin"] > 0 and final["rewards/accuracy"] > 0.5, (arm, final)
    assert final["logps/policy_rejected"] < final["logps/ref_rejected"], (arm, final)
  # Held-out metrics exist and are rates.
  for model in pipeline.MODELS:
    for value in results["models"][model]["per_seed"].values():
      assert 0.0 <= value["chair_s"] <= 1.0 and 0.0 <= value["recall"] <= 1.0
