"""The train step: pmap and FSDP-mesh executions equal a single-device step; gradient
accumulation equals one big batch; frozen sub-trees; non-finite updates are skipped."""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
import pytest

import toy_model
from rlhfv_jax import ddpo
from rlhfv_jax.stages import defaults
from rlhfv_jax.train import objectives
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train import mesh as mesh_lib
from rlhfv_jax.train import parallel as parallel_lib
from rlhfv_jax.train import step as step_lib
from rlhfv_jax.train.train_state import TrainState

NUM_STEPS = 2


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """The default optimizer config, with a large lr and active clipping and decay."""
  config = defaults.base_config("ddpo", "tiny").optim
  config.update(dict(learning_rate=3e-2, warmup_fraction=0.0, end_lr_fraction=0.1, b2=0.99,
                     weight_decay=0.01, max_grad_norm=0.5, frozen=()), **overrides)
  return config


def build(objective: objectives.Objective, **optim_overrides):
  """(step factory taking axis_name, host initial state)."""
  params = toy_model.init_params()
  optimizer, schedule, labels = optimizer_lib.make_optimizer(
      optim_config(**optim_overrides), params, total_steps=10)
  make_step = functools.partial(
      step_lib.make_train_step, objective.loss_fn, optimizer, schedule,
      trainable=optimizer_lib.trainable_mask(labels), loss_weight_key=objective.loss_weight_key)
  state = jax.tree.map(np.asarray, TrainState.create(params, optimizer, jax.random.PRNGKey(0)))
  return make_step, state


def run_single_device(make_step, state, batches, frozen_inputs, num_micro=1):
  """The reference: plain jit on one device, the whole global batch per step."""
  step_fn = jax.jit(make_step(axis_name=None))
  state = jax.device_put(state, jax.devices()[0])
  metrics = []
  for batch in batches:
    state, m = step_fn(state, step_lib.split_microbatches(batch, num_micro), frozen_inputs)
    metrics.append(jax.tree.map(float, m))
  return jax.tree.map(np.asarray, state), metrics


def run_parallel(parallel: parallel_lib.Parallel, state, batches, frozen_inputs):
  device_state = parallel.put_state(state)
  device_frozen_inputs = parallel.put_frozen_inputs(frozen_inputs)
  metrics = []
  for batch in batches:
    device_state, m = parallel.step(device_state, parallel.put_batch(batch), device_frozen_inputs)
    metrics.append(parallel.host_metrics(m))
  return device_state, parallel.host_params(device_state), metrics


def assert_same_run(params, metrics, ref_params, ref_metrics, rtol=2e-5, atol=2e-7):
  for got, want in zip(metrics, ref_metrics):
    for key in ("loss", "grad_norm", "rewards/margin", "learning_rate"):
      if key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), params,
               ref_params)


@pytest.fixture(scope="module")
def ddpo_setup():
  objective = objectives.ddpo_objective(toy_model.apply_fn, ddpo.PAPER_HPARAMS,
                                        cached_reference=False)
  make_step, state = build(objective)
  batches = [toy_model.preference_batch(seed, batch=8) for seed in range(NUM_STEPS)]
  ref_params = toy_model.init_params()
  ref_state, ref_metrics = run_single_device(make_step, state, batches, ref_params)
  return make_step, state, batches, ref_params, ref_state, ref_metrics


@pytest.fixture(scope="module")
def pmap_parallel(ddpo_setup):
  """One compiled pmap step shared by the tests that use the DDPO set-up."""
  return parallel_lib.PmapParallel(ddpo_setup[0])


