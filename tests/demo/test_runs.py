"""Tests of the demo's run names, labels and paths."""

from __future__ import annotations

import pathlib

import pytest

from rlhfv_jax.demo import runs, settings
from rlhfv_jax.demo.runs import Run


def test_run_names_are_the_directory_names():
  assert Run("dpo").name == "dpo"
  assert Run("sft_vqa", candidate=1).name == "sft_vqa#1"
  assert Run("dpo", budget=25).name == "dpo%25"
  assert Run("sft_vqa", candidate=1).validation_name == "sft_vqa#1@val"
  assert Run("sft_web").validation_name == "sft_web@val"
  assert [Run(s).runner_stage for s in runs.STAGES] == (
      ["sft"] * 3 + ["precompute_ref", "sft"] + ["ddpo"] * len(runs.ARMS))  # (labeler)
  assert runs.ai_paths(pathlib.Path("/w"), 3).rounds == pathlib.Path(
      "/w/seed_3/ai_feedback/rounds")
  assert runs.ai_round(2) == "ai_round_2"
  assert [s for s in runs.STAGES if Run(s).is_base] == list(runs.BASE_MODELS)
  paths = runs.seed_paths(pathlib.Path("/w"), 3)
  assert paths.run(Run("ddpo_mean", budget=50)) == pathlib.Path("/w/seed_3/ddpo_mean%50")
  assert paths.eval(Run("sft_web").validation_name) == pathlib.Path(
      "/w/seed_3/eval/sft_web@val.jsonl")
  assert runs.shared_paths(pathlib.Path("/w")).perception == pathlib.Path(
      "/w/shared/perception")
  assert Run("dpo", candidate=2).name == "dpo#2"
  assert Run("sft_web").sampled_name == "sft_web~T"


@pytest.mark.parametrize("stage, kwargs, match", [
    ("sft", {}, "expected one of"),
    ("sft_web", dict(candidate=0), "candidate is a setting of 'sft_vqa' or of an arm"),
    ("sft_vqa", dict(budget=25), "budget is a setting of an arm"),
])
def test_run_refuses_what_no_stage_has(stage, kwargs, match):
  with pytest.raises(ValueError, match=match):
    Run(stage, **kwargs)


def test_sweep_runs_follow_the_config():
  config = settings.default_config()
  sweep = config.demo.sweep
  assert [r.name for r in runs.vqa_candidate_runs(config)] == [
      f"sft_vqa#{k}" for k in range(len(sweep.vqa_candidates))]
  assert [r.name for r in runs.budget_runs(config)] == [
      f"{arm}%{b}" for arm in sweep.arms for b in sweep.budgets]
  assert [r.name for r in runs.schedule_runs(config)] == [
      f"{arm}#{k}" for arm in sweep.arms for k in range(len(sweep.schedules))]


def test_arm_labels_follow_gamma():
  config = settings.default_config()
  config.ddpo.gamma = 3.0
  labels = runs.model_labels(config)
  assert labels["ddpo_mean"] == "+ DDPO (γ=3, weighted mean)"
  assert set(runs.MODELS) | {runs.CONTROL} <= set(labels)
  assert labels["ddpo_mean%25"] == "+ DDPO (γ=3, weighted mean), 25% of the pairs"
  config.demo.sweep.schedules = (dict(num_epochs=0.5, learning_rate=3e-5),)
  assert runs.model_labels(config)["dpo#0"] == "+ DPO (γ=1), learning_rate=3e-05, num_epochs=0.5"
  assert runs.models(config) == runs.MODELS  # the full demo: no control base
  config.demo.control_base = True
  assert runs.models(config) == (runs.CONTROL,) + runs.MODELS
