"""TFDS builders that turn a local source directory into `array_record` files (no TensorFlow).

Builders (TFDS name -> reader, see `readers` for the source layouts):

  ``rlhfv_parquet``     RLHF-V parquet rows                -> preference records, split "train"
  ``rlaifv_parquet``    RLAIF-V parquet rows               -> preference records, split "train"
  ``jsonl_preference``  ``<split>.jsonl`` + image folder   -> preference records, one split per file
  ``jsonl_sft``         ``<split>.jsonl`` + image folder   -> SFT records, one split per file
  ``vqav2``             official VQAv2 JSON + COCO images  -> SFT records, splits train / val

Build once (validation happens here, under the error policy)::

  prepare("rlhfv_parquet", source_dir="/data/RLHF-V-Dataset", data_dir="/data/tfds",
          error_policy="skip", run_dir="/runs/x")

A built dataset remembers what it was built from: `source_fingerprint` (every file's
relative path, size and modification time under ``source_dir``) is stored in its
``metadata.json``. `prepare` of an already built version compares it with the current
source and refuses a changed one, so an edited or replaced ``source_dir`` can never
silently train on the stale records. (The walk only stats files, so it stays cheap for
COCO-sized image folders; a copy that does not preserve modification times is seen as a
change, which errs on the safe side.)

then read anywhere through ``tfds.data_source`` (`open_split`), which returns random-access
`PreferenceRecord`/`SFTRecord`s for the grain pipeline. Images are stored as their original
encoded bytes (decoded later with PIL), so nothing is re-encoded and no TF image op is
needed. Shuffling at build time is disabled: TFDS then stores a split's records sorted by
id, so indices, skipped-id lists and the reference cache are easy to audit.

Any size builds without TensorFlow and in bounded memory: TFDS's writer would spill past
1 GB of examples through `tf.io.gfile`; `prepare` builds with `spilling_shuffler`, which
spills sorted runs with plain file I/O and merges them into the same order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from rlhfv_jax import segments
from rlhfv_jax.data import readers, spilling_shuffler
from rlhfv_jax.data.records import ErrorLog, PreferenceRecord, Record, SFTRecord

PathLike = Union[str, pathlib.Path]

_COMMON_FEATURES = {
    "id": tfds.features.Text(),
    "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded image bytes
    "question": tfds.features.Text(),
    "origin": tfds.features.Text(),  # JSON object of provenance metadata
}
_SPANS = tfds.features.Tensor(shape=(None, 2), dtype=np.int32)

PREFERENCE_FEATURES = dict(_COMMON_FEATURES, chosen=tfds.features.Text(),
                           rejected=tfds.features.Text(),
                           has_spans=tfds.features.Scalar(dtype=np.bool_),
                           chosen_spans=_SPANS, rejected_spans=_SPANS)
SFT_FEATURES = dict(_COMMON_FEATURES, answer=tfds.features.Text())


def _spans_array(spans) -> np.ndarray:
  return np.asarray(spans, np.int32).reshape(-1, 2)


def record_to_example(record: Record, store_image: bool = True) -> dict[str, Any]:
  """The TFDS feature dict of a record; with `store_image=False` a record whose origin
  names its image file (`readers.IMAGE_FILE`) keeps only that reference."""
  image = record.image
  if not store_image and readers.IMAGE_FILE in record.origin:
    image = b""
  example = {"id": record.id, "image": image, "question": record.question,
             "origin": json.dumps(dict(record.origin), sort_keys=True)}
  if isinstance(record, PreferenceRecord):
    example.update(chosen=record.chosen, rejected=record.rejected, has_spans=record.has_spans,
                   chosen_spans=_spans_array(record.chosen_spans),
                   rejected_spans=_spans_array(record.rejected_spans))
  else:
    example.update(answer=record.answer)
  return example


def _spans_tuple(spans: Any) -> tuple[tuple[int, int], ...]:
  return tuple((int(start), int(end)) for start, end in np.asarray(spans).reshape(-1, 2))


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_to_record(example: Mapping[str, Any]) -> Record:
  """Inverse of `record_to_example` for an example read back from the data source."""
  common = dict(id=_text(example["id"]), image=bytes(example["image"]),
                question=_text(example["question"]),
                origin=json.loads(_text(example["origin"])))
  if "answer" in example:
    return SFTRecord(answer=_text(example["answer"]), **common)
  return PreferenceRecord(chosen=_text(example["chosen"]), rejected=_text(example["rejected"]),
                          has_spans=bool(example["has_spans"]),
                          chosen_spans=_spans_tuple(example["chosen_spans"]),
                          rejected_spans=_spans_tuple(example["rejected_spans"]), **common)


def corrected_words(record: PreferenceRecord) -> tuple[int, int]:
  """(words in corrected segments, words) over both answers of a pair: the token diff of
  `segments.correction_masks` ("paper" rule) applied to whitespace-separated words, a
  tokenizer-free measure of how much of a pair is correction."""
  vocabulary: dict[str, int] = {}
  rejected, chosen = ([vocabulary.setdefault(w, len(vocabulary)) for w in text.split()]
                      for text in (record.rejected, record.chosen))
  rejected_mask, chosen_mask = segments.correction_masks(rejected, chosen)
  return int(rejected_mask.sum() + chosen_mask.sum()), len(rejected) + len(chosen)


def source_fingerprint(source_dir: PathLike, exclude: Sequence[PathLike] = ()
                       ) -> dict[str, Any]:
  """What `source_dir` holds: a digest of every file's relative path, size and mtime.

  Args:
    source_dir: the raw data directory (symlinked folders are followed).
    exclude: directories inside it that are not source data (e.g. a data_dir or
      run_dir placed under it, which building itself writes to).

  Returns:
    ``{"sha256": hex digest, "num_files": int, "num_bytes": int}`` (JSON-able).
  """
  source_dir = pathlib.Path(source_dir).resolve()
  excluded = [pathlib.Path(e).resolve() for e in exclude]
  entries = []
  for root, dirs, files in os.walk(source_dir, followlinks=True):
    root = pathlib.Path(root)
    dirs[:] = [d for d in dirs if (root / d).resolve() not in excluded]
    for file_name in files:
      stat = (root / file_name).stat()
      entries.append(((root / file_name).relative_to(source_dir).as_posix(), stat.st_size,
                      stat.st_mtime_ns))
  digest = hashlib.sha256()
  for relative, size, mtime_ns in sorted(entries):
    digest.update(f"{relative}\0{size}\0{mtime_ns}\n".encode("utf-8", "surrogateescape"))
  return {"sha256": digest.hexdigest(), "num_files": len(entries),
          "num_bytes": sum(size for _, size, _ in entries)}


class _LocalSourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery: a local `source_dir`, an error policy, per-split readers."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  FEATURES: Mapping[str, tfds.features.FeatureConnector] = {}
  # False: records whose image is a file under source_dir store the file's relative path
  # (validated now, read when loaded) instead of its bytes.
  STORE_IMAGE_BYTES = True

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's default probes `importlib_resources` (a backport this project does
    # not install) for builders inside a package; its own fallback is this file path.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, source_dir: Optional[PathLike] = None, error_policy: str = "raise",
               run_dir: Optional[PathLike] = None, **kwargs):
    """Args: source_dir (needed only to build), error_policy ("raise"/"skip"), run_dir
    (where "skip" writes the skipped ids), and the usual TFDS kwargs (data_dir, ...)."""
    self._source_dir = pathlib.Path(source_dir) if source_dir is not None else None
    self._error_policy = error_policy
    self._run_dir = run_dir
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(dict(self.FEATURES)),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def not_source_data(self) -> list[pathlib.Path]:
    """Output directories that may sit inside source_dir (not part of the fingerprint)."""
    return [pathlib.Path(p) for p in (self.data_dir_root, self._run_dir) if p is not None]

  def _split_names(self, source_dir: pathlib.Path) -> list[str]:
    raise NotImplementedError

  def _read(self, source_dir: pathlib.Path, split: str, errors: ErrorLog) -> Iterator[Record]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    if self._source_dir is None:
      raise ValueError(f"{self.name}: building needs source_dir=<local directory>")
    # Stored in metadata.json with the built files (see `prepare`).
    self.info.metadata["source_fingerprint"] = source_fingerprint(self._source_dir,
                                                                  self.not_source_data())
    splits = self._split_names(self._source_dir)
    if not splits:
      raise FileNotFoundError(f"{self.name}: no splits found in {str(self._source_dir)!r}")
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split: str):
    errors = ErrorLog(self._error_policy, self._run_dir, name=f"{self.name}_{split}")
    corrected = words = 0
    for record in self._read(self._source_dir, split, errors):
      if isinstance(record, PreferenceRecord):
        c, n = corrected_words(record)
        corrected, words = corrected + c, words + n
      yield record.id, record_to_example(record, store_image=self.STORE_IMAGE_BYTES)
    if words:
      # What DDPO's γ will weight: a small share for correction data (RLHF-V), most of
      # every answer for independently sampled pairs (RLAIF-V). Stored in metadata.json.
      share = corrected / words
      self.info.metadata[f"corrected_word_share/{split}"] = round(share, 4)
      logging.info("%s/%s: %.1f%% of answer words lie in corrected segments (word-level "
                   "diff, segment_mode 'paper')", self.name, split, 100 * share)


class _ParquetPreferenceBuilder(_LocalSourceBuilder, skip_registration=True):
  """A directory of parquet files -> one "train" split of preference records."""

  FEATURES = PREFERENCE_FEATURES
  READER: Callable[..., Iterator[Record]]

  def _split_names(self, source_dir):
    return ["train"]

  def _read(self, source_dir, split, errors):
    return type(self).READER(source_dir, errors)


class RlhfvParquet(_ParquetPreferenceBuilder):
  """RLHF-V fine-grained correction data from the public parquet release."""

  READER = readers.read_rlhfv_parquet


class RlaifvParquet(_ParquetPreferenceBuilder):
  """RLAIF-V preference pairs from the public parquet release (AI-ranked samples)."""

  READER = readers.read_rlaifv_parquet


class _JsonlBuilder(_LocalSourceBuilder, skip_registration=True):
  KIND = ""

  def _split_names(self, source_dir):
    return sorted(p.stem for p in source_dir.glob("*.jsonl"))

  def _read(self, source_dir, split, errors):
    return readers.read_jsonl(source_dir, split, self.KIND, errors)


class JsonlPreference(_JsonlBuilder):
  """Fine-grained correction data as JSONL + image folder."""

  FEATURES = PREFERENCE_FEATURES
  KIND = "preference"


class JsonlSft(_JsonlBuilder):
  """Supervised image-question-answer data as JSONL + image folder."""

  FEATURES = SFT_FEATURES
  KIND = "sft"


class Vqav2(_LocalSourceBuilder):
  """VQAv2 questions with their consensus answer, for the SFT stage.

  Each COCO image is stored once: in the COCO folder itself. A question keeps the path
  of its image (checked to decode at build time; the source fingerprint refuses a
  changed folder), and `RecordSource` reads it when the record is loaded: 443,757 train
  questions would otherwise carry ~70 GB of copies of 13 GB of images.
  """

  FEATURES = SFT_FEATURES
  STORE_IMAGE_BYTES = False

  def _split_names(self, source_dir):
    return [s for s in ("train", "val") if readers.vqav2_paths(source_dir, s)[0].is_file()]

  def _read(self, source_dir, split, errors):
    return readers.read_vqav2(source_dir, split, errors)


BUILDERS: dict[str, Callable[..., _LocalSourceBuilder]] = {
    b.name: b for b in (RlhfvParquet, RlaifvParquet, JsonlPreference, JsonlSft, Vqav2)}


def prepare(name: str, *, source_dir: PathLike, data_dir: PathLike, error_policy: str = "raise",
            run_dir: Optional[PathLike] = None,
            spill_bytes: Optional[int] = None) -> tfds.core.DatasetBuilder:
  """Builds the `name` dataset from `source_dir` into `data_dir`.

  If this version is already built there, nothing is rebuilt, but the stored
  `source_fingerprint` must match the current `source_dir`. Any size builds without
  TensorFlow and in bounded memory: examples past `spill_bytes` (default
  `spilling_shuffler.DEFAULT_SPILL_BYTES`) of buffered data go to sorted run files
  (`spilling_shuffler`), where TFDS's own shuffler would need `tf.io.gfile`.

  Raises:
    ValueError: unknown `name`, or the dataset in `data_dir` was built from other
      source files (or by a version that stored no fingerprint).
  """
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  builder = BUILDERS[name](source_dir=source_dir, data_dir=data_dir, error_policy=error_policy,
                           run_dir=run_dir)
  if builder.is_prepared():
    _check_built_from(builder, source_dir)
  else:
    with spilling_shuffler.use_spilling_shuffler(spill_bytes):
      builder.download_and_prepare()
  return builder


def _check_built_from(builder: _LocalSourceBuilder, source_dir: PathLike) -> None:
  """Refuses a built dataset whose stored source fingerprint differs from `source_dir`'s."""
  stored = dict(builder.info.metadata.items()).get("source_fingerprint")
  current = source_fingerprint(source_dir, builder.not_source_data())
  if stored == current:
    return
  what = ("was built without a source fingerprint, so it cannot be checked against"
          if stored is None else
          f"was built from different files ({stored['num_files']} files, {stored['num_bytes']} "
          f"bytes then; {current['num_files']} files, {current['num_bytes']} bytes now, or "
          "files renamed or modified) than those now in")
  raise ValueError(
      f"{builder.name}: the dataset in {str(builder.data_dir)!r} {what} source_dir="
      f"{str(source_dir)!r}; training on it would use stale records. Delete "
      f"{str(builder.data_dir)!r} to rebuild it from the current files, or set "
      "config.data.data_dir to a new directory (or, to use the records as built, clear "
      "config.data.source_dir).")


