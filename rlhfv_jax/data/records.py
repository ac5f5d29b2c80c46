"""Record schema, validation and the error policy for every dataset reader.

A *record* is one validated example before tokenization:

* `PreferenceRecord`: one fine-grained correction example (RLHF-V): an image, a
  question, the model's original answer (`rejected`, y_l) and the labeler-corrected
  answer (`chosen`, y_w), optional explicit segment annotations, origin metadata.
* `SFTRecord`: one supervised image-question-answer example (VQAv2, captions).

Explicit segment annotations: `chosen_spans` / `rejected_spans` are tuples of
half-open character spans ``(start, end)`` into the *verbatim* answer string, marking
the corrected segments y_c. When a record carries them (`has_spans`), they override the
token diff of `rlhfv_jax.segments.correction_masks`; a token is corrected iff its
characters overlap a span. An annotated record with no spans on one side means "nothing
corrected on that side", which is different from "no annotation" (`has_spans=False`).

Validation (`make_preference_record`, `make_sft_record`) raises `RecordError`, whose
message names the record id, where it came from and what is wrong: missing keys,
non-UTF-8 or non-string text, empty question/answers, chosen identical to rejected,
text containing the literal image placeholder (the chat template inserts the image),
bad spans, and missing or undecodable images (decoded fully with PIL, so truncated files
are caught at build time, not mid-training).

Error policy (`ErrorLog`): ``"raise"`` (default) re-raises the first error;
``"skip"`` counts it, logs a WARNING and appends ``{"id", "location", "problem"}`` to
``<run_dir>/skipped_<name>.jsonl``. Nothing is ever dropped silently.

Multi-process runs share one run directory, so each process appends only to its own
file, ``skipped_<name>.process<k>-of-<n>.jsonl`` (`skipped_path`): no two writers ever
interleave lines in one file, and no id is lost, because every process lists what *it*
skipped. (Writing from process 0 alone would lose ids wherever processes see different
examples, e.g. the reference pass, where each handles its own share of the split.) Where
processes see the same examples (the loader filters every global batch on every process)
the files repeat each other; `read_skipped` merges the files of a name into one list,
each (id, location, problem) once.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import pathlib
import threading
from typing import Any, Mapping, Optional, Union

from PIL import Image

IMAGE_PLACEHOLDER = "<image>"
ERROR_POLICIES = ("raise", "skip")

Span = tuple[int, int]


class RecordError(ValueError):
  """A record that cannot be used, with the record id, its location and the problem."""

  def __init__(self, record_id: Optional[str], problem: str, location: Optional[str] = None):
    self.record_id = record_id
    self.problem = problem
    self.location = location
    where = f" ({location})" if location else ""
    super().__init__(f"record {record_id!r}{where}: {problem}")


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
  """One fine-grained correctional feedback example (see the module docstring)."""

  id: str
  image: bytes
  question: str
  chosen: str
  rejected: str
  has_spans: bool = False
  chosen_spans: tuple[Span, ...] = ()
  rejected_spans: tuple[Span, ...] = ()
  origin: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SFTRecord:
  """One supervised image-question-answer example."""

  id: str
  image: bytes
  question: str
  answer: str
  origin: Mapping[str, str] = dataclasses.field(default_factory=dict)


Record = Union[PreferenceRecord, SFTRecord]


def as_utf8(record_id: Optional[str], field: str, value: Any,
            location: Optional[str] = None) -> str:
  """Returns `value` as a `str` that is valid UTF-8, or raises `RecordError` saying why not.

  Bytes are decoded as strict UTF-8; strings are checked to be encodable (json can
  produce lone surrogates from invalid input).
  """
  if value is None:
    raise RecordError(record_id, f"missing key {field!r}", location)
  if isinstance(value, (bytes, bytearray)):
    try:
      value = bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise RecordError(record_id, f"field {field!r} is not valid UTF-8 ({e})", location) from e
  if not isinstance(value, str):
    raise RecordError(record_id, f"field {field!r} must be text, got {type(value).__name__}",
                      location)
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise RecordError(record_id, f"field {field!r} is not valid UTF-8 ({e})", location) from e
  return value


def check_text(record_id: str, field: str, value: Any, location: Optional[str] = None) -> str:
  """`as_utf8`, and the text must be non-empty and free of the image placeholder."""
  value = as_utf8(record_id, field, value, location)
  if not value.strip():
    raise RecordError(record_id, f"field {field!r} is empty", location)
  if IMAGE_PLACEHOLDER in value:
    raise RecordError(record_id, f"field {field!r} contains the image placeholder "
                      f"{IMAGE_PLACEHOLDER!r}; the chat template inserts the image itself",
                      location)
  return value


@functools.lru_cache(maxsize=64)
def _image_decode_problem(data: bytes) -> Optional[str]:
  """None if PIL fully decodes `data`, else the problem. Cached: VQAv2 questions share images."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # `verify()` alone misses truncated JPEG data.
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ...).
    return f"undecodable image ({type(e).__name__}: {e})"
  return None


