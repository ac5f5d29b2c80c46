"""A DDPO run with the shared prompt prefix (the default) trains like the unshared layout:
the same metrics step by step, on the pmap path and the FSDP mesh path, with the reference
forward inside the step or from a reference cache computed in the other layout."""

from __future__ import annotations

import numpy as np
import pytest

import config_files
import main_run_data
from rlhfv_jax.train import metrics
from rlhfv_jax.stages import runner, training

pytestmark = pytest.mark.slow  # subprocesses / stages end to end

KEYS = ("loss", "rewards/margin", "rewards/chosen", "logps/policy_rejected", "logps/ref_chosen")


def _run(tmp_path, name, variant, data, **data_overrides):
  config = config_files.load("tiny_cpu.py", variant)
  config.data.update(data, **data_overrides)
  config.train.update(num_steps=3, log_every=1)
  config.checkpoint.every_steps = 100
  if data_overrides.get("use_ref_cache"):
    precompute = config_files.load("tiny_cpu.py", "precompute_ref")
    precompute.data.update(data)  # default layout: shared prefix
    runner.run(precompute, str(tmp_path / f"{name}_ref"))
  training.run(config, str(tmp_path / name))
  rows = [r for r in metrics.read_jsonl(tmp_path / name) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3], rows
  return {k: np.array([r[k] for r in rows]) for k in KEYS}


@pytest.mark.parametrize("variant", ["ddpo", "fsdp"])
def test_shared_prefix_run_matches_the_unshared_run(tmp_path, llama_tokenizer_path, variant):
  data = main_run_data.data_settings(tmp_path / "data", llama_tokenizer_path)
  runs = {"shared": _run(tmp_path, "shared", variant, data),
          "unshared": _run(tmp_path, "unshared", variant, data, shared_prefix=False)}
  if variant == "ddpo":  # an unshared run on the reference cache of a shared pass
    runs["unshared_cached"] = _run(tmp_path, "cached", variant, data, shared_prefix=False,
                                   use_ref_cache=True)
  # The policy moved (lr 1e-3), so later steps compare trained parameters too.
  assert abs(runs["shared"]["logps/policy_rejected"][2]
             - runs["shared"]["logps/policy_rejected"][0]) > 1e-3
  for name, run in runs.items():
    for key in KEYS:
      np.testing.assert_allclose(run[key], runs["shared"][key], rtol=2e-4, atol=2e-5,
                                 err_msg=f"{name}: {key}")
