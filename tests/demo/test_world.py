"""Tests of the synthetic scene world: validity, determinism and rendering."""

from __future__ import annotations

import io
import math

import matplotlib.path as mpath
import numpy as np
import pytest
from PIL import Image

from rlhfv_jax.demo import world


def _cell_center(cell: int, image_size: int) -> tuple[int, int]:
  row, col = divmod(cell, 3)
  side = image_size / 3
  return int((row + 0.5) * side), int((col + 0.5) * side)


def test_same_seed_same_scenes_and_pixels():
  a = world.sample_scenes(7, 20, "s")
  b = world.sample_scenes(7, 20, "s")
  assert a == b
  for x, y in zip(a, b):
    np.testing.assert_array_equal(world.render(x, 32), world.render(y, 32))
  assert world.sample_scenes(8, 20, "s") != a


def test_scene_invariants_hold_over_many_draws():
  scenes = world.sample_scenes(0, 500, "s", min_objects=1, max_objects=4)
  counts = {len(s.objects) for s in scenes}
  assert counts == {1, 2, 3, 4}
  for s in scenes:
    assert len({o.cell for o in s.objects}) == len(s.objects)
    assert len({o.kind for o in s.objects}) == len(s.objects)
    assert [o.cell for o in s.objects] == sorted(o.cell for o in s.objects)


@pytest.mark.parametrize("bad, match", [
    (dict(shape="hexagon"), "unknown shape"),
    (dict(color="pink"), "unknown color"),
    (dict(size="huge"), "unknown size"),
    (dict(cell=9), "outside the 3x3 grid"),
])
def test_object_validation(bad, match):
  fields = dict(shape="circle", color="red", size="small", cell=0) | bad
  with pytest.raises(ValueError, match=match):
    world.SceneObject(**fields)


def test_scene_validation_names_the_scene():
  a = world.SceneObject("circle", "red", "small", 0)
  with pytest.raises(ValueError, match="s-1: two objects share a cell"):
    world.Scene("s-1", (a, world.SceneObject("square", "red", "small", 0)))
  with pytest.raises(ValueError, match="s-2: two objects share colour and shape"):
    world.Scene("s-2", (a, world.SceneObject("circle", "red", "large", 4)))
  with pytest.raises(ValueError, match="s-3: a scene needs at least one object"):
    world.Scene("s-3", ())


def test_exclude_keeps_held_out_scenes_disjoint():
  train = world.sample_scenes(1, 300, "train", max_objects=2)
  test = world.sample_scenes(2, 300, "test", max_objects=2, exclude=train)
  assert not {s.content_key() for s in train} & {s.content_key() for s in test}
  # Without the exclusion the same stream does collide (the test is not vacuous).
  plain = world.sample_scenes(2, 300, "test", max_objects=2)
  assert {s.content_key() for s in train} & {s.content_key() for s in plain}


def test_json_round_trip():
  scene = world.sample_scenes(3, 1, "x")[0]
  assert world.Scene.from_json(scene.to_json()) == scene


@pytest.mark.parametrize("image_size", [32, 48])
def test_render_puts_each_colour_in_its_cell(image_size):
  for scene in world.sample_scenes(5, 30, "r"):
    image = world.render(scene, image_size)
    assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
    occupied = {o.cell: o for o in scene.objects}
    empty = np.rint(world.background(image_size)).astype(np.uint8)
    for cell in range(9):
      y, x = _cell_center(cell, image_size)
      want = world.COLORS[occupied[cell].color] if cell in occupied else empty[y, x]
      np.testing.assert_allclose(image[y, x], want, atol=40)
      # The pixel at a cell's corner is background: no shape reaches that far.
      row, col = divmod(cell, 3)
      y0, x0 = math.floor(row * image_size / 3), math.floor(col * image_size / 3)
      np.testing.assert_array_equal(image[y0, x0], empty[y0, x0])


def _analytic_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
  """The shape's geometry sampled at pixel centres (independent of PIL)."""
  ys, xs = np.mgrid[0:size, 0:size] + 0.5
  if shape == "circle":
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
  vertices = {
      "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
      "triangle": [(0, -1), (0.95, 0.8), (-0.95, 0.8)],
      "diamond": [(0, -1), (0.8, 0), (0, 1), (-0.8, 0)],
  }[shape]
  path = mpath.Path([(cx + r * vx, cy + r * vy) for vx, vy in vertices])
  return path.contains_points(np.stack([xs.ravel(), ys.ravel()], -1)).reshape(size, size)


@pytest.mark.parametrize("shape", world.SHAPES)
@pytest.mark.parametrize("obj_size, fraction", [("small", 0.3), ("large", 0.45)])
def test_rendered_shape_matches_its_geometry(shape, obj_size, fraction):
  size, cell = 96, 4
  scene = world.Scene("a", (world.SceneObject(shape, "white", obj_size, cell),))
  image = world.render(scene, size).astype(np.float64)
  bg, fg = world.background(size), np.array(world.COLORS["white"])
  drawn = ((image - bg) / (fg - bg)).mean(-1) > 0.5
  r = fraction * size / 3
  iou = {}
  for other in world.SHAPES:
    want = _analytic_mask(other, size / 2, size / 2, r, size)
    iou[other] = (drawn & want).sum() / (drawn | want).sum()
  assert iou[shape] > 0.9, iou
  # The drawn shape is closer to its own geometry than to any other shape's.
  assert max(iou, key=iou.get) == shape


def test_png_round_trip():
  image = world.render(world.sample_scenes(0, 1, "p")[0], 32)
  decoded = np.asarray(Image.open(io.BytesIO(world.encode_png(image))).convert("RGB"))
  np.testing.assert_array_equal(decoded, image)


def test_background_gives_each_cell_its_own_shade():
  empty = world.render(world.Scene("e", (world.SceneObject("circle", "red", "small", 0),)), 48)
  shades = {tuple(empty[int((r + 0.5) * 16), int((c + 0.5) * 16)]) for r in range(1, 3)
            for c in range(3)} | {tuple(empty[8, c * 16 + 8]) for c in (1, 2)}
  assert len(shades) == 8  # the 8 empty cells' centres all differ
  np.testing.assert_array_equal(empty[0, 47, :2], np.rint(
      np.array(world.BACKGROUND_RGB[:2]) + np.array(world.BACKGROUND_GRADIENT[:2]) * [47.5 / 48, 0.5 / 48]))


def test_render_rejects_tiny_images():
  with pytest.raises(ValueError, match="too small"):
    world.render(world.sample_scenes(0, 1, "p")[0], 8)
