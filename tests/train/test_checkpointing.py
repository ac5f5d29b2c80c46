"""Checkpoints: exact round trip of state + iterator state, layout-independent restore,
params-only restore, retention, and refusal to re-split per-process iterator states."""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

import toy_model
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import optimizer as optimizer_lib
from rlhfv_jax.train import mesh as mesh_lib
from rlhfv_jax.train import parallel as parallel_lib
from rlhfv_jax.train.train_state import TrainState


def unused_step(*_):
  raise AssertionError("these tests never step")


@pytest.fixture(scope="module")
def host_state() -> TrainState:
  params = toy_model.init_params(seed=3)
  optimizer, _, _ = optimizer_lib.make_optimizer(
      ml_collections.ConfigDict(dict(learning_rate=1e-3, frozen=("vision_tower",))), params, 10)
  state = TrainState.create(params, optimizer, jax.random.PRNGKey(7))
  # Non-trivial values everywhere, so a mix-up of leaves cannot go unnoticed.
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda x: np.asarray(x) + rng.integers(1, 5, np.shape(x)).astype(
      np.asarray(x).dtype), state)
  return state


def abstract_for(parallel: parallel_lib.Parallel, state):
  abstract = jax.eval_shape(lambda: state)
  return checkpointing.abstract_with_shardings(abstract,
                                               parallel.checkpoint_shardings(abstract))


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("iterator_state", [b"\x00grain-bytes\xff", {"position": 5, "epoch": 1}])
def test_round_trip_from_pmap_layout_into_fsdp_layout(tmp_path, host_state, iterator_state):
  pmap = parallel_lib.PmapParallel(lambda axis_name: unused_step)
  ckpt = checkpointing.Checkpointer(tmp_path, save_every_steps=1)
  ckpt.save(4, pmap.checkpointable(pmap.put_state(host_state)), iterator_state)
  ckpt.wait()
  assert ckpt.latest_step() == 4

  mesh = parallel_lib.MeshParallel(unused_step, mesh_lib.make_mesh(1, 4))
  restored, restored_iterator = checkpointing.Checkpointer(tmp_path, save_every_steps=1).restore(
      4, abstract_for(mesh, host_state))
  assert restored_iterator == iterator_state
  assert_tree_equal(restored, host_state)
  embed = restored.params["language_model"]["embed"]
  assert embed.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  # And back into the pmap layout.
  assert_tree_equal(pmap.host_params(pmap.put_state(restored)), host_state.params)


def test_params_only_restore_and_retention(tmp_path, host_state):
  mesh = parallel_lib.MeshParallel(unused_step, mesh_lib.make_mesh(2, 2))
  ckpt = checkpointing.Checkpointer(tmp_path, save_every_steps=2, max_to_keep=2)
  device_state = mesh.put_state(host_state)
  saved = [s for s in range(1, 8) if ckpt.maybe_save(s, lambda: device_state, None)]
  ckpt.close()
  assert saved == [2, 4, 6]
  assert checkpointing.Checkpointer(tmp_path, save_every_steps=2).all_steps() == [4, 6]
  params = checkpointing.Checkpointer(tmp_path, save_every_steps=2).restore_params(
      6, abstract_for(mesh, host_state).params)
  assert_tree_equal(params, host_state.params)


def test_restore_with_another_process_count_is_refused(tmp_path, host_state):
  mesh = parallel_lib.MeshParallel(unused_step, mesh_lib.make_mesh(2, 2))
  ckpt = checkpointing.Checkpointer(tmp_path, save_every_steps=1)
  ckpt.save(3, mesh.put_state(host_state), {"position": 1})
  ckpt.close()
  metadata = tmp_path / "3" / checkpointing.DATA_ITEM / "metadata"
  data = json.loads(metadata.read_text())
  data.update(process_count=2, iterators=data["iterators"] * 2)
  metadata.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="written by 2 processes but this run has 1"):
    checkpointing.Checkpointer(tmp_path, save_every_steps=1).restore(
        3, abstract_for(mesh, host_state))


def test_iterator_state_encoding():
  for state in (None, b"abc", {"a": [1, 2]}):
    encoded = checkpointing.encode_iterator_state(state)
    assert checkpointing.decode_iterator_state(json.loads(json.dumps(encoded))) == state
  with pytest.raises(TypeError):
    checkpointing.encode_iterator_state({"not json": object()})


def test_invalid_save_interval():
  with pytest.raises(ValueError, match="checkpoint.every_steps=0"):
    checkpointing.Checkpointer("/tmp/unused", save_every_steps=0)
