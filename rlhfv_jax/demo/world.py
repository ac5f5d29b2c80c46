"""A synthetic image world shipped as code: the demo's stand-in for COCO.

A scene is a handful of coloured shapes placed in the cells of a 3x3 grid. Every
scene is fully known (shape, colour, size and grid cell of each object), so an
oracle can judge any description of it exactly, and every image is rendered from
the scene with PIL at whatever resolution the model wants. Nothing is downloaded:
the same seed always gives the same scenes and the same pixels.

The closed vocabulary below is also the vocabulary of every text the demo writes
(captions, VQA answers, corrections), which is what lets `labeler.py` and
`metrics.py` parse model output without any learned component.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Sequence

import numpy as np
from PIL import Image

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 47),
    "green": (60, 180, 75),
    "blue": (40, 100, 230),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "large")
# Grid cells in reading order; cell index = 3 * row + column.
CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The background darkens from bottom right to top left: red grows to the right, green
# downwards. A real photo's background differs from place to place too; here it gives
# every grid cell a visual signature, so a model that has to learn where things are
# from scratch does not have to rely on its position embeddings alone.
BACKGROUND_RGB = (32, 32, 40)       # top-left corner
BACKGROUND_GRADIENT = (40, 40, 0)   # added across the full width (red) / height (green)

# Radius of a shape as a fraction of the cell side, per size.
_RADIUS_FRACTION = {"small": 0.3, "large": 0.45}
# Point samples per pixel side (anti-aliasing).
_SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object of a scene.

  Attributes:
    shape: one of `SHAPES`.
    color: one of `COLORS`.
    size: one of `SIZES`.
    cell: grid cell index in [0, 9), 3 * row + column.
  """

  shape: str
  color: str
  size: str
  cell: int

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
    if self.color not in COLORS:
      raise ValueError(f"unknown color {self.color!r}; expected one of {tuple(COLORS)}")
    if self.size not in SIZES:
      raise ValueError(f"unknown size {self.size!r}; expected one of {SIZES}")
    if not 0 <= self.cell < len(CELL_NAMES):
      raise ValueError(f"cell {self.cell} outside the 3x3 grid [0, {len(CELL_NAMES)})")

  @property
  def position(self) -> str:
    """The cell's name, e.g. "top left"."""
    return CELL_NAMES[self.cell]

  @property
  def kind(self) -> tuple[str, str]:
    """(color, shape): what identifies an object within a scene."""
    return (self.color, self.shape)


@dataclasses.dataclass(frozen=True)
class Scene:
  """A scene: objects in distinct cells, no two with the same colour and shape.

  The uniqueness of (colour, shape) makes "the red circle" a definite reference, so
  the oracle never has to guess which object a sentence talks about.

  Attributes:
    scene_id: stable identifier, e.g. "train-00017".
    objects: the objects in reading order of their cells.
  """

  scene_id: str
  objects: tuple[SceneObject, ...]

  def __post_init__(self):
    if not self.objects:
      raise ValueError(f"scene {self.scene_id}: a scene needs at least one object")
    cells = [o.cell for o in self.objects]
    if len(set(cells)) != len(cells):
      raise ValueError(f"scene {self.scene_id}: two objects share a cell: {cells}")
    kinds = [o.kind for o in self.objects]
    if len(set(kinds)) != len(kinds):
      raise ValueError(f"scene {self.scene_id}: two objects share colour and shape: {kinds}")

  def find(self, color: str, shape: str) -> SceneObject | None:
    """The object with this colour and shape, or None."""
    for obj in self.objects:
      if obj.kind == (color, shape):
        return obj
    return None

  def content_key(self) -> tuple[tuple[str, str, str, int], ...]:
    """The scene's content without its id (for de-duplicating train and test)."""
    return tuple(sorted((o.shape, o.color, o.size, o.cell) for o in self.objects))

  def to_json(self) -> str:
    """Serialises the scene (ground truth stored in records' origin metadata)."""
    return json.dumps({"scene_id": self.scene_id,
                       "objects": [dataclasses.asdict(o) for o in self.objects]},
                      sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Scene":
    """Inverse of `to_json`."""
    data = json.loads(text)
    return cls(data["scene_id"], tuple(SceneObject(**o) for o in data["objects"]))


def sample_scene(rng: np.random.Generator, scene_id: str, min_objects: int = 1,
                 max_objects: int = 4) -> Scene:
  """Draws one scene uniformly: object count, distinct cells, distinct kinds, sizes.

  Args:
    rng: the random stream (consumed).
    scene_id: id given to the scene.
    min_objects: fewest objects in a scene (>= 1).
    max_objects: most objects (<= 9, the number of cells).

  Returns:
    The scene, objects sorted by cell.
  """
  if not 1 <= min_objects <= max_objects <= len(CELL_NAMES):
    raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(CELL_NAMES)}, "
                     f"got {min_objects}, {max_objects}")
  n = int(rng.integers(min_objects, max_objects + 1))
  cells = sorted(rng.choice(len(CELL_NAMES), size=n, replace=False).tolist())
  all_kinds = [(c, s) for c in COLORS for s in SHAPES]
  kind_ids = rng.choice(len(all_kinds), size=n, replace=False)
  sizes = rng.integers(0, len(SIZES), size=n)
  objects = tuple(
      SceneObject(shape=all_kinds[k][1], color=all_kinds[k][0], size=SIZES[z], cell=c)
      for c, k, z in zip(cells, kind_ids, sizes))
  return Scene(scene_id, objects)