def test_single_device_step_matches_direct_gradient(ddpo_setup):
  make_step, state, batches, ref_params, _, ref_metrics = ddpo_setup
  loss_fn = ddpo.make_ddpo_loss(toy_model.apply_fn, ddpo.PAPER_HPARAMS)
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      state.params, ref_params, batches[0])
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(ref_metrics[0]["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(ref_metrics[0]["grad_norm"], norm, rtol=1e-5)
  assert ref_metrics[0]["loss"] == pytest.approx(np.log(2), rel=1e-6)  # policy == reference
  assert ref_metrics[1]["loss"] != pytest.approx(np.log(2), rel=1e-4)  # and it trained


def test_pmap_step_equals_single_device(ddpo_setup, pmap_parallel):
  _, state, batches, ref_params, ref_state, ref_metrics = ddpo_setup
  assert jax.local_device_count() == 4
  device_state, params, metrics = run_parallel(pmap_parallel, state, batches, ref_params)
  assert_same_run(params, metrics, ref_state.params, ref_metrics)
  assert int(pmap_parallel.checkpointable(device_state).step) == NUM_STEPS


def test_fsdp_mesh_step_equals_single_device(ddpo_setup):
  """2-way data x 2-way FSDP, with 2 accumulation micro-batches per update."""
  make_step, state, batches, ref_params, ref_state, ref_metrics = ddpo_setup
  parallel = parallel_lib.MeshParallel(make_step(axis_name=None), mesh_lib.make_mesh(2, 2),
                                   grad_accum_steps=2)
  device_state, params, metrics = run_parallel(parallel, state, batches, ref_params)
  assert_same_run(params, metrics, ref_state.params, ref_metrics)
  # Params and Adam moments are really sharded: the largest divisible axis over "fsdp".
  embed = device_state.params["language_model"]["embed"]  # [32, 16]
  assert embed.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  assert embed.addressable_shards[0].data.shape == (16, 16)
  adam = [x for x in jax.tree.leaves(device_state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(x, "mu")][0]
  assert adam.mu["language_model"]["embed"].addressable_shards[0].data.shape == (16, 16)


def test_fsdp_init_state_is_created_sharded(ddpo_setup):
  _, host_state, _, _, _, _ = ddpo_setup
  parallel = parallel_lib.MeshParallel(unused_step, mesh_lib.make_mesh(1, 4))
  optimizer, _, _ = optimizer_lib.make_optimizer(optim_config(), host_state.params, 10)
  make_state = lambda p: TrainState.create(p, optimizer, jax.random.PRNGKey(0))
  state = parallel.init_state(make_state, host_state.params)
  jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), want),
               state, host_state)
  adam = [x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "nu"))
          if hasattr(x, "nu")][0]
  assert adam.nu["language_model"]["embed"].addressable_shards[0].data.shape == (8, 16)


def unused_step(*_):
  raise AssertionError("never stepped")


def test_fsdp_partition_spec_rule():
  P = jax.sharding.PartitionSpec
  assert mesh_lib.fsdp_partition_spec((4096, 11008), 4) == P(None, "fsdp")
  assert mesh_lib.fsdp_partition_spec((32064, 4096), 4) == P("fsdp", None)
  assert mesh_lib.fsdp_partition_spec((3, 5), 4) == P()          # nothing divisible
  assert mesh_lib.fsdp_partition_spec((8, 8), 4) == P("fsdp", None)  # tie: first axis
  assert mesh_lib.fsdp_partition_spec((), 4) == P()
  assert mesh_lib.fsdp_partition_spec((4096,), 1) == P()
  # Below the minimum size a tensor stays replicated (big_vision's rule).
  assert mesh_lib.fsdp_partition_spec((4096,), 4, min_size=2 ** 14) == P()
  assert mesh_lib.fsdp_partition_spec((128, 128), 4, min_size=2 ** 14) == P("fsdp", None)


def test_split_leading():
  x = np.arange(12).reshape(6, 2)
  np.testing.assert_array_equal(step_lib.split_leading(x, (3, "a")), x.reshape(3, 2, 2))
  assert step_lib.split_leading(x, (3, "a"), (2, "b")).shape == (3, 2, 1, 2)
  with pytest.raises(ValueError, match="batch of 6 examples is not divisible by 4 a x 1 b"):
    step_lib.split_leading(x, (4, "a"), (1, "b"))


def test_gradient_accumulation_equals_one_big_batch(ddpo_setup):
  make_step, state, batches, ref_params, ref_state, ref_metrics = ddpo_setup
  accum_state, accum_metrics = run_single_device(make_step, state, batches, ref_params,
                                                 num_micro=4)
  assert_same_run(accum_state.params, accum_metrics, ref_state.params, ref_metrics)


def test_token_weighted_sft_loss_is_exact_across_devices_and_microbatches():
  """SFT averages over all answer tokens of the global batch, whatever the split."""
  objective = objectives.sft_objective(toy_model.apply_fn)
  make_step, state = build(objective)
  batches = [toy_model.sft_batch(seed, batch=8) for seed in range(NUM_STEPS)]
  counts = batches[0].tokens.loss_mask.reshape(4, 2, -1).sum(axis=(1, 2))
  assert len(set(counts.tolist())) > 1  # shards really hold different token counts
  ref_state, ref_metrics = run_single_device(make_step, state, batches, None)
  parallel = parallel_lib.PmapParallel(make_step, grad_accum_steps=2)
  _, params, metrics = run_parallel(parallel, state, batches, None)
  assert_same_run(params, metrics, ref_state.params, ref_metrics)
  assert metrics[0]["num_tokens"] == batches[0].tokens.loss_mask.sum()


