"""`config.data` defaults and the builders that turn a run config into data objects.

The training code calls::

  loader = factory.make_loader(config, global_batch_size=..., run_dir=workdir)
  state = iter(loader)            # grain iterator: get_state() / set_state() for checkpoints
  factory.precompute_reference(config, token_logps_fn, batch_size=..., run_dir=workdir)

The model facts the pipeline needs (``num_image_tokens``, ``image_token_id``,
``image_size``, the names of the family's chat template and image processing) come from
``config.model`` (through `rlhfv_jax.model.family_of`) unless passed as `ModelFacts`, so
the data code does not depend on the model otherwise. The template and the processing
are built through their registries by name (`tokenizer.TEMPLATES`, `images.PROCESSINGS`);
``data.system_message``, ``data.prompt_template`` and ``data.image_resize_mode`` default
to None, meaning the template's / processing's own default (Vicuna v1's system message
and prompt and "pad" for LLaVA-1.5; no system message, Gemma 3's turns and "resize" for
Gemma 3).
The segment rule is ``config.ddpo.segment_mode`` / ``segment_min_match`` (defaults in
`rlhfv_jax.segments`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional, Union

import jax
import ml_collections
from jax.experimental import multihost_utils

from rlhfv_jax import segments
from rlhfv_jax.data import loader, tfds_builders
from rlhfv_jax.data.images import DEFAULT_PROCESSING, AugmentationPolicy, ImagePreprocessor
from rlhfv_jax.data.loader import Loader
from rlhfv_jax.data.records import ErrorLog
from rlhfv_jax.data.ref_cache import (ReferenceCache, TokenLogpsFn, compute_reference_cache,
                                      default_cache_dir)
from rlhfv_jax.data.tokenizer import (DEFAULT_TEMPLATE, ChatTemplate, Tokenizer, load_tokenizer,
                                      make_chat_template, template_spec)

PathLike = Union[str, pathlib.Path]


def get_data_config() -> ml_collections.ConfigDict:
  """Defaults for ``config.data`` (LLaVA-1.5 sizes; tests and the demo override them)."""
  return ml_collections.ConfigDict(dict(
      dataset="rlhfv_parquet",   # a `tfds_builders.BUILDERS` name
      source_dir="",             # raw local data; if set, the dataset is built on first use
      data_dir="",               # TFDS data dir holding the array_record files
      split="train",
      tokenizer="",              # a SentencePiece .model file or a local HF tokenizer dir
      # None: the chat template's own (`tokenizer.TEMPLATES`: Vicuna v1's for LLaVA-1.5,
      # none / Gemma 3's turns for Gemma 3); the prompt is jinja2 with exactly one <image>.
      system_message=ml_collections.config_dict.placeholder(str),
      prompt_template=ml_collections.config_dict.placeholder(str),
      image_processor_dir="",    # optional local dir with preprocessor_config.json
      # None: the image processing's own (`images.PROCESSINGS`): "pad" for LLaVA-1.5 (or
      # "center_crop", CLIP's), "resize" for Gemma 3 (or "pad").
      image_resize_mode=ml_collections.config_dict.placeholder(str),
      # 576 image tokens + ~45 prompt tokens + answers of up to a few hundred tokens:
      # SFT rows fit 768; a shared-prefix preference row (the prompt once, both answers)
      # 1024-1536 for RLHF-V's 100-250-token answers. One compilation per bucket used.
      buckets=(768, 1024, 1280, 1536, 2048),
      # One row per preference pair, the prompt (image tokens included) run once: the
      # same log-probs as one row per answer, for ~40% fewer decoder tokens on LLaVA-1.5
      # shapes (docs/performance.md). False: the unshared layout, for comparison.
      shared_prefix=True,
      seed=0,
      shuffle=True,
      num_epochs=ml_collections.config_dict.placeholder(int),  # None: repeat forever
      error_policy="raise",      # or "skip": skipped ids go to <workdir>/skipped_*.jsonl
      augmentation="none",       # "photometric", "flip" (needs allow_flip), or the
      allow_flip=False,          #   "random_crop_ablation"; see `images`
      photometric_strength=0.1,
      num_threads=4,
      use_ref_cache=False,       # merge precomputed reference log-probs into batches
      ref_cache_dir="",          # default: next to the dataset (`ref_cache.default_cache_dir`)
      ref_cache_tag="reference",
  ))


@dataclasses.dataclass(frozen=True)
class ModelFacts:
  """What the pipeline must agree on with the model."""

  num_image_tokens: int
  image_token_id: int
  image_size: int
  vocab_size: Optional[int] = None  # the embedding rows; None: not checked
  max_positions: Optional[int] = None  # text.max_position_embeddings; None: not checked
  chat_template: str = DEFAULT_TEMPLATE  # a `tokenizer.TEMPLATES` name
  image_processing: str = DEFAULT_PROCESSING  # an `images.PROCESSINGS` name

  @classmethod
  def from_config(cls, config: Any) -> "ModelFacts":
    from rlhfv_jax import model  # local: only this accessor needs the model package
    family = model.family_of(config.model)
    return cls(num_image_tokens=family.num_image_tokens(config.model),
               image_token_id=int(config.model.image_token_id),
               image_size=int(config.model.vision.image_size),
               vocab_size=int(config.model.text.vocab_size),
               max_positions=int(config.model.text.max_position_embeddings),
               chat_template=family.chat_template, image_processing=family.image_processing)


def check_buckets(config: Any, facts: ModelFacts) -> None:
  """The largest bucket (the longest sequence ever fed, image tokens included) must fit the
  positions the model was trained for: RoPE computes any position, so a longer sequence
  would not fail, it would silently run the model outside its trained context."""
  largest = max(int(b) for b in config.data.buckets)
  if facts.max_positions is not None and largest > facts.max_positions:
    raise ValueError(
        f"the largest data bucket, {largest} tokens (config.data.buckets="
        f"{tuple(config.data.buckets)}), exceeds the model's "
        f"text.max_position_embeddings={facts.max_positions}. Lower the largest bucket to at "
        f"most {facts.max_positions} (longer answers are then truncated, and listed by the "
        "loader), or use a model with a longer context.")


def make_tokenizer(config: Any, facts: Optional[ModelFacts] = None) -> Tokenizer:
  """``config.data.tokenizer`` loaded for the model family's chat template (`facts`,
  default `ModelFacts.from_config(config)`); the backend follows the path type."""
  facts = facts or ModelFacts.from_config(config)
  if not config.data.tokenizer:
    raise ValueError("config.data.tokenizer is empty: set it to a tokenizer.model file or a "
                     "local HF tokenizer directory")
  return load_tokenizer(config.data.tokenizer, template=facts.chat_template)


def template_texts(config: Any, facts: Optional[ModelFacts] = None) -> tuple[str, str]:
  """(system message, jinja2 prompt) of the run: ``config.data``'s, or where None the model
  family's chat template's defaults (without loading a tokenizer)."""
  facts = facts or ModelFacts.from_config(config)
  return template_spec(facts.chat_template).texts(config.data.get("system_message"),
                                                  config.data.get("prompt_template"))


def make_template(config: Any, facts: ModelFacts, tokenizer: Optional[Tokenizer] = None
                  ) -> ChatTemplate:
  """The model family's chat template; checks the tokenizer's image token id and
  vocabulary against the model.

  A token id past the model's embedding table would not fail loudly: JAX gathers fill
  it with NaN, which surfaces only as a non-finite loss.
  """
  if tokenizer is None:
    tokenizer = make_tokenizer(config, facts)
  image_token = template_spec(facts.chat_template).image_token
  if tokenizer.image_token_id != facts.image_token_id:
    raise ValueError(f"the tokenizer's {image_token} id is {tokenizer.image_token_id} but the "
                     f"model's image_token_id is {facts.image_token_id}")
  tokenizer_vocab = getattr(tokenizer, "vocab_size", None)
  if facts.vocab_size is not None and tokenizer_vocab is not None and (
      tokenizer_vocab > facts.vocab_size):
    raise ValueError(f"the tokenizer has {tokenizer_vocab} ids but the model's embedding table "
                     f"has only text.vocab_size={facts.vocab_size} rows")
  system, prompt = template_texts(config, facts)
  return make_chat_template(facts.chat_template, tokenizer, facts.num_image_tokens,
                            system=system, template=prompt)


def make_preprocessor(config: Any, facts: ModelFacts, augment: bool = True) -> ImagePreprocessor:
  """The model family's image processing with the validated augmentation policy (none if
  not `augment`)."""
  policy = AugmentationPolicy.from_config(config.data) if augment else AugmentationPolicy()
  return ImagePreprocessor(facts.image_size, resize_mode=config.data.get("image_resize_mode"),
                           policy=policy, processor_dir=config.data.image_processor_dir or None,
                           processing=facts.image_processing)


def open_source(config: Any, run_dir: Optional[PathLike] = None,
                split: Optional[str] = None) -> tfds_builders.RecordSource:
  """The split's records; builds the dataset from ``source_dir`` first if that is set."""
  data = config.data
  if not data.data_dir:
    raise ValueError("config.data.data_dir is empty: set the TFDS data directory")
  if data.source_dir:
    if jax.process_index() == 0:  # one writer; the others wait for it
      tfds_builders.prepare(data.dataset, source_dir=data.source_dir, data_dir=data.data_dir,
                            error_policy=data.error_policy, run_dir=run_dir)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"data prepared: {data.dataset}")
  return tfds_builders.open_split(data.dataset, data.data_dir, split or data.split,
                                  image_root=data.source_dir or None)