def sample_scenes(seed: int, count: int, prefix: str, min_objects: int = 1,
                  max_objects: int = 4,
                  exclude: Sequence[Scene] = ()) -> list[Scene]:
  """Draws `count` scenes deterministically from `seed`.

  Args:
    seed: seed of the stream; the same seed gives the same scenes.
    count: number of scenes.
    prefix: id prefix, scene ids are f"{prefix}-{i:05d}".
    min_objects: see `sample_scene`.
    max_objects: see `sample_scene`.
    exclude: scenes whose content must not reappear (e.g. the training scenes when
      drawing held-out evaluation scenes); such draws are rejected and redrawn.

  Returns:
    The scenes.
  """
  rng = np.random.default_rng(seed)
  banned = {s.content_key() for s in exclude}
  scenes: list[Scene] = []
  attempts = 0
  while len(scenes) < count:
    attempts += 1
    if attempts > 100 * count + 1000:
      raise RuntimeError(f"could not draw {count} scenes outside the {len(banned)} "
                         "excluded ones; widen the world (max_objects)")
    scene = sample_scene(rng, f"{prefix}-{len(scenes):05d}", min_objects, max_objects)
    if scene.content_key() in banned:
      continue
    scenes.append(scene)
  return scenes


# Polygon vertices in units of the shape's radius, counter-clockwise in image
# coordinates (y grows downwards), so the interior lies left of every edge.
_UNIT_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((-0.85, -0.85), (-0.85, 0.85), (0.85, 0.85), (0.85, -0.85)),
    "triangle": ((0.0, -1.0), (-0.95, 0.8), (0.95, 0.8)),
    "diamond": ((0.0, -1.0), (-0.8, 0.0), (0.0, 1.0), (0.8, 0.0)),
}


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Whether points at offsets (dx, dy) from a shape's centre lie inside it."""
  dx, dy = np.broadcast_arrays(dx, dy)
  if shape == "circle":
    return dx * dx + dy * dy <= r * r
  inside = np.ones(dx.shape, dtype=bool)
  vertices = _UNIT_POLYGONS[shape]
  for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
    # Convex polygon: inside iff on the interior side of every edge.
    cross = (x1 - x0) * r * (dy - y0 * r) - (y1 - y0) * r * (dx - x0 * r)
    inside &= cross <= 0
  return inside


def background(image_size: int) -> np.ndarray:
  """The empty image: float64 [image_size, image_size, 3], before rounding."""
  centres = (np.arange(image_size) + 0.5) / image_size
  pixels = np.empty((image_size, image_size, 3), dtype=np.float64)
  pixels[...] = BACKGROUND_RGB
  pixels[..., 0] += BACKGROUND_GRADIENT[0] * centres[None, :]
  pixels[..., 1] += BACKGROUND_GRADIENT[1] * centres[:, None]
  pixels[..., 2] += BACKGROUND_GRADIENT[2] * centres[None, :]
  return pixels


def render(scene: Scene, image_size: int) -> np.ndarray:
  """Renders a scene to an RGB image.

  Each pixel is the average of `_SUPERSAMPLE`^2 point samples of the exact geometry
  (anti-aliasing, so small shapes stay recognisable at 32x32).

  Args:
    scene: the scene.
    image_size: side of the square output image in pixels (>= 12).

  Returns:
    uint8 array [image_size, image_size, 3].
  """
  if image_size < 12:
    raise ValueError(f"image_size {image_size} too small to draw a 3x3 grid of shapes")
  pixels = background(image_size)
  cell = image_size / 3.0
  for obj in scene.objects:
    row, col = divmod(obj.cell, 3)
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    r = _RADIUS_FRACTION[obj.size] * cell
    # Only the pixels of the shape's bounding box [c - r, c + r] can be covered.
    x0, x1 = int(np.floor(cx - r)), int(np.ceil(cx + r))
    y0, y1 = int(np.floor(cy - r)), int(np.ceil(cy + r))
    # Sample points at sub-pixel centres, in output-pixel units.
    xs = x0 + (np.arange((x1 - x0) * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    ys = y0 + (np.arange((y1 - y0) * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    inside = _inside(obj.shape, xs[None, :] - cx, ys[:, None] - cy, r)
    coverage = inside.reshape(y1 - y0, _SUPERSAMPLE, x1 - x0, _SUPERSAMPLE).mean((1, 3))
    # Shapes never overlap (one per cell), so blending with what is there is exact.
    box = pixels[y0:y1, x0:x1]
    box += coverage[..., None] * (np.asarray(COLORS[obj.color]) - box)
  return np.rint(pixels).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 RGB image (how records carry images)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()

