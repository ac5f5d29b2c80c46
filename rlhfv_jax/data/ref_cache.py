"""Reference log-prob cache: one reference forward pass per example, reused every epoch.

DDPO compares policy and reference scores of both answers. The reference model is frozen,
so its per-token log-probs can be computed once (`compute_reference_cache`, the
``precompute_ref`` stage) and merged into the batches (`ReferenceCache.lookup` as the
loader's ``ref_lookup``), letting the train step skip the reference forward.

What is stored, per example id and answer ("chosen", "rejected"): the float32 log-probs
of the *scored* tokens only, i.e. the targets under ``loss_mask`` (the answer tokens and
the closing EOS, or the kept part of a truncated answer). That makes the cache
independent of padding and bucket length (the model is causal, right-padded), and of γ
and of the normalization (both are applied to per-token log-probs later, in
`ddpo.sequence_logps`). Each answer also stores a fingerprint of its whole (unpadded)
token sequence, prompt and image placeholders included. When merged, the loader checks
the cached length against the number of scored tokens and the fingerprint against the
current tokenization: a different tokenizer, chat template or system message, image
token count, answer text or a smaller largest bucket is a clear error, not silently
misaligned (or mis-conditioned) log-probs.

The cache's ``metadata`` records a short identity of the source (`source_identity`: its
dataset name, split and length, never the records themselves) and the image
preprocessing settings (`ImagePreprocessor.settings`: size, resize mode, normalization).
`ReferenceCache.load(..., preprocessor=...)` refuses a cache computed with other
preprocessing: its log-probs were conditioned on different pixels.

Images are preprocessed without augmentation here. With an augmentation policy the
training batches see augmented images while the cached reference saw the plain one (as in
the released RLHF-V scripts, which precompute reference log-probs once); with "none"
(the default) the two are identical.

Layout, next to the dataset by default (`default_cache_dir`):
``<data_dir>/<dataset>/ref_logps/<split>-<tag>/ref_logps-<process>-of-<count>.npz``; each
process of a multi-host pass writes its own shard (it handles source indices
``process_index::process_count``); `ReferenceCache.load` merges all shards and refuses
an incomplete set. Each ``.npz`` holds ``ids``, ``{chosen,rejected}_lengths``,
``{chosen,rejected}_logps`` (concatenated), ``{chosen,rejected}_fingerprints`` and
``metadata`` (JSON), no pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from rlhfv_jax.batch import PreferenceBatch
from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.data.loader import ordered_batches
from rlhfv_jax.data.records import ErrorLog
from rlhfv_jax.data.tokenizer import ChatTemplate

PathLike = Union[str, pathlib.Path]
TokenLogpsFn = Callable[[PreferenceBatch], tuple[Any, Any]]  # -> ([B, T], [B, T]) per-token
ANSWERS = ("chosen", "rejected")
_SHARD_RE = re.compile(r"ref_logps-(\d{5})-of-(\d{5})\.npz")


def sequence_fingerprint(sequence_ids: np.ndarray) -> int:
  """A 64-bit digest of a token sequence: one answer's real tokens with its prompt,
  `input_ids[attention_mask]` of its row (the same in both row layouts)."""
  data = np.ascontiguousarray(sequence_ids, dtype="<i4").tobytes()
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def source_identity(source: Sequence[Any]) -> dict[str, Any]:
  """A short JSON-able identity of a record source: its dataset name and split where it has
  them (`tfds_builders.RecordSource`), its type and its length."""
  identity: dict[str, Any] = {"type": type(source).__name__, "length": len(source)}
  for attribute in ("name", "split"):
    value = getattr(source, attribute, None)
    if isinstance(value, str):
      identity[attribute] = value
  return identity


def default_cache_dir(data_dir: PathLike, dataset: str, split: str,
                      tag: str = "reference") -> pathlib.Path:
  """Where the cache of `split` lives next to the built dataset; `tag` names the reference."""
  return pathlib.Path(data_dir) / dataset / "ref_logps" / f"{split}-{tag}"


def shard_path(cache_dir: PathLike, process_index: int, process_count: int) -> pathlib.Path:
  return pathlib.Path(cache_dir) / f"ref_logps-{process_index:05d}-of-{process_count:05d}.npz"


def compute_reference_cache(source: Sequence[Any], template: ChatTemplate,
                            preprocessor: ImagePreprocessor, token_logps_fn: TokenLogpsFn,
                            cache_dir: PathLike, *, batch_size: int, buckets: Sequence[int],
                            segment_mode: str = "paper", min_match: int = 3,
                            process_index: int = 0, process_count: int = 1,
                            errors: Optional[ErrorLog] = None,
                            metadata: Optional[Mapping[str, Any]] = None,
                            shared_prefix: bool = False) -> pathlib.Path:
  """Runs the reference over this process's share of `source` and writes its shard.

  Args:
    source: random-access preference records (e.g. `tfds_builders.RecordSource`).
    template, preprocessor: as for the training loader (augmentation is not applied).
    token_logps_fn: batch -> (chosen, rejected) per-token log-probs [B, T] aligned with
      `targets` (the reference model + `ddpo.token_logps`). Every call gets exactly
      `batch_size` examples (the last batch is padded with repeats, which are discarded).
    cache_dir: output directory.
    batch_size: examples per call.
    buckets: sequence lengths, as in training (the largest bounds truncation).
    segment_mode, min_match: as in training (they do not change the stored values).
    process_index, process_count: this process's share.
    errors: policy for prompts that do not fit (as in training).
    metadata: JSON-able facts to store (e.g. the reference checkpoint).
    shared_prefix: run the pairs in the shared-prefix layout (`packing`); the stored
      values do not depend on it (each answer's sequence is the same in both layouts).

  Returns:
    The written shard path.
  """
  errors = errors if errors is not None else ErrorLog("raise")
  stored: dict[str, list[np.ndarray]] = {name: [] for name in ANSWERS}
  fingerprints: dict[str, list[int]] = {name: [] for name in ANSWERS}
  ids: list[str] = []
  indices = list(range(process_index, len(source), process_count))
  for batch, chunk in ordered_batches(source, template, preprocessor, indices=indices,
                                      batch_size=batch_size, buckets=buckets,
                                      segment_mode=segment_mode, min_match=min_match,
                                      errors=errors, shared_prefix=shared_prefix):
    length = batch.chosen.input_ids.shape[1]
    outputs = [np.asarray(x, np.float32) for x in token_logps_fn(batch)]
    for name, logps in zip(ANSWERS, outputs):
      if logps.shape != (batch_size, length):
        raise ValueError(f"token_logps_fn returned {name} log-probs of shape {logps.shape}; "
                         f"expected {(batch_size, length)} (one per target position)")
      seq = getattr(batch, name)
      stored[name].extend(chunk.real(lp[mask] for lp, mask in zip(logps, seq.loss_mask)))
      fingerprints[name].extend(chunk.real(
          sequence_fingerprint(ids_[mask]) for ids_, mask in zip(seq.input_ids,
                                                                 seq.attention_mask)))
    ids.extend(e.id for e in chunk.real(chunk.items))
    logging.info("reference cache: %d / %d examples", len(ids), len(indices))
  if not ids:
    raise ValueError(f"reference cache: no usable example in {source!r} for process "
                     f"{process_index} of {process_count}")
  meta = dict(metadata or {}, num_source_examples=len(source), source=source_identity(source),
              image_preprocessing=preprocessor.settings)
  arrays = {"ids": np.asarray(ids), "metadata": np.asarray(json.dumps(meta, sort_keys=True))}
  for name in ANSWERS:
    arrays[f"{name}_lengths"] = np.asarray([len(x) for x in stored[name]], np.int64)
    arrays[f"{name}_logps"] = np.concatenate(stored[name]).astype(np.float32)
    arrays[f"{name}_fingerprints"] = np.asarray(fingerprints[name], np.uint64)
  path = shard_path(cache_dir, process_index, process_count)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)  # atomic: a half-written shard is never mistaken for a result
  return path


def _check_preprocessing(metadata: Mapping[str, Any], current: Mapping[str, Any],
                         cache_dir: pathlib.Path) -> None:
  cached = metadata.get("image_preprocessing")
  if cached == current:
    return
  if cached is None:
    problem = "does not record its image preprocessing (written by an older version)"
  else:
    changed = sorted(k for k in set(cached) | set(current) if cached.get(k) != current.get(k))
    problem = ("was computed with other image preprocessing: " + ", ".join(
        f"{k}={cached.get(k)!r} then, {current.get(k)!r} now" for k in changed))
  raise ValueError(f"reference cache at {str(cache_dir)!r} {problem}; its log-probs were "
                   "conditioned on other pixels. Rerun the precompute_ref stage (or point "
                   "config.data.ref_cache_dir / ref_cache_tag at a new cache).")


class ReferenceCache:
  """Cached reference per-token log-probs keyed by example id (merged shards)."""

  def __init__(self, entries: Mapping[str, Mapping[str, np.ndarray]],
               fingerprints: Mapping[str, Mapping[str, int]], metadata: Mapping[str, Any],
               cache_dir: PathLike):
    self._entries = dict(entries)
    self._fingerprints = dict(fingerprints)
    self.metadata = dict(metadata)
    self.cache_dir = pathlib.Path(cache_dir)

  @classmethod
  def load(cls, cache_dir: PathLike, preprocessor: Optional[ImagePreprocessor] = None
           ) -> "ReferenceCache":
    """Reads and merges every shard in `cache_dir`; refuses a missing or mixed set.

    Args:
      cache_dir: the cache directory.
      preprocessor: if given, the cache must have been computed with its settings.
    """
    cache_dir = pathlib.Path(cache_dir)
    shards = sorted(p for p in cache_dir.glob("ref_logps-*.npz") if _SHARD_RE.fullmatch(p.name))
    if not shards:
      raise FileNotFoundError(f"no reference cache shards in {str(cache_dir)!r}; run the "
                              "precompute_ref stage first")
    counts = {int(_SHARD_RE.fullmatch(p.name).group(2)) for p in shards}
    found = sorted(int(_SHARD_RE.fullmatch(p.name).group(1)) for p in shards)
    if len(counts) != 1 or found != list(range(counts.pop())):
      raise ValueError(f"reference cache {str(cache_dir)!r} has an incomplete or mixed set of "
                       f"shards: {[p.name for p in shards]}")
    entries: dict[str, dict[str, np.ndarray]] = {}
    fingerprints: dict[str, dict[str, int]] = {}
    metadata = None
    for path in shards:
      with np.load(path, allow_pickle=False) as shard:
        shard_meta = json.loads(str(shard["metadata"]))
        if metadata is not None and shard_meta != metadata:
          raise ValueError(f"reference cache shard {path.name} was computed with different "
                           f"metadata: {shard_meta} vs {metadata}")
        metadata = shard_meta
        if any(f"{name}_fingerprints" not in shard for name in ANSWERS):
          raise ValueError(f"reference cache shard {path.name} has no sequence fingerprints "
                           "(written by an older version); rerun the precompute_ref stage")
        split = {name: np.split(shard[f"{name}_logps"],
                                np.cumsum(shard[f"{name}_lengths"])[:-1]) for name in ANSWERS}
        for k, example_id in enumerate(shard["ids"].tolist()):
          if example_id in entries:
            raise ValueError(f"reference cache: example id {example_id!r} appears twice "
                             f"(shard {path.name})")
          entries[example_id] = {name: split[name][k] for name in ANSWERS}
          fingerprints[example_id] = {name: int(shard[f"{name}_fingerprints"][k])
                                      for name in ANSWERS}
    if preprocessor is not None:
      _check_preprocessing(metadata, preprocessor.settings, cache_dir)
    return cls(entries, fingerprints, metadata, cache_dir)

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, example_id: str) -> bool:
    return example_id in self._entries

  def lookup(self, example_id: str, name: str, num_scored: int,
             sequence_ids: np.ndarray) -> np.ndarray:
    """The cached log-probs of answer `name` of `example_id` (a `packing.RefLookup`).

    Args:
      example_id, name: the example and "chosen" / "rejected".
      num_scored: how many tokens the current tokenization scores.
      sequence_ids: the current real (unpadded) token ids of the packed sequence; must
        be the sequence the reference saw (same fingerprint).
    """
    entry = self._entries.get(example_id)
    if entry is None:
      raise KeyError(f"example id {example_id!r} is missing from the reference cache at "
                     f"{str(self.cache_dir)!r} ({len(self)} ids; computed for another dataset "
                     "or split?). Rerun the precompute_ref stage.")
    logps = entry[name]
    if len(logps) != num_scored:
      raise ValueError(
          f"reference cache at {str(self.cache_dir)!r}: example {example_id!r} has "
          f"{len(logps)} cached log-probs for the {name} answer but the current tokenization "
          f"scores {num_scored} tokens (tokenizer, chat template, image tokens or the largest "
          "bucket changed?). Rerun the precompute_ref stage.")
    if sequence_fingerprint(sequence_ids) != self._fingerprints[example_id][name]:
      raise ValueError(
          f"reference cache at {str(self.cache_dir)!r}: example {example_id!r} ({name} answer) "
          "was computed for a different token sequence than the current one (tokenizer, chat "
          "template, system message, image token count or the record's text changed?). "
          "Rerun the precompute_ref stage.")
    return logps