def _errors(config: Any, run_dir: Optional[PathLike], name: str, process_index: int,
            process_count: int) -> ErrorLog:
  return ErrorLog(config.data.error_policy, run_dir, name=name, process_index=process_index,
                  process_count=process_count)


def ref_cache_dir(config: Any) -> pathlib.Path:
  data = config.data
  return pathlib.Path(data.ref_cache_dir) if data.ref_cache_dir else default_cache_dir(
      data.data_dir, data.dataset, data.split, data.ref_cache_tag)


def _ref_lookup(config: Any, facts: ModelFacts):
  """The reference cache's lookup with ``data.use_ref_cache``, else None. The reference
  saw un-augmented images of the same preprocessing (the cache refuses others)."""
  if not config.data.use_ref_cache:
    return None
  return ReferenceCache.load(
      ref_cache_dir(config), preprocessor=make_preprocessor(config, facts, augment=False)).lookup


def _segment_settings(config: Any) -> dict[str, Any]:
  """The corrected-segment rule (`config.ddpo.segment_mode` / `segment_min_match`)."""
  ddpo = config.get("ddpo") or {}
  return dict(segment_mode=ddpo.get("segment_mode", segments.DEFAULT_MODE),
              min_match=ddpo.get("segment_min_match", segments.DEFAULT_MIN_MATCH))


