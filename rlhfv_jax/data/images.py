"""Image decoding, the transformers image processors, and the augmentation policy.

Preprocessing (`ImagePreprocessor`): decode with PIL to RGB, optionally augment, resize
as the resize mode says, then the model family's transformers image processor (PIL
backend) resizes to ``image_size`` and normalizes; output is HWC float32. The processing
is chosen by name (`PROCESSINGS`, a model family's ``image_processing``,
`rlhfv_jax.model.families`); nothing outside this module branches on it:

* ``"clip"`` (LLaVA-1.5): ``CLIPImageProcessor``: bicubic resize of the shortest edge,
  centre crop, CLIP mean/std. Resize modes: ``"pad"`` (the default: LLaVA-1.5's
  ``image_aspect_ratio="pad"``, pad to a square with the processor's mean colour first,
  which keeps every object in view) or ``"center_crop"`` (CLIP's own, which cuts the
  sides of non-square images).
* ``"siglip"`` (Gemma 3): ``Gemma3ImageProcessor``: bilinear resize straight to
  ``image_size`` x ``image_size``, rescale 1/255, normalize with mean 0.5, std 0.5; no
  pan-and-scan (its extra crops would be extra images; forced off, also when
  ``processor_dir`` turns it on). Resize modes: ``"resize"`` (the default: exactly
  transformers' processor, the pixels Gemma 3 was trained on; nothing is cut, a
  non-square image is stretched) or ``"pad"`` (pad to a square with the mean colour
  first, as for LLaVA: aspect ratios kept, but pixels transformers' ``Gemma3Processor``
  does not produce, so a model trained so should be served with the same padding).

Every resize mode keeps the whole image in view except CLIP's ``"center_crop"``. An alpha
channel is dropped when decoding (`decode_image`, as LLaVA's loader does), where
transformers' processors would composite on white: for such images only, the pixels
differ from transformers'. Equal settings give equal pixels whatever the processing (a
padded square resized by either processor is the same image, tested), so
`ImagePreprocessor.settings`, which the reference cache compares, names no processing.

Augmentation policy (``config.data.augmentation``), deterministic given
(seed, epoch, example index) so a resumed run and every host agree; the same for every
processing (it acts on the decoded image, before the resize):

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
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageEnhance

AUGMENTATIONS = ("none", "photometric", "flip", "random_crop_ablation")
RESIZE_MODES = ("pad", "center_crop", "resize")  # all processings' (each allows some)
MAX_PHOTOMETRIC_STRENGTH = 0.25
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Processing:
  """An image processing: a transformers image processor (PIL backend) and its modes.

  Attributes:
    name: its `PROCESSINGS` key (a model family's ``image_processing``).
    processor_class: the transformers class.
    image_mean, image_std: its normalization when no ``processor_dir`` is given.
    resize_modes: the modes it allows (module docstring); the first is the default.
    size_kwargs: ``image_size`` -> the processor's size arguments.
    fixed_kwargs: processor arguments that override any ``preprocessor_config.json``.
  """

  name: str
  processor_class: str
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  resize_modes: tuple[str, ...]
  size_kwargs: Callable[[int], dict[str, Any]]
  fixed_kwargs: tuple[tuple[str, Any], ...] = ()


PROCESSINGS = {
    "clip": Processing(
        name="clip", processor_class="CLIPImageProcessorPil", image_mean=CLIP_MEAN,
        image_std=CLIP_STD, resize_modes=("pad", "center_crop"),
        size_kwargs=lambda s: dict(size={"shortest_edge": s},
                                   crop_size={"height": s, "width": s})),
    "siglip": Processing(
        name="siglip", processor_class="Gemma3ImageProcessorPil", image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD, resize_modes=("resize", "pad"),
        size_kwargs=lambda s: dict(size={"height": s, "width": s}),
        fixed_kwargs=(("do_pan_and_scan", False),)),
}
DEFAULT_PROCESSING = "clip"  # LLaVA-1.5's, for callers that name none


def processing_spec(name: str) -> Processing:
  """The `Processing` called `name` (ValueError naming the known ones otherwise)."""
  if name not in PROCESSINGS:
    raise ValueError(f"image processing {name!r} is not defined; defined: "
                     f"{', '.join(PROCESSINGS)}")
  return PROCESSINGS[name]


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

  def __init__(self, image_size: int, resize_mode: Optional[str] = None,
               policy: AugmentationPolicy = AugmentationPolicy(),
               processor_dir: Optional[str] = None, processing: str = DEFAULT_PROCESSING):
    """Args:
      image_size: output side length (``cfg.model.vision.image_size``).
      resize_mode: one of the processing's modes (module docstring); None: its default
        ("pad" for "clip", "resize" for "siglip").
      policy: the augmentation policy.
      processor_dir: optional local HF directory with ``preprocessor_config.json``; its
        mean/std/resample are used, its size is overridden by `image_size`.
      processing: a `PROCESSINGS` name.
    """
    spec = processing_spec(processing)
    resize_mode = spec.resize_modes[0] if resize_mode is None else resize_mode
    if resize_mode not in spec.resize_modes:
      raise ValueError(f"resize_mode={resize_mode!r}; expected one of {spec.resize_modes} "
                       f"with the {processing!r} image processing")
    import transformers  # local: heavy import
    processor_class = getattr(transformers, spec.processor_class)
    kwargs = dict(spec.size_kwargs(image_size), **dict(spec.fixed_kwargs))
    if processor_dir:
      self._processor = processor_class.from_pretrained(processor_dir, local_files_only=True,
                                                        **kwargs)
    else:
      self._processor = processor_class(image_mean=spec.image_mean, image_std=spec.image_std,
                                        **kwargs)
    self.image_size = image_size
    self.resize_mode = resize_mode
    self.processing = processing
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
