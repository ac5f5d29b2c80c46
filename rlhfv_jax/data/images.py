"""Image decoding, the transformers image processor, and the augmentation policy.

Preprocessing (`ImagePreprocessor`): decode with PIL to RGB, optionally augment, then
either pad to a square with the processor's mean colour (``resize_mode="pad"``, the
default: LLaVA-1.5's ``image_aspect_ratio="pad"``, which keeps every object in view) or
leave the image as is for the processor's centre crop (``"center_crop"``: CLIP's default,
which cuts the sides of non-square images). Then the transformers CLIP image processor
(PIL backend) resizes to ``image_size`` and normalizes; output is HWC float32.

Augmentation policy (``config.data.augmentation``), deterministic given
(seed, epoch, example index) so a resumed run and every host agree:

* ``"none"`` (default): no augmentation.
* ``"photometric"``: mild brightness and contrast jitter, factors uniform in
  [1 - s, 1 + s] with s = ``photometric_strength`` (<= 0.25). Colours a labeler would
  name stay the same, so the answers stay true.
* ``"flip"``: horizontal flip with probability 1/2, only if ``allow_flip`` is set:
  flipping swaps left and right, so answers that say "on the left" become false.
* ``"random_crop_ablation"``: random-resized crop (area 50-100%, aspect 3/4-4/3). The
  paper avoids cropping because it cuts objects out of the image while the text still
  mentions them, i.e. it *creates* hallucination targets; this exists only to reproduce
  that ablation and logs a WARNING. Any other request for cropping is refused.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageEnhance

AUGMENTATIONS = ("none", "photometric", "flip", "random_crop_ablation")
RESIZE_MODES = ("pad", "center_crop")
MAX_PHOTOMETRIC_STRENGTH = 0.25
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(data: bytes) -> Image.Image:
  """Encoded bytes -> RGB PIL image (grey, palette and RGBA images are converted)."""
  with Image.open(io.BytesIO(data)) as image:
    return image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class AugmentationPolicy:
  """A validated augmentation policy; `apply` is a pure function of (image, rng)."""

  name: str = "none"
  photometric_strength: float = 0.1

  @classmethod
  def from_config(cls, data_config: Any, warn: bool = True) -> "AugmentationPolicy":
    """Validates ``augmentation``, ``allow_flip`` and ``photometric_strength`` of config.data.

    `warn`: log the crop ablation's WARNING (config validation checks without it, so the
    warning comes when a run builds its data, not when a config is checked up front).
    """
    name = str(data_config.get("augmentation", "none"))
    if name not in AUGMENTATIONS:
      if "crop" in name.lower():
        raise ValueError(
            f"config.data.augmentation={name!r}: random cropping is refused because it cuts "
            "objects out of the image while the answer still mentions them (the paper's "
            "reason for not cropping). To run that ablation on purpose set "
            "config.data.augmentation='random_crop_ablation'.")
      raise ValueError(f"config.data.augmentation={name!r}; expected one of {AUGMENTATIONS}")
    if name == "flip" and not data_config.get("allow_flip", False):
      raise ValueError(
          "config.data.augmentation='flip' needs config.data.allow_flip=True: a flip swaps "
          "left and right in the image but not in the text. Allow it only for data without "
          "spatial language.")
    strength = float(data_config.get("photometric_strength", 0.1))
    if not 0.0 <= strength <= MAX_PHOTOMETRIC_STRENGTH:
      raise ValueError(f"config.data.photometric_strength={strength} must be in "
                       f"[0, {MAX_PHOTOMETRIC_STRENGTH}] so jitter cannot change what a "
                       "colour is called")
    if warn and name == "random_crop_ablation":
      logging.warning("ABLATION: random crop augmentation is ON (config.data.augmentation="
                      "'random_crop_ablation'). Crops remove objects the answers mention; "
                      "use only to reproduce the paper's cropping ablation.")
    return cls(name=name, photometric_strength=strength)

  def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Augments `image` with draws from `rng` (identity for "none")."""
    if self.name == "photometric":
      s = self.photometric_strength
      image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - s, 1 + s))
      image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - s, 1 + s))
    elif self.name == "flip":
      if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif self.name == "random_crop_ablation":
      image = _random_resized_crop_box(image, rng)
    return image