def test_frozen_subtree_is_not_updated():
  objective = objectives.ddpo_objective(toy_model.apply_fn, ddpo.PAPER_HPARAMS,
                                        cached_reference=False)
  make_step, state = build(objective, frozen=("vision_tower",))
  batches = [toy_model.preference_batch(seed) for seed in range(NUM_STEPS)]
  new_state, _ = run_single_device(make_step, state, batches, toy_model.init_params())
  np.testing.assert_array_equal(new_state.params["vision_tower"]["kernel"],
                                state.params["vision_tower"]["kernel"])
  for group in ("projector", "language_model"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           new_state.params[group], state.params[group])
    assert all(jax.tree.leaves(changed)), group
  # No Adam moments are kept for the frozen tower.
  assert all(leaf.size == 0 or leaf.ndim == 0 for leaf in jax.tree.leaves(
      new_state.opt_state.inner_states["frozen"]))


def test_nonfinite_batch_skips_update_and_counts(ddpo_setup, pmap_parallel):
  _, state, batches, ref_params, _, _ = ddpo_setup
  good = batches[0]
  bad = good.replace(pixel_values=np.full_like(good.pixel_values, np.nan))
  parallel = pmap_parallel
  ref = parallel.put_frozen_inputs(ref_params)
  device_state = parallel.put_state(state)
  seen = []
  for batch in (good, bad, bad, good):
    before = parallel.host_params(device_state)
    device_state, m = parallel.step(device_state, parallel.put_batch(batch), ref)
    m = parallel.host_metrics(m)
    after = parallel.host_params(device_state)
    unchanged = all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after)))
    seen.append((m["update_skipped"], m["nonfinite_consecutive"], m["nonfinite_total"],
                 unchanged))
  assert seen == [(0.0, 0, 0, False), (1.0, 1, 1, True), (1.0, 2, 2, True), (0.0, 0, 2, False)]
  host_state = parallel.checkpointable(device_state)
  assert int(host_state.step) == 4  # skipped steps still advance the schedule
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(parallel.host_params(device_state)))
  # Adam's own step counter did not count the skipped updates.
  adam = [x for x in jax.tree.leaves(host_state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(x, "mu")][0]
  assert int(np.asarray(adam.count.addressable_data(0))) == 2


def test_split_microbatches_rejects_uneven():
  with pytest.raises(ValueError, match="8 examples is not divisible by 3 micro-batches"):
    step_lib.split_microbatches({"x": np.zeros((8, 2))}, 3)


def test_pmap_put_batch_names_the_mismatch():
  parallel = parallel_lib.PmapParallel(lambda axis_name: lambda *args: args, grad_accum_steps=2)
  with pytest.raises(ValueError, match="12 examples is not divisible by 4 devices x 2"):
    parallel.put_batch({"x": np.zeros((12, 2))})


def test_mesh_shape_resolution():
  assert mesh_lib.resolve_mesh_shape(-1, 2, 8) == (4, 2)
  assert mesh_lib.resolve_mesh_shape(2, -1, 8) == (2, 4)
  with pytest.raises(ValueError, match="data=3 x fsdp=-1 does not match the 8 devices"):
    mesh_lib.resolve_mesh_shape(3, -1, 8)
  with pytest.raises(ValueError, match="at most one"):
    mesh_lib.resolve_mesh_shape(-1, -1, 8)
  mesh = mesh_lib.make_mesh(-1, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2}


@pytest.mark.parametrize("kind", ["sft", "ddpo"])
def test_eval_step_masks_padding_and_weights_like_training(kind):
  """Padded rows (valid=False) change nothing; the sums over examples give the loss of
  the real rows alone, token-weighted for SFT as the train step weights it."""
  params, ref = toy_model.init_params(0), toy_model.init_params(1)
  if kind == "sft":
    objective = objectives.sft_objective(toy_model.apply_fn)
    real, garbage = toy_model.sft_batch(0, batch=5), toy_model.sft_batch(1, batch=3)
  else:
    objective = objectives.ddpo_objective(toy_model.apply_fn, ddpo.PAPER_HPARAMS,
                                          cached_reference=False)
    real, garbage = toy_model.preference_batch(0, batch=5), toy_model.preference_batch(1, batch=3)
  padded = jax.tree.map(lambda a, b: np.concatenate([a, b]), real, garbage)
  valid = np.arange(8) < 5
  eval_step = jax.jit(step_lib.make_eval_step(objective.per_example_fn,
                                              loss_weight_key=objective.loss_weight_key))
  weight, sums = eval_step(params, ref, padded, valid)
  want_loss, want_metrics = objective.loss_fn(params, ref, real, None)
  np.testing.assert_allclose(sums["loss"] / weight, want_loss, rtol=1e-5)
  for key in want_metrics:
    if key != "num_tokens":
      np.testing.assert_allclose(sums[key] / weight, want_metrics[key], rtol=1e-5, atol=1e-7,
                                 err_msg=key)
  want_weight = want_metrics["num_tokens"] if kind == "sft" else 5
  np.testing.assert_allclose(weight, want_weight)
