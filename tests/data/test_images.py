"""Image preprocessing against a PIL/NumPy re-derivation and transformers' Gemma 3 processor,
and the augmentation policy."""

from __future__ import annotations

import io
import logging

import ml_collections
import numpy as np
import pytest
from PIL import Image

from rlhfv_jax.data.images import (CLIP_MEAN, CLIP_STD, PROCESSINGS, AugmentationPolicy,
                                   ImagePreprocessor, augmentation_rng, decode_image)

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


# Gemma 3's processing ("siglip"): transformers' Gemma3ImageProcessor, PIL backend.

def gemma3_processor(size: int = SIZE, **kwargs):
  from transformers import Gemma3ImageProcessorPil
  return Gemma3ImageProcessorPil(**dict(dict(size={"height": size, "width": size},
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                             do_pan_and_scan=False), **kwargs))


def transformers_pixels(processor, image: Image.Image) -> np.ndarray:
  return processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


@pytest.mark.parametrize("shape", [(24, 32, 3), (40, 12, 3), (16, 16, 3), (20, 30), (18, 22, 4),
                                   (300, 451, 3)])
def test_siglip_resize_mode_is_transformers_gemma3_image_processor(shape):
  """The default mode: straight to image_size x image_size, bilinear, (x / 255 - 0.5) / 0.5.

  transformers gets the decoded RGB image: `decode_image` drops an alpha channel (as
  LLaVA's loader does), where transformers' own RGB conversion would composite on white.
  """
  pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
  for size in (SIZE, 896) if shape[0] == 300 else (SIZE,):
    out = ImagePreprocessor(size, processing="siglip")(encoded(pixels))
    expected = transformers_pixels(gemma3_processor(size), decode_image(encoded(pixels)))
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
  resized = Image.fromarray(pixels).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
  np.testing.assert_allclose(ImagePreprocessor(SIZE, processing="siglip")(encoded(pixels)),
                             (np.asarray(resized, np.float32) / 255 - 0.5) / 0.5, atol=1e-5)


def test_siglip_pad_mode_pads_with_the_mean_then_resizes(wide_image):
  pre = ImagePreprocessor(SIZE, resize_mode="pad", processing="siglip")
  square = Image.new("RGB", (32, 32), (127, 127, 127))  # int(0.5 * 255)
  square.paste(Image.fromarray(wide_image), (0, 4))
  np.testing.assert_array_equal(pre(encoded(wide_image)),
                                transformers_pixels(gemma3_processor(), square))
  assert pre.settings["pad_fill"] == [127, 127, 127]


def test_resize_modes_and_processings_are_checked():
  assert ImagePreprocessor(SIZE).resize_mode == "pad"  # LLaVA-1.5's default, as before
  assert ImagePreprocessor(SIZE, processing="siglip").resize_mode == "resize"
  with pytest.raises(ValueError, match=r"resize_mode='center_crop'; expected one of \('resize', "
                                       r"'pad'\) with the 'siglip' image processing"):
    ImagePreprocessor(SIZE, resize_mode="center_crop", processing="siglip")
  with pytest.raises(ValueError, match="resize_mode='resize'; expected one of"):
    ImagePreprocessor(SIZE, resize_mode="resize")
  with pytest.raises(ValueError, match="image processing 'qwen' is not defined; defined: clip, "
                                       "siglip"):
    ImagePreprocessor(SIZE, processing="qwen")
  assert set(PROCESSINGS) == {"clip", "siglip"}


def test_siglip_settings_load_from_a_local_hf_directory_without_pan_and_scan(tmp_path):
  gemma3_processor(896, image_mean=[0.4] * 3, image_std=[0.2] * 3,
                   do_pan_and_scan=True).save_pretrained(tmp_path)
  wide = np.random.default_rng(3).integers(0, 256, (400, 1200, 3), dtype=np.uint8)
  pre = ImagePreprocessor(SIZE, processor_dir=str(tmp_path), processing="siglip")
  resized = Image.fromarray(wide).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
  np.testing.assert_allclose(pre(encoded(wide)), (np.asarray(resized, np.float32) / 255 - 0.4)
                             / 0.2, atol=1e-4)
  assert pre.settings["image_mean"] == pytest.approx([0.4] * 3)
  assert pre._processor.do_pan_and_scan is False  # its crops would be extra images


def test_augmentation_acts_the_same_before_either_processing(wide_image):
  """The policy augments the decoded image, whatever processes it next."""
  data = encoded(wide_image)
  for name in ("photometric", "flip", "random_crop_ablation"):
    policy = AugmentationPolicy(name=name)
    pre = ImagePreprocessor(SIZE, processing="siglip", policy=policy)
    for epoch in range(4):
      augmented = policy.apply(Image.fromarray(wide_image), augmentation_rng(0, epoch, 5))
      np.testing.assert_array_equal(pre(data, augmentation_rng(0, epoch, 5)),
                                    transformers_pixels(gemma3_processor(), augmented))
  flip = ImagePreprocessor(SIZE, processing="siglip", policy=AugmentationPolicy(name="flip"))
  plain = ImagePreprocessor(SIZE, processing="siglip")(data)
  outs = [flip(data, augmentation_rng(0, 0, i)) for i in range(8)]
  clip_flip = ImagePreprocessor(SIZE, policy=AugmentationPolicy(name="flip"))
  clip_plain = ImagePreprocessor(SIZE)(data)
  # The same draws flip the same examples under either processing.
  assert [np.array_equal(o, plain) for o in outs] == [
      np.array_equal(clip_flip(data, augmentation_rng(0, 0, i)), clip_plain) for i in range(8)]
  for o in outs:
    if not np.array_equal(o, plain):
      np.testing.assert_allclose(o, plain[:, ::-1], atol=1e-5)


def test_the_factory_refuses_crops_and_unallowed_flips_for_gemma3():
  from rlhfv_jax.data import factory
  facts = factory.ModelFacts(num_image_tokens=4, image_token_id=600, image_size=SIZE,
                             chat_template="gemma3", image_processing="siglip")
  config = ml_collections.ConfigDict(dict(data=factory.get_data_config()))
  assert factory.make_preprocessor(config, facts).settings["resize_mode"] == "resize"
  config.data.augmentation = "random_crop"
  with pytest.raises(ValueError, match="random_crop_ablation"):
    factory.make_preprocessor(config, facts)
  config.data.augmentation = "flip"
  with pytest.raises(ValueError, match="allow_flip"):
    factory.make_preprocessor(config, facts)
  config.data.update(allow_flip=True, image_resize_mode="pad")
  pre = factory.make_preprocessor(config, facts)
  assert (pre.policy.name, pre.resize_mode, pre.processing) == ("flip", "pad", "siglip")


def test_equal_settings_give_equal_pixels_whatever_the_processing(tmp_path, wide_image):
  """Why `settings` (what the reference cache compares) needs no processing name."""
  from transformers import CLIPImageProcessorPil
  CLIPImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2,
                        size={"shortest_edge": 336},
                        crop_size={"height": 336, "width": 336}).save_pretrained(tmp_path)
  clip = ImagePreprocessor(SIZE, processor_dir=str(tmp_path))
  siglip = ImagePreprocessor(SIZE, resize_mode="pad", processing="siglip")
  assert clip.settings == siglip.settings
  np.testing.assert_allclose(clip(encoded(wide_image)), siglip(encoded(wide_image)), atol=1e-6)