def _random_resized_crop_box(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """Crops a random box of 50-100% of the area, aspect ratio in [3/4, 4/3]."""
  width, height = image.size
  area = rng.uniform(0.5, 1.0) * width * height
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
  crop_w = int(round(min(width, np.sqrt(area * aspect))))
  crop_h = int(round(min(height, np.sqrt(area / aspect))))
  left = int(rng.integers(0, width - crop_w + 1))
  top = int(rng.integers(0, height - crop_h + 1))
  return image.crop((left, top, left + crop_w, top + crop_h))


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator for one example's augmentation: a function of (seed, epoch, index)."""
  return np.random.default_rng([seed, epoch, index])


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
  """Pads the shorter side symmetrically with `fill` (LLaVA-1.5's ``expand2square``)."""
  width, height = image.size
  if width == height:
    return image
  side = max(width, height)
  square = Image.new(image.mode, (side, side), fill)
  square.paste(image, ((side - width) // 2, (side - height) // 2))
  return square


class ImagePreprocessor:
  """Encoded image bytes -> [H, W, 3] float32 through the transformers image processor."""

  def __init__(self, image_size: int, resize_mode: str = "pad",
               policy: AugmentationPolicy = AugmentationPolicy(),
               processor_dir: Optional[str] = None):
    """Args:
      image_size: output side length (``cfg.model.vision.image_size``).
      resize_mode: "pad" or "center_crop", see the module docstring.
      policy: the augmentation policy.
      processor_dir: optional local HF directory with ``preprocessor_config.json``; its
        mean/std/resample are used, its size is overridden by `image_size`.
    """
    if resize_mode not in RESIZE_MODES:
      raise ValueError(f"resize_mode={resize_mode!r}; expected one of {RESIZE_MODES}")
    from transformers import CLIPImageProcessorPil  # local: heavy import
    size = dict(size={"shortest_edge": image_size},
                crop_size={"height": image_size, "width": image_size})
    if processor_dir:
      self._processor = CLIPImageProcessorPil.from_pretrained(processor_dir, local_files_only=True,
                                                              **size)
    else:
      self._processor = CLIPImageProcessorPil(image_mean=CLIP_MEAN, image_std=CLIP_STD, **size)
    self.image_size = image_size
    self.resize_mode = resize_mode
    self.policy = policy
    # LLaVA-1.5's expand2square fill, `tuple(int(x * 255) for x in image_mean)`: truncated,
    # (122, 116, 104) for CLIP's mean, the pixels its checkpoints were trained on.
    self._fill = tuple(int(m * 255) for m in self._processor.image_mean)

  @property
  def settings(self) -> dict[str, Any]:
    """What determines the un-augmented output of an image (JSON-able), e.g. to tell
    whether reference log-probs computed elsewhere saw the same pixels."""
    processor = self._processor
    resample = processor.resample
    return dict(image_size=self.image_size, resize_mode=self.resize_mode,
                pad_fill=list(self._fill),
                image_mean=[float(m) for m in processor.image_mean],
                image_std=[float(s) for s in processor.image_std],
                resample=int(resample) if resample is not None else None,
                do_rescale=bool(processor.do_rescale),
                rescale_factor=float(processor.rescale_factor),
                do_normalize=bool(processor.do_normalize))

  def __call__(self, data: bytes, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Preprocesses one encoded image, augmented with draws from `rng` (None: not augmented,
    e.g. for evaluation and the reference log-prob pass)."""
    image = decode_image(data)
    if rng is not None:
      image = self.policy.apply(image, rng)
    if self.resize_mode == "pad":
      image = expand_to_square(image, self._fill)
    pixels = self._processor(image, return_tensors="np")["pixel_values"][0]  # [3, H, W]
    return np.ascontiguousarray(pixels.transpose(1, 2, 0), dtype=np.float32)
