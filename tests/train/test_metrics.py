"""Metrics: JSONL + TensorBoard records, window means, rate/ETA line, token counting."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import toy_model
from rlhfv_jax.train import metrics as metrics_lib


def test_writer_appends_jsonl_and_writes_tensorboard_events(tmp_path):
  writer = metrics_lib.MetricsWriter(tmp_path)
  writer.write(10, {"loss": np.float32(0.5), "rewards/margin": 1.25})
  writer.close()
  resumed = metrics_lib.MetricsWriter(tmp_path)  # a resumed run appends to the same log
  resumed.write(20, {"loss": 0.25}, prefix="eval/")
  resumed.close()
  assert metrics_lib.read_jsonl(tmp_path) == [
      {"step": 10, "loss": 0.5, "rewards/margin": 1.25}, {"step": 20, "eval/loss": 0.25}]
  events = glob.glob(os.path.join(tmp_path, metrics_lib.TENSORBOARD_DIR, "events.out.tfevents.*"))
  assert events and all(os.path.getsize(e) > 0 for e in events)


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricsWriter(tmp_path / "run", enabled=False)
  writer.write(1, {"loss": 1.0})
  assert not (tmp_path / "run").exists()


def test_window_mean_averages_and_keeps_last_counters():
  window = metrics_lib.WindowMean()
  window.add({"loss": 1.0, "learning_rate": 0.1, "nonfinite_total": 0.0})
  window.add({"loss": 3.0, "learning_rate": 0.2, "nonfinite_total": 1.0})
  assert window.pop() == {"loss": 2.0, "learning_rate": 0.2, "nonfinite_total": 1.0}
  assert not window


def test_throughput_rates_and_eta_line():
  now = [100.0]
  throughput = metrics_lib.Throughput(total_steps=100, start_step=20, clock=lambda: now[0])
  for _ in range(20):
    throughput.add(examples=32, tokens=1000)
  now[0] += 10.0
  rates = throughput.rates(40)
  assert rates == pytest.approx(
      {"steps_per_sec": 2.0, "examples_per_sec": 64.0, "tokens_per_sec": 2000.0})
  assert throughput.line(40, rates, loss=0.61234) == (
      "step 40/100 (40%) | loss 0.6123 | 2.00 steps/s | 64.0 examples/s | 2000 tokens/s | "
      "ETA 0:00:30")


def test_batch_size_and_tokens_counts_every_sequence():
  batch = toy_model.preference_batch(0, batch=4)
  examples, tokens = metrics_lib.batch_size_and_tokens(batch)
  assert examples == 4
  assert tokens == batch.chosen.attention_mask.sum() + batch.rejected.attention_mask.sum()
  sft = toy_model.sft_batch(0, batch=2)
  assert metrics_lib.batch_size_and_tokens(sft) == (2, sft.tokens.attention_mask.sum())
  # A shared-prefix row runs its prompt once: [prompt 3 | chosen 2 | rejected 4 | pad 1].
  chosen = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]], bool)
  rejected = np.array([[1, 1, 1, 0, 0, 1, 1, 1, 1, 0]], bool)
  shared = batch.replace(chosen=batch.chosen.replace(attention_mask=chosen),
                         rejected=batch.rejected.replace(attention_mask=rejected),
                         shared_prefix=True)
  assert metrics_lib.batch_size_and_tokens(shared)[1] == 9


def test_compile_counter_counts_compilations_in_its_block():
  import jax
  import jax.numpy as jnp
  counter = metrics_lib.CompileCounter()
  double = jax.jit(lambda x: x * 2 + 1)
  three, five = jnp.ones(3), jnp.ones(5)  # made outside: creating them compiles too
  with counter.counting():
    double(three)
    double(three)  # cached
    double(five)  # a new shape
  assert counter.count == 2
  jax.jit(lambda x: x - 1)(three)  # outside the block: not counted
  with counter.counting():
    double(five)
  assert counter.count == 2
