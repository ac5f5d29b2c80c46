"""The `hallucination_eval` stage: POPE, Object HalBench (rule-based CHAIR) and AMBER.

  python -m rlhfv_jax.main --config configs/llava15_hallucination_eval.py --workdir DIR \
      --config.init.hf_checkpoint=... --config.hallucination.benchmarks=pope,objhal,amber

For every benchmark in ``hallucination.benchmarks`` it answers each item greedily with the
project's sampler (`rlhfv_jax.sampler`: LLaVA-1.5 template, images padded to square, never
cropped; KV-cache `generate`), writing ``<bench>_answers.jsonl`` as it goes (id, image,
prompt, answer, the parsed label where one exists), then scores them with
`rlhfv_jax.evals` into ``hallucination_results.json`` and ``hallucination_results.md``
(beside the published numbers). A killed run resumes: answered ids are read back and
skipped, so no item is lost or answered twice. Each process answers its own share of the
items (``<bench>_answers.process<k>-of-<n>.jsonl``), its batches split over its local
devices, the params replicated on them or, with ``train.parallelism="fsdp"``, sharded
over them as training shards them (``train.mesh``, applied to the process's devices: a
model too large for one device); process 0 scores all shares. Nothing is downloaded: the
benchmark files are local. (Of ``train.*`` only the parallelism and mesh are read:
nothing is trained.)

Inputs (``config.hallucination``):
  pope_dir        `coco_pope_{random,popular,adversarial}.json` (splits: ``pope_splits``)
  coco_images     a COCO val2014 image folder (POPE and Object HalBench images)
  coco_annotations  COCO 2014 `instances_*` and `captions_*` JSON (Object HalBench truth)
  objhal_questions  optional JSON lines with `image_id`, `question` and an `image` (a path
                  under coco_images, or base64 bytes as in RLHF-V's
                  obj_halbench_300_with_image.jsonl); without it, `objhal_num_images` images
                  are drawn from coco_images with `seed`, cycling the 8 paper prompts
  amber_dir       AMBER's `data/annotations.json`, `data/query/query_discriminative.json`
                  and its images (`amber_images`, default `<amber_dir>/image`)
Bad input (a missing image, an unreadable line, an annotation that does not cover an
image) is an error naming the file/line/id, or with ``error_policy="skip"`` a counted
skip listed in ``skipped_<bench>.jsonl``; the results record scored / total.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rlhfv_jax import jsonl
from rlhfv_jax.data.records import ErrorLog, RecordError, read_skipped
from rlhfv_jax.evals import amber, objhal, pope
from rlhfv_jax.stages import answering, model_init

RESULTS_JSON = "hallucination_results.json"
RESULTS_MD = "hallucination_results.md"
# Published numbers to put a run beside (see each scorer's docstring for the source).
PUBLISHED = {
    "pope": [("LLaVA-1.5-7B", {"f1": 0.859})],
    "objhal": [("LLaVA-1.5-7B (GPT path)", {"response_hall": 0.536, "chair_i": 0.252}),
               ("RLHF-V-13B (GPT path)", {"response_hall": 0.122, "chair_i": 0.075})],
    "amber": [("LLaVA-1.5-7B", {"accuracy": 0.735, "f1": 0.776})],
}
_COCO_FILE = re.compile(r"COCO_val2014_(\d+)\.jpg$")


@dataclasses.dataclass(frozen=True)
class Item:
  """One question of a benchmark.

  Attributes:
    id: unique within the benchmark (POPE: "<split>/<question_id>").
    image: where the image is (a path), or its bytes.
    prompt: the instruction given to the model (without the image placeholder).
    label: the expected answer where the benchmark has one ("yes"/"no"), else None.
    meta: what the scorer needs besides the answer (split, image_id, dimension).
  """

  id: str
  image: pathlib.Path | bytes
  prompt: str
  label: Optional[str]
  meta: dict[str, Any]

  def image_bytes(self) -> bytes:
    if isinstance(self.image, bytes):
      return self.image
    try:
      return self.image.read_bytes()
    except OSError as e:
      raise RecordError(self.id, f"cannot read image {str(self.image)!r} ({e.strerror})") from e


# ------------------------------------------------------------------------------- items

def _through(errors: ErrorLog) -> Callable[[ValueError], None]:
  """A bad input line/entry: raised, or skipped and listed, per the error policy."""
  return lambda e: errors.handle(RecordError(None, str(e)))


def pope_items(h: Any, errors: ErrorLog) -> list[Item]:
  root, images = pathlib.Path(h.pope_dir), pathlib.Path(h.coco_images)
  items = []
  for split in h.pope_splits:
    for q in pope.read_questions(root / f"coco_pope_{split}.json", _through(errors)):
      items.append(Item(f"{split}/{q['question_id']}", images / q["image"],
                        q["text"] + h.short_answer_suffix, q["label"],
                        {"split": split, "image_file": q["image"]}))
  return items


def _objhal_image(value: str, images: pathlib.Path, where: str) -> pathlib.Path | bytes:
  """An `image` field: a file under the COCO folder, or base64 bytes (RLHF-V's file)."""
  if (images / value).is_file() or value.endswith((".jpg", ".png")):
    return images / value
  try:
    return base64.b64decode(value, validate=True)
  except (binascii.Error, ValueError) as e:
    raise ValueError(f"{where}: 'image' is neither a file under {images} nor base64") from e


def _objhal_question(q: dict[str, Any], where: str, images: pathlib.Path) -> Item:
  missing = [k for k in ("image_id", "question", "image") if k not in q]
  if missing:
    raise ValueError(f"{where}: missing {missing}")
  return Item(str(q["image_id"]), _objhal_image(q["image"], images, where), q["question"],
              None, {"image_id": int(q["image_id"])})


def objhal_items(h: Any, errors: ErrorLog) -> list[Item]:
  images = pathlib.Path(h.coco_images)
  if h.objhal_questions:
    path, items = pathlib.Path(h.objhal_questions), []
    for number, q in jsonl.read_objects(path, _through(errors)):
      try:
        items.append(_objhal_question(q, jsonl.location(path, number), images))
      except ValueError as e:
        _through(errors)(e)
    return items
  # The reproducible default: `objhal_num_images` COCO images drawn with `seed`.
  files = sorted(p.name for p in images.glob("COCO_val2014_*.jpg"))
  if len(files) < h.objhal_num_images:
    raise ValueError(f"{images}: {len(files)} COCO val2014 images, fewer than "
                     f"hallucination.objhal_num_images={h.objhal_num_images}")
  chosen = sorted(np.random.default_rng(h.seed).choice(len(files), h.objhal_num_images,
                                                       replace=False).tolist())
  prompts = objhal.PROMPTS
  return [Item(str(int(_COCO_FILE.search(files[i]).group(1))), images / files[i],
               prompts[n % len(prompts)], None,
               {"image_id": int(_COCO_FILE.search(files[i]).group(1))})
          for n, i in enumerate(chosen)]


def amber_items(h: Any, errors: ErrorLog) -> list[Item]:
  root = pathlib.Path(h.amber_dir)
  images = pathlib.Path(h.amber_images) if h.amber_images else root / "image"
  entries = amber.read_discriminative(root / "data" / "query" / "query_discriminative.json",
                                      root / "data" / "annotations.json", _through(errors))
  return [Item(str(e["id"]), images / e["image"], e["query"] + h.short_answer_suffix,
               e["truth"], {"dimension": e["dimension"]}) for e in entries]


ITEM_LOADERS: dict[str, Callable[[Any, ErrorLog], list[Item]]] = {
    "pope": pope_items, "objhal": objhal_items, "amber": amber_items}


# ------------------------------------------------------------------------------- answers

def parsed_label(benchmark: str, answer: str) -> Optional[str]:
  if benchmark == "pope":
    return pope.parse_answer(answer)
  if benchmark == "amber":
    return amber.normalize(answer)
  return None


def answer_row(benchmark: str) -> Callable[[Item, str, bool], dict]:
  """The JSON line of one answered item: what it asked, the answer, the parsed label."""
  def row(item: Item, text: str, finished: bool) -> dict:
    return {"id": item.id, "image": str(item.image) if not isinstance(item.image, bytes)
            else "<bytes>", "prompt": item.prompt, "answer": text, "finished": finished,
            "parsed": parsed_label(benchmark, text), "label": item.label, **item.meta}
  return row


# ------------------------------------------------------------------------------- scores

def score(benchmark: str, answers: list[dict], h: Any, errors: ErrorLog) -> dict[str, Any]:
  """The benchmark's metrics of `answers` (`rlhfv_jax.evals`); an Object HalBench image
  the COCO annotations do not cover goes through `errors` (named, or skipped and listed)."""
  if benchmark == "objhal":
    coco = objhal.CocoObjects(h.coco_annotations)
    covered = []
    for a in answers:
      if a["image_id"] in coco.ground_truth:
        covered.append(a)
      else:
        errors.handle(RecordError(a["id"], f"image {a['image_id']} is not in the COCO "
                                  f"annotations under {h.coco_annotations}"))
    result = coco.score([a["image_id"] for a in covered], [a["answer"] for a in covered])
    return dict(result, scored=len(covered))
  if benchmark == "pope":
    out = {"splits": {}, "scored": len(answers),
           "files": {s: pope.file_sha256(pathlib.Path(h.pope_dir) / f"coco_pope_{s}.json")
                     for s in h.pope_splits}}
    for split in h.pope_splits:
      rows = [a for a in answers if a["split"] == split]
      if rows:
        out["splits"][split] = pope.score([a["answer"] for a in rows],
                                          [a["label"] for a in rows])
    f1s = [s["f1"] for s in out["splits"].values()]
    out["f1"] = float(np.mean(f1s)) if f1s else float("nan")
    return out
  result = amber.score([a["answer"] for a in answers], [a["label"] for a in answers],
                       [a["dimension"] for a in answers])
  return dict(result, scored=len(answers))


def markdown(results: dict[str, Any]) -> str:
  """The results beside the published numbers, one table per benchmark (percent)."""
  lines = ["# Hallucination benchmarks", ""]
  for benchmark, result in results["benchmarks"].items():
    if benchmark == "objhal":
      keys = ["response_hall", "chair_i", "chair_s", "recall", "avg_words"]
      lines.append("## Object HalBench, CHAIR (rule)")
    elif benchmark == "pope":
      keys = ["f1"]
      lines.append("## POPE (mean F1 over splits)")
    else:
      keys = ["accuracy", "f1"]
      lines.append("## AMBER discriminative")
    lines += ["", "| model | " + " | ".join(keys) + " | scored |",
              "|---" * (len(keys) + 2) + "|"]
    lines.append("| this run | " + " | ".join(f"{100 * result[k]:.1f}" if k != "avg_words"
                                               else f"{result[k]:.1f}" for k in keys)
                 + f" | {result['scored']} / {result['total']} |")
    for name, numbers in PUBLISHED[benchmark]:
      lines.append(f"| {name} (published) | " + " | ".join(
          f"{100 * numbers[k]:.1f}" if k in numbers else "" for k in keys) + " | |")
    lines.append("")
  return "\n".join(lines)


# ------------------------------------------------------------------------------- stage

def run(config: Any, workdir: str) -> dict[str, Any]:
  """The stage (module docstring). Returns the results (on every process)."""
  h, root = config.hallucination, pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  pid, count = jax.process_index(), jax.process_count()
  # Each process answers its share, its batches split over its local devices.
  try:
    sample, params = answering.local_sampler(config, h.batch_size)
  except ValueError as e:
    raise ValueError(f"hallucination.{e}") from e
  settings = {"temperature": 0.0, "decoding": "greedy", "batch_size": h.batch_size,
              "prompt_multiple": h.prompt_multiple, "image_preprocessing":
              sample.preprocessor.settings, "init": model_init.describe_init(config)}
  results: dict[str, Any] = {"settings": settings, "benchmarks": {}}
  for benchmark in h.benchmarks:
    errors = ErrorLog(h.error_policy, root, name=benchmark)
    items = ITEM_LOADERS[benchmark](h, errors)
    unreadable = errors.num_skipped  # input lines/entries that made no item
    path = answering.answers_path(root, benchmark, pid, count)
    answering.answer_items(benchmark, items[pid::count], sample, params, path,
                           row=answer_row(benchmark), batch_size=h.batch_size,
                           max_new_tokens=h.max_new_tokens[benchmark],
                           prompt_multiple=h.prompt_multiple, errors=errors)
    if count > 1:
      multihost_utils.sync_global_devices(f"hallucination_eval {benchmark} answered")
    answers = answering.read_all_answers(root, benchmark, count)
    ordered = [answers[i.id] for i in items if i.id in answers]
    result = score(benchmark, ordered, h, errors)
    # Every process's skips (each process lists its own; the same skip once).
    skipped = len(read_skipped(root, benchmark)) if h.error_policy == "skip" else 0
    result.update(total=len(items) + unreadable, skipped=skipped,
                  max_new_tokens=h.max_new_tokens[benchmark])
    results["benchmarks"][benchmark] = result
    logging.info("%s: %s", benchmark, json.dumps(
        {k: v for k, v in result.items() if isinstance(v, (int, float))}))
  if pid == 0:
    (root / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True,
                                                default=str))
    (root / RESULTS_MD).write_text(markdown(results))
  return results
