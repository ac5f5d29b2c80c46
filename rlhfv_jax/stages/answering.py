"""The one resumable batched-answering loop of the stages that generate (benchmarks,
feedback sampling): items → `Sampler` → one JSON line per answer, appended as each batch
finishes.

Batches are cut at fixed positions of the item list, and sampling batch b uses the key
`fold_in(rng, first item's position)`. A killed run is resumed by reading the lines
back: a batch whose items are all answered is skipped, any other is generated again
whole (same items, same key, so the same answers) and only its missing lines are
written. No item is lost or answered twice, and a resumed sampling run writes what an
uninterrupted one would have. A line cut by the kill is dropped and answered again.

Each process of a multi-process run answers its own share into its own file
(`answers_path`); process 0 reads them all.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable, Optional, Protocol, Sequence

import jax
from absl import logging

from rlhfv_jax import sampler as sampler_lib
from rlhfv_jax.annotate import export as annotate_export
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data.records import ErrorLog, RecordError
from rlhfv_jax.stages import model_init
from rlhfv_jax.train import mesh as mesh_lib


class Answerable(Protocol):
  """What the loop needs of an item."""

  id: str
  prompt: str

  def image_bytes(self) -> bytes:
    ...


def store_image(root: pathlib.Path, image: str, item_id: str) -> bytes:
  """The bytes of `image` under the image root `root` (a store's, or a sample stage's
  folder); an unreadable or escaping path is a `RecordError` naming `item_id`."""
  try:
    return annotate_export.image_file(root, image).read_bytes()
  except (OSError, store_lib.StoreError) as e:
    raise RecordError(item_id, f"cannot read image {image!r} under {root} "
                      f"({getattr(e, 'strerror', None) or e})") from e


def local_sampler(config: Any, batch_size: int) -> tuple[sampler_lib.Sampler, Any]:
  """(the run's sampler, its initial params) for answering on this process's devices:
  each batch split over them, the params replicated on them or, with
  ``train.parallelism="fsdp"``, sharded over them as training shards them
  (``train.mesh`` applied to the process's devices: a model too large for one device)."""
  params = model_init.load_initial_params(config)
  param_shardings, batch_sharding = mesh_lib.pass_layout(config.train, params,
                                                         jax.local_devices())
  if batch_size % batch_sharding.mesh.size:
    raise ValueError(f"batch_size={batch_size} must be a multiple of the "
                     f"{batch_sharding.mesh.size} local devices")
  sample = sampler_lib.Sampler.from_config(config)
  sample.batch_sharding = batch_sharding
  return sample, jax.device_put(params, param_shardings)


def answers_path(workdir: pathlib.Path, name: str, process_index: int,
                 process_count: int) -> pathlib.Path:
  """``<name>_answers.jsonl``, or one file per process when there are several."""
  if process_count == 1:
    return workdir / f"{name}_answers.jsonl"
  return workdir / f"{name}_answers.process{process_index}-of-{process_count}.jsonl"


def read_answers(path: pathlib.Path) -> dict[str, dict]:
  """Answered items by id (a line cut by a kill is dropped: it is answered again)."""
  answers = {}
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      answers[row["id"]] = row
  return answers


def read_all_answers(workdir: pathlib.Path, name: str, process_count: int) -> dict[str, dict]:
  """Every process's answers, by id."""
  answers: dict[str, dict] = {}
  for k in range(process_count):
    answers.update(read_answers(answers_path(workdir, name, k, process_count)))
  return answers


def _drop_partial_last_line(path: pathlib.Path) -> None:
  """A kill mid-write leaves a line without its newline: cut it (it is answered again)."""
  if not path.exists():
    return
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    path.write_bytes(data[:data.rfind(b"\n") + 1])


def answer_items(name: str, items: Sequence[Answerable], sample: sampler_lib.Sampler,
                 params: Any, path: pathlib.Path, *, row: Callable[[Any, str, bool], dict],
                 batch_size: int, max_new_tokens: int, prompt_multiple: int,
                 errors: ErrorLog, temperature: float = 0.0, top_p: float = 1.0,
                 rng: Optional[jax.Array] = None) -> None:
  """Answers the items not yet in `path` (module docstring).

  Args:
    name: for the log ("pope: 120 / 3000 answered | 4.1 items/s | ETA ...").
    items: this process's items, in a fixed order.
    sample: the sampler.
    params: the model parameters (placed as `sample.batch_sharding` expects).
    path: the JSON lines file.
    row: (item, answer text, whether it ended with EOS) -> the line's JSON object; it
      must hold the item's "id".
    batch_size, max_new_tokens, prompt_multiple: generation settings (`Sampler`).
    errors: an unreadable image is raised, or skipped and listed, per its policy.
    temperature, top_p, rng: sampling (temperature 0: greedy).
  """

  def generate(batch: Sequence[Answerable], images: list[bytes], first: int) -> list[dict]:
    out = sample(params, images, [i.prompt for i in batch], max_new_tokens=max_new_tokens,
                 batch_size=batch_size, prompt_multiple=prompt_multiple,
                 temperature=temperature, top_p=top_p,
                 rng=None if rng is None else jax.random.fold_in(rng, first))
    return [row(item, text, finished)
            for item, text, finished in zip(batch, out.texts, out.finished)]

  resumable_batches(name, items, path, generate, batch_size=batch_size, errors=errors)


def resumable_batches(name: str, items: Sequence[Answerable], path: pathlib.Path,
                      produce: Callable[[Sequence[Answerable], list[bytes], int], list[dict]],
                      *, batch_size: int, errors: ErrorLog) -> None:
  """The resumable loop (module docstring) over any per-batch computation: answering
  (`answer_items`) or scoring answer choices (the label stage's yes/no verdicts).

  Args:
    name: for the log.
    items: this process's items, in a fixed order.
    path: the JSON lines file.
    produce: (the batch's readable items, their image bytes, the batch's first position
      in `items`) -> one JSON object per item, in order, each holding the item's "id".
    batch_size: items per batch (cut at fixed positions of `items`).
    errors: an unreadable image is raised, or skipped and listed, per its policy.
  """
  _drop_partial_last_line(path)
  done = read_answers(path)
  todo = sum(item.id not in done for item in items)
  logging.info("%s: %d items, %d answered before, %d to go", name, len(items),
               len(items) - todo, todo)
  start, answered = time.monotonic(), 0
  with path.open("a", encoding="utf-8") as f:
    for first in range(0, len(items), batch_size):
      chunk = items[first:first + batch_size]
      if all(item.id in done for item in chunk):
        continue
      batch, images = [], []
      for item in chunk:
        try:
          images.append(item.image_bytes())
          batch.append(item)
        except RecordError as e:
          if item.id not in done:
            errors.handle(e)
      if not batch:
        continue
      new = [line for item, line in zip(batch, produce(batch, images, first))
             if item.id not in done]
      for line in new:
        f.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
      f.flush()
      answered += len(new)
      rate = answered / (time.monotonic() - start)
      logging.info("%s: %d / %d answered | %.2f items/s | ETA %.0fs", name,
                   len(items) - todo + answered, len(items), rate, (todo - answered) / rate)