def check_image(record_id: str, data: Any, location: Optional[str] = None) -> bytes:
  """Returns the encoded image bytes after checking that PIL decodes them fully."""
  if data is None:
    raise RecordError(record_id, "missing image", location)
  if not isinstance(data, (bytes, bytearray)) or not data:
    raise RecordError(record_id, f"image must be non-empty encoded bytes, got "
                      f"{type(data).__name__} of size {len(data)}", location)
  data = bytes(data)
  problem = _image_decode_problem(data)
  if problem is not None:
    raise RecordError(record_id, problem, location)
  return data


def _check_spans(record_id: str, field: str, spans: Any, text: str,
                 location: Optional[str]) -> tuple[Span, ...]:
  """Validates half-open character spans into `text`: sorted, disjoint, in range."""
  try:
    pairs = tuple((int(s), int(e)) for s, e in spans)
  except (TypeError, ValueError) as e:
    raise RecordError(record_id, f"{field} must be a list of [start, end] pairs, got "
                      f"{spans!r}", location) from e
  previous_end = 0
  for start, end in pairs:
    if not previous_end <= start < end <= len(text):
      raise RecordError(record_id, f"{field} span ({start}, {end}) is empty, out of order, "
                        f"overlapping or outside the {len(text)}-character answer", location)
    previous_end = end
  return pairs


def _required(raw: Mapping[str, Any], key: str, record_id: str, location: Optional[str]) -> Any:
  if key not in raw or raw[key] is None:
    raise RecordError(record_id, f"missing key {key!r}", location)
  return raw[key]


def _record_id(raw: Mapping[str, Any], location: Optional[str]) -> str:
  record_id = raw.get("id")
  if record_id is None or (isinstance(record_id, str) and not record_id):
    raise RecordError(None, "missing key 'id'", location)
  if isinstance(record_id, (bytes, bytearray)):
    record_id = as_utf8(None, "id", record_id, location)
  return str(record_id)


def _origin(raw: Mapping[str, Any]) -> dict[str, str]:
  origin = raw.get("origin") or {}
  return {str(k): "" if v is None else str(v) for k, v in origin.items()}


def make_preference_record(raw: Mapping[str, Any], location: Optional[str] = None
                           ) -> PreferenceRecord:
  """Validates a raw mapping into a `PreferenceRecord`.

  Args:
    raw: keys ``id, image (bytes), question, chosen, rejected`` and optionally
      ``segments`` = ``{"chosen": [[s, e], ...], "rejected": [[s, e], ...]}`` and
      ``origin`` (a flat mapping of metadata).
    location: where the record came from (file and row), for error messages.

  Raises:
    RecordError: see the module docstring.
  """
  record_id = _record_id(raw, location)
  question = check_text(record_id, "question", _required(raw, "question", record_id, location),
                        location)
  chosen = check_text(record_id, "chosen", _required(raw, "chosen", record_id, location),
                      location)
  rejected = check_text(record_id, "rejected", _required(raw, "rejected", record_id, location),
                        location)
  if chosen == rejected:
    raise RecordError(record_id, "chosen and rejected answers are identical (no correction)",
                      location)
  segments = raw.get("segments")
  chosen_spans: tuple[Span, ...] = ()
  rejected_spans: tuple[Span, ...] = ()
  if segments is not None:
    if not isinstance(segments, Mapping) or set(segments) - {"chosen", "rejected"}:
      raise RecordError(record_id, "segments must be a mapping with keys 'chosen' and/or "
                        f"'rejected', got {segments!r}", location)
    chosen_spans = _check_spans(record_id, "segments.chosen", segments.get("chosen", ()),
                                chosen, location)
    rejected_spans = _check_spans(record_id, "segments.rejected",
                                  segments.get("rejected", ()), rejected, location)
  image = check_image(record_id, _required(raw, "image", record_id, location), location)
  return PreferenceRecord(id=record_id, image=image, question=question, chosen=chosen,
                          rejected=rejected, has_spans=segments is not None,
                          chosen_spans=chosen_spans, rejected_spans=rejected_spans,
                          origin=_origin(raw))


