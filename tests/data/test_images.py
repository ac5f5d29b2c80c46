"""Image preprocessing against a PIL/NumPy re-derivation, and the augmentation policy."""

from __future__ import annotations

import io
import logging

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rlhfv_jax.data.images import (CLIP_MEAN, CLIP_STD, AugmentationPolicy, ImagePreprocessor,
                                   augmentation_rng)

SIZE = 16


def encoded(pixels: np.ndarray, fmt="PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  return buffer.getvalue()


def reference(image: Image.Image) -> np.ndarray:
  """Independent re-derivation: bicubic resize to SIZE, /255, CLIP normalize, HWC."""
  resized = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32) / 255
  return (resized - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)


@pytest.fixture(scope="module")
def wide_image() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)  # H=24, W=32


def data_config(**kwargs):
  return ml_collections.ConfigDict(dict(dict(augmentation="none", allow_flip=False,
                                             photometric_strength=0.1), **kwargs))


def test_pad_mode_is_llava_expand2square_then_resize_and_normalize(wide_image):
  out = ImagePreprocessor(SIZE, resize_mode="pad")(encoded(wide_image))
  # LLaVA-1.5's rule, tuple(int(x * 255) for x in image_mean): truncated, not rounded.
  square = Image.new("RGB", (32, 32), (122, 116, 104))
  square.paste(Image.fromarray(wide_image), (0, 4))
  assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, reference(square), atol=1e-5)


def test_center_crop_mode_cuts_the_sides(wide_image):
  out = ImagePreprocessor(SIZE, resize_mode="center_crop")(encoded(wide_image))
  # Shortest edge 24 -> 16 gives 21x16 (transformers rounds the long side down), crop the centre.
  resized = Image.fromarray(wide_image).resize((21, SIZE), Image.Resampling.BICUBIC)
  left = (21 - SIZE) // 2
  expected = (np.asarray(resized, np.float32)[:, left:left + SIZE] / 255 - CLIP_MEAN) / CLIP_STD
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_grayscale_and_rgba_become_rgb():
  grey = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
  out = ImagePreprocessor(SIZE)(encoded(grey))
  np.testing.assert_allclose(out, reference(Image.fromarray(grey).convert("RGB")), atol=1e-5)
  rgba = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
  assert ImagePreprocessor(SIZE)(encoded(rgba)).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("name", ["random_crop", "crop", "RandomResizedCrop", "center_crop"])
def test_any_crop_request_is_refused_naming_the_ablation(name):
  with pytest.raises(ValueError, match="random_crop_ablation"):
    AugmentationPolicy.from_config(data_config(augmentation=name))


def test_policy_validation():
  with pytest.raises(ValueError, match="allow_flip"):
    AugmentationPolicy.from_config(data_config(augmentation="flip"))
  assert AugmentationPolicy.from_config(data_config(augmentation="flip", allow_flip=True)).name == "flip"
  with pytest.raises(ValueError, match="expected one of"):
    AugmentationPolicy.from_config(data_config(augmentation="mixup"))
  with pytest.raises(ValueError, match="photometric_strength"):
    AugmentationPolicy.from_config(data_config(augmentation="photometric", photometric_strength=0.5))
  assert AugmentationPolicy.from_config(data_config()).name == "none"


def test_crop_ablation_warns(caplog):
  with caplog.at_level(logging.WARNING):
    policy = AugmentationPolicy.from_config(data_config(augmentation="random_crop_ablation"))
  assert policy.name == "random_crop_ablation"
  assert any("ABLATION" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_augmentations_are_deterministic_and_mild(wide_image):
  data = encoded(wide_image)
  plain = ImagePreprocessor(SIZE)(data)
  for name in ("photometric", "flip", "random_crop_ablation"):
    pre = ImagePreprocessor(SIZE, policy=AugmentationPolicy(name=name))
    first = pre(data, augmentation_rng(0, 0, 5))
    np.testing.assert_array_equal(first, pre(data, augmentation_rng(0, 0, 5)))
    draws = [pre(data, augmentation_rng(0, epoch, 5)) for epoch in range(1, 9)]
    assert any(not np.array_equal(first, d) for d in draws + [plain])  # the rng matters
  # Photometric: factors in [0.9, 1.1] move a [0, 1] pixel by little (in normalized units
  # that is at most ~0.2 / 0.26 ≈ 0.8 for the brightest pixels; the mean moves much less).
  pre = ImagePreprocessor(SIZE, policy=AugmentationPolicy(name="photometric"))
  jittered = pre(data, augmentation_rng(0, 0, 5))
  assert np.abs(jittered - plain).mean() < 0.3
  assert np.abs(jittered - plain).max() < 0.9


def test_flip_mirrors_the_image(wide_image):
  pre = ImagePreprocessor(SIZE, policy=AugmentationPolicy(name="flip"))
  plain = ImagePreprocessor(SIZE)(encoded(wide_image))
  outs = [pre(encoded(wide_image), augmentation_rng(0, 0, i)) for i in range(8)]
  flipped = [o for o in outs if not np.array_equal(o, plain)]
  assert 0 < len(flipped) < 8
  for o in flipped:
    np.testing.assert_allclose(o, plain[:, ::-1], atol=1e-5)


def test_processor_settings_load_from_a_local_hf_directory(tmp_path, wide_image):
  from transformers import CLIPImageProcessorPil
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  CLIPImageProcessorPil(image_mean=mean, image_std=std, size={"shortest_edge": 336},
                        crop_size={"height": 336, "width": 336}).save_pretrained(tmp_path)
  out = ImagePreprocessor(SIZE, processor_dir=str(tmp_path))(encoded(wide_image))
  square = Image.new("RGB", (32, 32), (127, 127, 127))  # int(0.5 * 255): the loaded mean
  square.paste(Image.fromarray(wide_image), (0, 4))
  resized = np.asarray(square.resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32) / 255
  np.testing.assert_allclose(out, (resized - 0.5) / 0.25, atol=1e-5)
