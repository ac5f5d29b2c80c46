"""`python -m rlhfv_jax.main` end to end, in subprocesses, on configs/tiny_cpu.py.

The expensive parts are process start-up and XLA compilation; the runs share a
persistent compilation cache (the SFT step has no host callback, so it is cacheable),
which makes every run after the first one cheaper.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import config_files
import main_run_data
from rlhfv_jax import model as model_lib
from rlhfv_jax.train import checkpointing
from rlhfv_jax.stages import config_validation
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.stages import evaluate
from rlhfv_jax.stages import reference as reference_stage

pytestmark = pytest.mark.slow  # subprocesses / stages end to end

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = "configs/tiny_cpu.py"
NUM_STEPS = 6  # configs/tiny_cpu.py: train.num_steps, checkpoint.every_steps = 2


def main_command(config: str, workdir: pathlib.Path, *flags: str) -> list[str]:
  return [sys.executable, "-m", "rlhfv_jax.main", f"--config={config}",
          f"--workdir={workdir}", *flags]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
  cache = tmp_path_factory.mktemp("jax_cache")
  # XLA_FLAGS (4 forced CPU devices, ...) come from tests/conftest.py.
  assert "--xla_force_host_platform_device_count=4" in os.environ["XLA_FLAGS"]
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def run_main(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def final_params(workdir: pathlib.Path, model_config) -> dict:
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", save_every_steps=1)
  assert ckpt.latest_step() == NUM_STEPS
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = model_lib.param_shapes(model_config)
  target = checkpointing.abstract_with_shardings(shapes, jax.tree.map(lambda _: sharding, shapes))
  return jax.tree.map(np.asarray, ckpt.restore_params(NUM_STEPS, target))


def tiny_config(variant: str):
  """configs/tiny_cpu.py's config, read from the file itself."""
  return config_files.load(pathlib.Path(TINY).name, variant)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory, llama_tokenizer_path) -> list[str]:
  return main_run_data.overrides(tmp_path_factory.mktemp("data"), llama_tokenizer_path, "sft")


