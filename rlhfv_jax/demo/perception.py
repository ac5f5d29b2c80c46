"""The demo's stand-in for CLIP: a vision tower pretrained to see the shape world.

LLaVA-1.5 starts from a CLIP ViT that already sees (web-scale contrastive
pretraining) and keeps it frozen; hallucination in the paper comes from the language
side — text that does not match its image — not from a blind encoder. The miniature
mirrors that split: `pretrain_vision_tower` trains the project's own CLIP vision tower
(`model.vision.ClipVisionTower`, the same parameters the LLaVA holds) to read every
grid cell of a scene (empty or which shape, colour, size) from the images the LLaVA
will see, with per-cell linear probes that are thrown away afterwards. The web-caption
stage then starts from this tower, frozen, and only has to learn to *say* what it sees.

Why it matters for a CPU-sized demo: trained from scratch through the language model
alone, the tiny tower learns shapes only after ~800-1000 steps, at a phase transition
whose side a run falls on depends on float rounding (one machine's 1200-step base model
never learnt shapes). Supervised per-cell targets make perception a plain, quickly
convex-ish classification problem that every machine and seed solves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.demo import world
from rlhfv_jax.model.llava15 import vision

# Per-cell targets; class 0 of each is "no object in this cell".
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("none",) + world.SHAPES,
    "color": ("none",) + tuple(world.COLORS),
    "size": ("none",) + world.SIZES,
}


def cell_labels(scenes: Sequence[world.Scene]) -> dict[str, np.ndarray]:
  """Per-cell class ids of each attribute: {name: int32 [len(scenes), 9]}."""
  labels = {name: np.zeros((len(scenes), len(world.CELL_NAMES)), np.int32)
            for name in ATTRIBUTES}
  for i, scene in enumerate(scenes):
    for obj in scene.objects:
      for name, classes in ATTRIBUTES.items():
        labels[name][i, obj.cell] = classes.index(getattr(obj, name))
  return labels


class _TowerWithProbes(nn.Module):
  """The LLaVA's vision tower plus one linear probe per attribute on each patch token."""

  cfg: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, pixel_values: jax.Array) -> dict[str, jax.Array]:
    features = vision.ClipVisionTower(self.cfg, name="vision_tower")(pixel_values)[:, 1:]
    return {name: nn.Dense(len(classes), name=f"probe_{name}")(features)
            for name, classes in ATTRIBUTES.items()}


@dataclasses.dataclass(frozen=True)
class PerceptionResult:
  """A pretrained tower and how well it reads held-out cells.

  Attributes:
    vision_tower: parameters of `vision_tower` in the LLaVA param tree.
    accuracy: per-attribute cell accuracy on the held-out scenes.
    final_loss: training loss of the last step.
  """

  vision_tower: Any
  accuracy: dict[str, float]
  final_loss: float


def pretrain_vision_tower(model_config: Any, preprocessor: ImagePreprocessor,
                          train_scenes: Sequence[world.Scene], train_images: dict[str, bytes],
                          eval_scenes: Sequence[world.Scene], eval_images: dict[str, bytes], *,
                          steps: int, batch_size: int, learning_rate: float, seed: int
                          ) -> PerceptionResult:
  """Trains the vision tower on per-cell scene attributes (see the module docstring).

  Args:
    model_config: the LLaVA config (its `vision` section shapes the tower); the grid
      must be 3x3 patches, one per world cell.
    preprocessor: the LLaVA's image preprocessing (no augmentation).
    train_scenes: scenes to learn from, with their encoded images.
    train_images: scene id -> encoded image.
    eval_scenes: held-out scenes for the reported accuracy.
    eval_images: scene id -> encoded image.
    steps: optimisation steps (Adam).
    batch_size: scenes per step.
    learning_rate: Adam's learning rate (cosine decay to 10%).
    seed: initialisation and batch-order seed.

  Returns:
    The tower's parameters and its held-out accuracy.
  """
  v = model_config.vision
  grid = v.image_size // v.patch_size
  if grid * grid != len(world.CELL_NAMES) or v.feature_select_strategy != "default":
    raise ValueError(f"perception pretraining needs one patch per world cell (a 3x3 grid of "
                     f"{v.image_size // 3}px patches, CLS dropped); got {grid}x{grid} patches "
                     f"and feature_select_strategy={v.feature_select_strategy!r}")
  module = _TowerWithProbes(ml_collections.FrozenConfigDict(model_config))

  def pixels_and_labels(scenes, images):
    pixels = np.stack([preprocessor(images[s.scene_id]) for s in scenes])
    return pixels, cell_labels(scenes)

  train_x, train_y = pixels_and_labels(train_scenes, train_images)
  eval_x, eval_y = pixels_and_labels(eval_scenes, eval_images)
  init_rng, order_rng = jax.random.split(jax.random.key(seed))
  params = module.init(init_rng, train_x[:1])["params"]
  schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.1)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)

  def loss_fn(params, x, y):
    logits = module.apply({"params": params}, x)
    return sum(optax.softmax_cross_entropy_with_integer_labels(logits[k], y[k]).mean()
               for k in ATTRIBUTES)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(int(jax.random.randint(order_rng, (), 0, 2**31 - 1)))
  loss = jnp.nan
  for _ in range(steps):
    idx = rng.choice(len(train_x), size=batch_size, replace=False)
    params, opt_state, loss = step(params, opt_state, train_x[idx],
                                   {k: v[idx] for k, v in train_y.items()})
  logits = jax.jit(module.apply)({"params": params}, eval_x)
  accuracy = {k: float((np.asarray(logits[k]).argmax(-1) == eval_y[k]).mean())
              for k in ATTRIBUTES}
  return PerceptionResult(params["vision_tower"], accuracy, float(loss))
