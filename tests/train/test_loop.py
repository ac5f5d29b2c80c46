"""The train loop: interrupted + resumed == uninterrupted (params, data position, RNG),
non-finite stop, data exhaustion, metrics records."""

from __future__ import annotations

import functools
import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

import toy_model
from rlhfv_jax import ddpo
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import loop
from rlhfv_jax.train import metrics as metrics_lib
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train import parallel as parallel_lib
from rlhfv_jax.train import preemption
from rlhfv_jax.train import step as step_lib
from rlhfv_jax.train.train_state import TrainState

TOTAL_STEPS = 6


class ToyBatches:
  """A resumable iterator: batch i is a pure function of i (like a seeded grain loader)."""

  def __init__(self, make_batch, limit=None):
    self.make_batch, self.limit, self.position = make_batch, limit, 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.limit is not None and self.position >= self.limit:
      raise StopIteration
    batch = self.make_batch(self.position)
    self.position += 1
    return batch

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


def noisy_ddpo_loss():
  """DDPO plus a term drawn from the step's RNG, so a wrong RNG on resume changes params."""
  ddpo_loss = ddpo.make_ddpo_loss(toy_model.apply_fn, ddpo.PAPER_HPARAMS)

  def loss_fn(params, ref_params, batch, rng):
    loss, metrics = ddpo_loss(params, ref_params, batch)
    noise = jax.random.normal(rng, params["language_model"]["head"].shape)
    return loss + 1e-2 * jax.numpy.sum(noise * params["language_model"]["head"]), metrics
  return loss_fn


@pytest.fixture(scope="module")
def setup():
  params = toy_model.init_params()
  optimizer, schedule, labels = optimizer_lib.make_optimizer(
      ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=1, max_grad_norm=1.0)),
      params, TOTAL_STEPS)
  make_step = functools.partial(step_lib.make_train_step, noisy_ddpo_loss(), optimizer,
                                schedule, trainable=optimizer_lib.trainable_mask(labels))
  parallel = parallel_lib.PmapParallel(make_step)
  init_state = lambda: TrainState.create(params, optimizer, jax.random.PRNGKey(42))
  return parallel, init_state, params


def run(setup, workdir, num_steps, make_batch=toy_model.preference_batch, limit=None,
        max_nonfinite=10):
  parallel, init_state, ref_params = setup
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", save_every_steps=2)
  batches = ToyBatches(make_batch, limit)
  state, start = loop.init_or_restore(parallel, lambda: parallel.put_state(init_state()),
                                      jax.eval_shape(init_state), ckpt, batches)
  writer = metrics_lib.MetricsWriter(workdir)
  try:
    state = loop.train(parallel, state, parallel.put_frozen_inputs(ref_params), batches,
                       start_step=start, checkpointer=ckpt, writer=writer,
                       settings=loop.LoopSettings(num_steps=num_steps, log_every=2,
                                                  max_consecutive_nonfinite=max_nonfinite))
  finally:
    writer.close()
    ckpt.close()
  return parallel.host_params(state), batches.position