@pytest.fixture(scope="module")
def uninterrupted_sft(env, sft_data, tmp_path_factory) -> pathlib.Path:
  """A complete SFT run on the FSDP mesh: the reference of the resume test."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run_main(env, *main_command(f"{TINY}:sft", workdir, "--config.train.parallelism=fsdp",
                              *sft_data))
  return workdir


def test_sigkill_then_restart_ends_with_the_same_params(env, sft_data, uninterrupted_sft,
                                                        tmp_path):
  workdir = tmp_path / "killed"
  command = main_command(f"{TINY}:sft", workdir, "--config.train.parallelism=fsdp", *sft_data)
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    # Orbax renames a step's directory into place only when it is complete.
    while not (workdir / "checkpoints" / "2").is_dir():
      assert proc.poll() is None, "the run ended before it could be killed"
      assert time.monotonic() < deadline, "no checkpoint appeared"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = checkpointing.Checkpointer(workdir / "checkpoints", save_every_steps=1).latest_step()
  assert killed_at < NUM_STEPS

  resumed = run_main(env, *command)
  assert f"resuming from checkpoint step {killed_at}" in resumed.stderr

  model_config = tiny_config("sft").model
  want = final_params(uninterrupted_sft, model_config)
  got = final_params(workdir, model_config)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # Same batches in the same order after the restart: identical per-step losses.
  losses = lambda d: {r["step"]: r["loss"] for r in metrics_lib.read_jsonl(d)}
  after = {s: l for s, l in losses(workdir).items() if s > killed_at}
  assert after and all(after[s] == losses(uninterrupted_sft)[s] for s in after)


def test_reference_cache_from_a_trained_run_then_eval(uninterrupted_sft, tmp_path,
                                                       llama_tokenizer_path):
  """precompute_ref from the SFT run's checkpoint, then eval of the same params with
  the cached reference: policy == reference, so the DDPO loss is exactly log 2 and
  every reward is 0, which only holds if cache and batches line up token for token and
  evaluation sees un-augmented images.
  (In-process: the stage functions `main` dispatches to.)"""
  data = main_run_data.data_settings(tmp_path, llama_tokenizer_path, "preference")
  init = dict(params="checkpoint", checkpoint_dir=str(uninterrupted_sft))
  reference = tiny_config("precompute_ref")
  reference.data.update(data)
  reference.init.update(init)
  shard = reference_stage.run(reference, str(tmp_path / "ref"))
  assert pathlib.Path(shard).is_file()

  evaluation = tiny_config("eval")
  # Training-time augmentation must not reach evaluation: with jittered images the
  # policy would no longer equal the (un-augmented) cached reference.
  evaluation.data.update(data, use_ref_cache=True, augmentation="photometric")
  evaluation.init.update(init)
  config_validation.validate_config(evaluation)
  returned = evaluate.run(evaluation, str(tmp_path / "eval"))
  results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
  assert results == dict(returned, split="train",
                         init=f"checkpoint:{uninterrupted_sft}@-1")
  assert results["examples"] == 24
  assert results["loss"] == pytest.approx(np.log(2), abs=1e-5)
  assert results["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
  assert results["logps/policy_chosen"] == pytest.approx(results["logps/ref_chosen"], abs=1e-5)
  assert results["logps/policy_chosen"] < 0

  # 24 examples in batches of 16: the padded half of the second batch is masked out, so
  # every example counts exactly once and the means are those of the batches of 4.
  evaluation.eval.batch_size = 16
  padded = evaluate.run(evaluation, str(tmp_path / "eval16"))
  assert padded["examples"] == 24
  for key, value in returned.items():
    if key == "rewards/accuracy":  # here a strict ">" between two rewards of ~1e-8
      continue
    assert padded[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_overrides_reach_the_config(env):
  proc = run_main(env, *main_command(f"{TINY}:fsdp", pathlib.Path("/unused"), "--print_config",
                                     "--config.ddpo.gamma=2.5", "--config.train.mesh.fsdp=4",
                                     "--config.train.mesh.data=1",
                                     "--config.optim.frozen=('vision_tower','multi_modal_projector')",
                                     "--config.data.data_dir=/d", "--config.data.tokenizer=/t"))
  config = json.loads(proc.stdout)
  assert config["ddpo"]["gamma"] == 2.5
  assert config["ddpo"]["beta"] == 0.5  # untouched defaults stay
  assert config["train"]["mesh"] == {"data": 1, "fsdp": 4, "min_fsdp_size": 2 ** 14}
  assert config["train"]["parallelism"] == "fsdp"  # from the :fsdp variant
  assert config["optim"]["frozen"] == ["vision_tower", "multi_modal_projector"]


def test_invalid_config_is_refused_naming_the_fields(env):
  proc = run_main(env, *main_command(TINY, pathlib.Path("/unused"), "--config.ddpo.gamma=0.5",
                                     "--config.train.global_batch_size=6"), check=False)
  assert proc.returncode == 1
  assert "ddpo.gamma=0.5: gamma < 1" in proc.stderr
  assert "train.global_batch_size=6 is not divisible by 4 devices" in proc.stderr
  assert "data.data_dir is empty" in proc.stderr
  assert "stages (config.stage):" in proc.stderr


def test_a_checkpoint_without_a_model_config_is_refused_cleanly(env, tmp_path):
  """The recipes follow the checkpoint's architecture: a path without config.json is a
  one-line error, not a traceback."""
  proc = run_main(env, *main_command("configs/llava15_ddpo.py", tmp_path, "--print_config",
                                     f"--config.init.hf_checkpoint={tmp_path / 'none'}"),
                  check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "init: cannot read the checkpoint" in proc.stderr


def test_without_a_config_it_lists_stages_and_configs(env):
  proc = run_main(env, sys.executable, "-m", "rlhfv_jax.main", check=False)
  assert proc.returncode == 1
  for name in ("sft", "precompute_ref", "ddpo", "eval", "configs/llava15_ddpo.py",
               "configs/tiny_cpu.py"):
    assert name in proc.stdout