def make_loader(config: Any, *, global_batch_size: int, run_dir: Optional[PathLike] = None,
                facts: Optional[ModelFacts] = None, tokenizer: Optional[Tokenizer] = None,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                source: Any = None, shuffle: Optional[bool] = None,
                num_epochs: Optional[int] = None, augment: bool = True) -> Loader:
  """The training (or evaluation) `Loader` described by ``config.data``.

  Args:
    config: the run config (``data``, ``model`` unless `facts`, optional ``ddpo``).
    global_batch_size: examples per step over all processes.
    run_dir: where skipped ids are listed (needed for ``error_policy="skip"``).
    facts: model facts; default `ModelFacts.from_config(config)`.
    tokenizer: overrides ``config.data.tokenizer`` (e.g. the demo's own tokenizer).
    process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
    source: overrides the TFDS split (any random-access sequence of records).
    shuffle, num_epochs: override ``config.data``.
    augment: False ignores ``config.data.augmentation`` (evaluation sees the plain images).
  """
  facts = facts or ModelFacts.from_config(config)
  check_buckets(config, facts)
  data = config.data
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  return Loader(
      source if source is not None else open_source(config, run_dir),
      make_template(config, facts, tokenizer), make_preprocessor(config, facts, augment),
      global_batch_size=global_batch_size, buckets=tuple(data.buckets), seed=data.seed,
      num_epochs=data.num_epochs if num_epochs is None else num_epochs,
      shuffle=data.shuffle if shuffle is None else shuffle,
      process_index=process_index, process_count=process_count,
      errors=_errors(config, run_dir, "pipeline", process_index, process_count),
      ref_lookup=_ref_lookup(config, facts), shared_prefix=data.shared_prefix,
      num_threads=data.num_threads, **_segment_settings(config))


def ordered_batches(config: Any, *, global_batch_size: int, source: Any = None,
                    run_dir: Optional[PathLike] = None, facts: Optional[ModelFacts] = None,
                    tokenizer: Optional[Tokenizer] = None,
                    process_index: Optional[int] = None, process_count: Optional[int] = None):
  """Every example of the split once, in order, un-augmented: `loader.ordered_batches`
  over this process's share, each process running the same number of batches (the
  evaluation pass; see there for the validity mask of the padded tail).

  Yields:
    (host batch of `global_batch_size / process_count` examples, its `FixedSizeBatch`).
  """
  facts = facts or ModelFacts.from_config(config)
  check_buckets(config, facts)
  data = config.data
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} "
                     "processes")
  source = source if source is not None else open_source(config, run_dir)
  host_batch = global_batch_size // process_count
  per_process = -(-len(source) // process_count)
  return loader.ordered_batches(
      source, make_template(config, facts, tokenizer),
      make_preprocessor(config, facts, augment=False),
      indices=range(process_index, len(source), process_count), batch_size=host_batch,
      buckets=tuple(data.buckets), num_batches=-(-per_process // host_batch),
      errors=_errors(config, run_dir, "ordered", process_index, process_count),
      ref_lookup=_ref_lookup(config, facts), shared_prefix=data.shared_prefix,
      **_segment_settings(config))


def precompute_reference(config: Any, token_logps_fn: TokenLogpsFn, *, batch_size: int,
                         run_dir: Optional[PathLike] = None, facts: Optional[ModelFacts] = None,
                         tokenizer: Optional[Tokenizer] = None, source: Any = None,
                         metadata: Optional[dict[str, Any]] = None,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> pathlib.Path:
  """The ``precompute_ref`` stage: writes this process's shard of the reference cache."""
  facts = facts or ModelFacts.from_config(config)
  check_buckets(config, facts)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  return compute_reference_cache(
      source if source is not None else open_source(config, run_dir),
      make_template(config, facts, tokenizer), make_preprocessor(config, facts, augment=False),
      token_logps_fn, ref_cache_dir(config), batch_size=batch_size,
      buckets=tuple(config.data.buckets),
      process_index=process_index, process_count=process_count,
      errors=_errors(config, run_dir, "reference", process_index, process_count),
      metadata=metadata, shared_prefix=config.data.shared_prefix,
      **_segment_settings(config))