class RecordSource:
  """Random-access records of one built split (a grain `RandomAccessDataSource`).

  Records built with image references (VQAv2) get their image read from `image_root`
  (the dataset's source_dir) here, at load time.
  """

  def __init__(self, name: str, data_dir: PathLike, split: str,
               image_root: Optional[PathLike] = None):
    if name not in BUILDERS:
      raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    self.name, self.split = name, split
    self.image_root = pathlib.Path(image_root) if image_root else None
    self._source = tfds.data_source(name, data_dir=str(data_dir), split=split,
                                    download=False)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Record:
    record = example_to_record(self._source[index])
    if record.image:
      return record
    relative = record.origin.get(readers.IMAGE_FILE)
    if self.image_root is None:
      raise ValueError(f"{self.name}/{self.split} record {record.id!r} stores a reference to "
                       f"its image ({relative!r}), not the image: open the split with "
                       "image_root=<the source_dir it was built from> (config.data.source_dir)")
    try:
      image = (self.image_root / relative).read_bytes()
    except OSError as e:
      raise FileNotFoundError(f"{self.name}/{self.split} record {record.id!r}: cannot read "
                              f"its image {str(self.image_root / relative)!r} "
                              f"({e.strerror})") from e
    return dataclasses.replace(record, image=image)

  def __repr__(self) -> str:
    return f"RecordSource({self.name!r}, split={self.split!r}, n={len(self)})"


def open_split(name: str, data_dir: PathLike, split: str,
               image_root: Optional[PathLike] = None) -> RecordSource:
  """Opens a built split through `tfds.data_source` (array_record, no TensorFlow);
  `image_root`: the source_dir, for datasets that store image references (VQAv2)."""
  return RecordSource(name, data_dir, split, image_root)
