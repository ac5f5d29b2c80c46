"""The `sample` stage: a model's own answers, put in the annotation store for correction.

  python -m rlhfv_jax.main --config configs/llava15_feedback.py:sample --workdir DIR \\
      --config.init.params=checkpoint --config.init.checkpoint_dir=/runs/llava15_7b_ddpo \\
      --config.sample.images=/data/my_images

RLHF-V's feedback is about the model's own long answers: this stage asks the model to
describe images and stores `sample.num_samples` answers per (image, prompt) in the
SQLite store (``sample.store``, default ``<workdir>/annotations.sqlite``), which
`python -m rlhfv_jax.annotate` serves to annotators.

What is asked (``config.sample``):
  images      the image folder; every path is relative to it and stays under it
  questions   optional JSON lines ``{"image", "question"[, "id"]}`` (id default:
              ``<image>|<n>``, n the question's number in the file); without it every
              image under ``images`` (sorted) is asked one of ``prompts`` in turn
              (default: the 8 description prompts of the RLHF-V paper's appendix)
  num_samples answers per question (item ids ``<question id>#<k>``)
  temperature, top_p, seed, max_new_tokens, batch_size, prompt_multiple: generation

The settings and the model are recorded with every item (``meta``). Each process
answers its own share (`answering`: batched over its devices, resumable: a killed run
continues where it stopped and draws the same answers); process 0 then adds every
answer to the store, which ignores those it already holds, so re-running is safe.
Unreadable images: an error naming the file, or with ``error_policy="skip"`` a listed
skip (``skipped_sample.jsonl``).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from typing import Any

import jax
from absl import logging
from jax.experimental import multihost_utils

from rlhfv_jax import jsonl
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data.records import ErrorLog
from rlhfv_jax.stages import answering, model_init

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
ANSWERS = "sample"  # <workdir>/sample_answers.jsonl


@dataclasses.dataclass(frozen=True)
class Question:
  """One (image, prompt) to answer, `sample` of `num_samples`."""

  id: str
  image: str  # relative to the image root
  prompt: str
  sample: int
  root: pathlib.Path

  def image_bytes(self) -> bytes:
    return answering.store_image(self.root, self.image, self.id)


def _asked(s: Any, root: pathlib.Path) -> list[tuple[str, str, str]]:
  """(question id, image, prompt) of everything to ask, in a fixed order."""
  if s.questions:
    path, out = pathlib.Path(s.questions), []
    for number, (line_number, row) in enumerate(jsonl.read_objects(path), start=1):
      where = jsonl.location(path, line_number)
      if not row.get("image") or not row.get("question"):
        raise ValueError(f"{where}: needs non-empty 'image' and 'question'")
      image = store_lib.check_image_path(str(row.get("id", where)), str(row["image"]))
      out.append((str(row.get("id", f"{image}|{number}")), image, str(row["question"])))
    duplicates = sorted(i for i, n in collections.Counter(q[0] for q in out).items() if n > 1)
    if duplicates:
      raise ValueError(f"{path}: duplicate question ids {duplicates[:5]}")
    return out
  images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
  if not images:
    raise ValueError(f"sample.images={str(root)!r} holds no images ({IMAGE_SUFFIXES})")
  return [(image, image, s.prompts[n % len(s.prompts)]) for n, image in enumerate(images)]


def questions(s: Any) -> list[Question]:
  """Every (question, sample index) of the `sample` section, in a fixed order."""
  root = pathlib.Path(s.images)
  return [Question(f"{qid}#{k}", image, prompt, k, root)
          for qid, image, prompt in _asked(s, root) for k in range(s.num_samples)]


def run(config: Any, workdir: str) -> dict[str, Any]:
  """The stage (module docstring). Returns counts (on every process)."""
  s, root = config.sample, pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  pid, count = jax.process_index(), jax.process_count()
  todo = questions(s)
  try:
    sample, params = answering.local_sampler(config, s.batch_size)
  except ValueError as e:
    raise ValueError(f"sample.{e}") from e
  errors = ErrorLog(s.error_policy, root, name="sample")
  settings = {"model": model_init.describe_init(config), "temperature": s.temperature,
              "top_p": s.top_p, "seed": s.seed, "max_new_tokens": s.max_new_tokens}

  def row(q: Question, text: str, finished: bool) -> dict:
    return {"id": q.id, "image": q.image, "prompt": q.prompt, "answer": text,
            "finished": finished, "sample": q.sample}

  answering.answer_items(
      "sample", todo[pid::count], sample, params,
      answering.answers_path(root, ANSWERS, pid, count), row=row, batch_size=s.batch_size,
      max_new_tokens=s.max_new_tokens, prompt_multiple=s.prompt_multiple, errors=errors,
      temperature=s.temperature, top_p=s.top_p, rng=jax.random.key(s.seed))
  if count > 1:
    multihost_utils.sync_global_devices("sample answered")
  answers = answering.read_all_answers(root, ANSWERS, count)
  store_path = s.store or str(root / "annotations.sqlite")
  added = 0
  if pid == 0:
    store = store_lib.AnnotationStore(store_path)
    store.image_root = s.images
    added = store.add_items(
        store_lib.Item(a["id"], a["image"], a["prompt"], a["answer"],
                       dict(settings, sample=a["sample"], finished=a["finished"]))
        for a in (answers[q.id] for q in todo if q.id in answers))
    logging.info("sample: %d answers, %d new in %s", len(answers), added, store_path)
  return {"questions": len(todo), "answered": len(answers), "added": added,
          "store": store_path}