def test_sigterm_saves_the_step_and_stops_then_the_run_resumes_exactly(setup, tmp_path):
  """One process: a SIGTERM (preemption notice) while batch 2 is drawn -> the checkpoint of
  step 3 (the step under way finishes) and `Preempted`; the SIGTERM handler is restored;
  re-running ends with the uninterrupted run's params."""
  straight, _ = run(setup, tmp_path / "a", TOTAL_STEPS)
  before = signal.getsignal(signal.SIGTERM)

  def make_batch(i):
    if i == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return toy_model.preference_batch(i)

  with pytest.raises(preemption.Preempted, match="checkpoint saved at step 3") as stop:
    run(setup, tmp_path / "b", TOTAL_STEPS, make_batch=make_batch)
  assert stop.value.step == 3
  assert signal.getsignal(signal.SIGTERM) is before
  saved = checkpointing.Checkpointer(tmp_path / "b" / "checkpoints", save_every_steps=2)
  assert saved.all_steps() == [2, 3]
  resumed, position = run(setup, tmp_path / "b", TOTAL_STEPS)
  assert position == TOTAL_STEPS
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_interrupted_and_resumed_equals_uninterrupted(setup, tmp_path):
  straight, position = run(setup, tmp_path / "a", TOTAL_STEPS)
  assert position == TOTAL_STEPS
  partial, _ = run(setup, tmp_path / "b", 3)      # stops after step 3 (saves 2 and 3)
  saved = checkpointing.Checkpointer(tmp_path / "b" / "checkpoints", save_every_steps=2)
  assert saved.all_steps() == [2, 3]
  resumed, position = run(setup, tmp_path / "b", TOTAL_STEPS)
  assert position == TOTAL_STEPS  # resumed at batch 3, not batch 0
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, partial, straight)))

  records = metrics_lib.read_jsonl(tmp_path / "a")
  assert [r["step"] for r in records] == [2, 4, 6]
  for key in ("loss", "grad_norm", "learning_rate", "rewards/accuracy", "rewards/margin",
              "steps_per_sec", "examples_per_sec", "tokens_per_sec", "nonfinite_total"):
    assert key in records[-1], key
  # The first part logged its last step (3); the resumed part appended 4 and 6.
  assert [r["step"] for r in metrics_lib.read_jsonl(tmp_path / "b")] == [2, 3, 4, 6]


def test_rng_matters_for_the_noisy_loss(setup, tmp_path):
  """Guards the test above: with another run seed the same data gives other params."""
  parallel, init_state, ref_params = setup
  other_seed = (parallel, lambda: init_state().replace(rng=jax.random.PRNGKey(0)), ref_params)
  a, _ = run(setup, tmp_path / "a", 2)
  b, _ = run(other_seed, tmp_path / "b", 2)
  assert not np.array_equal(a["language_model"]["head"], b["language_model"]["head"])


def test_consecutive_nonfinite_updates_stop_the_run(setup, tmp_path):
  def batches(i):
    batch = toy_model.preference_batch(i)
    if i >= 1:
      batch = batch.replace(pixel_values=np.full_like(batch.pixel_values, np.inf))
    return batch
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"stopping at step 4: 3 consecutive updates.*"
                     r"train.max_consecutive_nonfinite=3.*newest checkpoint: 4"):
    run(setup, tmp_path, TOTAL_STEPS, make_batch=batches, max_nonfinite=3)


def test_running_out_of_data_is_an_error(setup, tmp_path):
  with pytest.raises(loop.DataExhaustedError, match="ended after 2 batches, at step 2 of 6"):
    run(setup, tmp_path, TOTAL_STEPS, limit=2)


def test_one_compilation_per_shape_bucket():
  """Batches padded to 2 bucket lengths, interleaved: the loop compiles exactly twice
  (once per bucket, nothing else: metric fetches, batch placement and bookkeeping do
  not compile)."""
  compiled = []

  def on_event(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(kwargs.get("fun_name"))

  def loss_fn(params, frozen_inputs, batch, rng):
    del frozen_inputs, rng
    loss = jax.numpy.mean((params["w"] * batch["x"].mean(axis=1, keepdims=True)) ** 2)
    return loss, {}

  params = {"w": np.ones((4, 3), np.float32)}
  optimizer, schedule, _ = optimizer_lib.make_optimizer(
      ml_collections.ConfigDict(dict(learning_rate=1e-2)), params, 6)
  parallel = parallel_lib.PmapParallel(functools.partial(
      step_lib.make_train_step, loss_fn, optimizer, schedule))
  lengths = [8, 16, 8, 16, 16, 8]
  batches = ToyBatches(lambda i: {"x": np.full((4, lengths[i]), i, np.float32)})
  state = parallel.put_state(TrainState.create(params, optimizer, jax.random.PRNGKey(0)))
  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    loop.train(parallel, state, None, batches, start_step=0,
               settings=loop.LoopSettings(num_steps=len(lengths)))
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert len(compiled) == 2, compiled