def make_sft_record(raw: Mapping[str, Any], location: Optional[str] = None) -> SFTRecord:
  """Validates a raw mapping (``id, image, question, answer[, origin]``) into an `SFTRecord`."""
  record_id = _record_id(raw, location)
  question = check_text(record_id, "question", _required(raw, "question", record_id, location),
                        location)
  answer = check_text(record_id, "answer", _required(raw, "answer", record_id, location),
                      location)
  image = check_image(record_id, _required(raw, "image", record_id, location), location)
  return SFTRecord(id=record_id, image=image, question=question, answer=answer,
                   origin=_origin(raw))


def skipped_path(run_dir: Union[str, pathlib.Path], name: str, process_index: int = 0,
                 process_count: int = 1) -> pathlib.Path:
  """The file one process lists its skipped records in (module docstring)."""
  if process_count == 1:
    return pathlib.Path(run_dir) / f"skipped_{name}.jsonl"
  return pathlib.Path(run_dir) / f"skipped_{name}.process{process_index}-of-{process_count}.jsonl"


def read_skipped(run_dir: Union[str, pathlib.Path], name: str) -> list[dict[str, Any]]:
  """Every skipped record listed under `name` in `run_dir`, all processes' files merged.

  Returns:
    ``{"id", "location", "problem"}`` dicts in file then line order, each distinct one
    once (processes that saw the same example list it in their own files).
  """
  run_dir = pathlib.Path(run_dir)
  paths = sorted(run_dir.glob(f"skipped_{name}.process*-of-*.jsonl"))
  single = run_dir / f"skipped_{name}.jsonl"
  if single.is_file():
    paths.insert(0, single)
  merged: dict[tuple, dict[str, Any]] = {}
  for path in paths:
    for line in path.read_text(encoding="utf-8").splitlines():
      entry = json.loads(line)
      merged.setdefault((entry["id"], entry["location"], entry["problem"]), entry)
  return list(merged.values())


class ErrorLog:
  """Applies the error policy to `RecordError`s; thread-safe.

  With policy "raise" `handle` re-raises. With "skip" it counts the error, logs a
  WARNING and appends one JSON line to this process's file `skipped_path(run_dir, name,
  process_index, process_count)` (an identical error seen again, e.g. the same example
  in a later epoch, is listed once).
  """

  def __init__(self, policy: str = "raise", run_dir: Optional[Union[str, pathlib.Path]] = None,
               name: str = "records", *, process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    """Args:
      policy: "raise" or "skip".
      run_dir: where "skip" lists the skipped records.
      name: what is being read (part of the file name).
      process_index, process_count: this process and how many share `run_dir`; default
        `jax.process_index()` / `jax.process_count()`.
    """
    if policy not in ERROR_POLICIES:
      raise ValueError(f"error policy {policy!r}: expected one of {ERROR_POLICIES}")
    if policy == "skip" and run_dir is None:
      raise ValueError("error policy 'skip' needs a run_dir to write the skipped ids to")
    if process_index is None or process_count is None:
      import jax  # local: only the default needs the runtime
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    self.policy = policy
    self.path = (skipped_path(run_dir, name, process_index, process_count)
                 if run_dir is not None else None)
    self._skipped: list[RecordError] = []
    self._seen: set[tuple] = set()
    self._lock = threading.Lock()

  @property
  def num_skipped(self) -> int:
    return len(self._skipped)

  @property
  def skipped_ids(self) -> list[Optional[str]]:
    return [e.record_id for e in self._skipped]

  def handle_input_error(self, error: ValueError) -> None:
    """A bad line or entry of an input file (its message names the file and line):
    `handle` as a record without an id. Pass it as a reader's error callback."""
    self.handle(RecordError(None, str(error)))

  def handle(self, error: RecordError) -> None:
    """Raises `error` (policy "raise") or records it as skipped (policy "skip")."""
    if self.policy == "raise":
      raise error
    key = (error.record_id, error.location, error.problem)
    with self._lock:
      if key in self._seen:  # the same example again, e.g. in a later epoch
        return
      self._seen.add(key)
      self._skipped.append(error)
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with self.path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": error.record_id, "location": error.location,
                            "problem": error.problem}) + "\n")
      logging.warning("skipping %s (%d skipped so far, listed in %s)", error,
                      len(self._skipped), self.path)

