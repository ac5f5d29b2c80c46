"""Tests of the demo's vision-tower pretraining (the miniature's CLIP)."""

from __future__ import annotations

import jax
import pytest

from rlhfv_jax import model as model_lib
from rlhfv_jax.data import images as images_lib
from rlhfv_jax.demo import datasets, perception, settings, world


def test_cell_labels_hand_computed():
  scene = world.Scene("s", (world.SceneObject("triangle", "blue", "large", 0),
                            world.SceneObject("circle", "white", "small", 7)))
  labels = perception.cell_labels([scene])
  # Class 0 is "no object"; then the world's own order of shapes / colours / sizes.
  assert labels["shape"].tolist() == [[3, 0, 0, 0, 0, 0, 0, 1, 0]]
  assert labels["color"].tolist() == [[3, 0, 0, 0, 0, 0, 0, 5, 0]]
  assert labels["size"].tolist() == [[2, 0, 0, 0, 0, 0, 0, 1, 0]]


def test_pretrained_tower_reads_held_out_cells_and_fits_the_llava():
  cfg = settings.demo_model_config()
  preprocessor = images_lib.ImagePreprocessor(cfg.vision.image_size)
  val = world.sample_scenes(7, 128, "val")
  train = world.sample_scenes(8, 1000, "train", exclude=val)
  result = perception.pretrain_vision_tower(
      cfg, preprocessor, train, datasets.render_all(train, 48), val,
      datasets.render_all(val, 48), steps=200, batch_size=64, learning_rate=3e-3, seed=0)
  # Chance is ~0.55 (most cells are empty); the demo's 300 steps on 4000 scenes reach 1.0.
  # Here: a fifth of the data and two thirds of the steps, with a wide margin.
  for name, accuracy in result.accuracy.items():
    assert accuracy >= 0.9, (name, result.accuracy)
  # The tower slots into the LLaVA's parameter tree unchanged.
  shapes = model_lib.param_shapes(cfg)["vision_tower"]
  assert jax.tree.structure(shapes) == jax.tree.structure(result.vision_tower)
  for want, got in zip(jax.tree.leaves(shapes), jax.tree.leaves(result.vision_tower)):
    assert want.shape == got.shape and want.dtype == got.dtype


def test_needs_one_patch_per_cell():
  cfg = settings.demo_model_config()
  cfg.vision.patch_size = 8
  with pytest.raises(ValueError, match="one patch per world cell"):
    perception.pretrain_vision_tower(cfg, images_lib.ImagePreprocessor(48), [], {}, [], {},
                                     steps=1, batch_size=1, learning_rate=1e-3, seed=0)
