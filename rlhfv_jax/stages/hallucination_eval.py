"""The `hallucination_eval` stage: POPE, Object HalBench (rule-based CHAIR) and AMBER.

  python -m rlhfv_jax.main --config configs/llava15_hallucination_eval.py --workdir DIR \
      --config.init.hf_checkpoint=... --config.hallucination.benchmarks=pope,objhal,amber

For every benchmark in ``hallucination.benchmarks`` it answers each item greedily with the
project's sampler (`rlhfv_jax.sampler`: LLaVA-1.5 template, images padded to square, never
cropped; KV-cache `generate`), writing ``<bench>_answers.jsonl`` as it goes (id, image,
prompt, answer, the parsed label where one exists), then scores them with
`rlhfv_jax.evals` into ``hallucination_results.json`` and ``hallucination_results.md``
(beside the published numbers), and ``<bench>_scored.jsonl``: per scored item, the values
its figures came from (`rlhfv_jax.evals.compare` reads them to compare runs item by
item). A killed run resumes: answered ids are read back and
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
  repope_dir      optional, with "pope": RePOPE's `coco_repope_{split}.json` (POPE's
                  questions relabelled), scored as "repope" beside POPE from the same
                  answers; a question POPE's files do not ask is answered on its own
                  (`match_repope`)
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

from rlhfv_jax import evals, jsonl
from rlhfv_jax.data.records import ErrorLog, RecordError, read_skipped
from rlhfv_jax.evals import amber, objhal, pope
from rlhfv_jax.stages import answering, model_init

RESULTS_JSON = evals.RESULTS_JSON
RESULTS_MD = "hallucination_results.md"
# Published numbers to put a run beside (one definition, shared with `evals.compare`).
PUBLISHED = evals.PUBLISHED
_COCO_FILE = re.compile(r"COCO_val2014_(\d+)\.jpg$")
# Results entries answered with another benchmark's settings (max_new_tokens).
_ANSWERED_AS = {"repope": "pope"}
# AMBER's files under `<amber_dir>/data`, hashed into the results.
AMBER_FILES = ("annotations.json", "query/query_discriminative.json")


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

def _pope_format_items(h: Any, directory: str, name: str, errors: ErrorLog) -> list[Item]:
  """The questions of `coco_<name>_<split>.json` (POPE's format) for POPE's splits."""
  root, images = pathlib.Path(directory), pathlib.Path(h.coco_images)
  items = []
  for split in h.pope_splits:
    for q in pope.read_questions(root / f"coco_{name}_{split}.json", errors.handle_input_error):
      items.append(Item(f"{split}/{q['question_id']}", images / q["image"],
                        q["text"] + h.short_answer_suffix, q["label"],
                        {"split": split, "image_file": q["image"]}))
  return items


def pope_items(h: Any, errors: ErrorLog) -> list[Item]:
  return _pope_format_items(h, h.pope_dir, "pope", errors)


def repope_items(h: Any, errors: ErrorLog) -> list[Item]:
  """RePOPE's questions: POPE's with corrected labels, ambiguous ones removed."""
  return _pope_format_items(h, h.repope_dir, "repope", errors)


def match_repope(questions: list[Item], pope_questions: list[Item]
                 ) -> tuple[dict[str, str], list[Item]]:
  """Which POPE item answers each RePOPE question: the one of the same split, image and
  question text. The question ids are not used: RePOPE relabels POPE's later files, and
  the commit LLaVA's numbers use (e3e3926) numbers its `random` split otherwise.

  Returns:
    (RePOPE id -> POPE id, the RePOPE questions the POPE files do not ask: those are
    answered on their own, so every question is answered once).
  """
  asked: dict[tuple[str, str, str], str] = {}
  for item in pope_questions:
    asked.setdefault((item.meta["split"], item.meta["image_file"], item.prompt), item.id)
  matched, unasked = {}, []
  for q in questions:
    key = (q.meta["split"], q.meta["image_file"], q.prompt)
    if key in asked:
      matched[q.id] = asked[key]
    else:
      unasked.append(q)
  return matched, unasked


def repope_rows(questions: list[Item], matched: dict[str, str], pope_answers: dict[str, dict],
                own_answers: dict[str, dict], errors: ErrorLog) -> list[dict]:
  """Each RePOPE question's answer row under RePOPE's label: POPE's answer to the same
  question (`match_repope`), or its own. A matched question whose POPE item went
  unanswered (skipped) goes through `errors`; an unanswered question of its own was
  handled when answering."""
  rows = []
  for q in questions:
    source = pope_answers.get(matched[q.id]) if q.id in matched else own_answers.get(q.id)
    if source is None:
      if q.id in matched:
        errors.handle(RecordError(q.id, f"no answer: POPE item {matched[q.id]}, which asks "
                                  "the same question, was not answered"))
      continue
    rows.append({"id": q.id, "split": q.meta["split"], "image_file": q.meta["image_file"],
                 "answer": source["answer"], "parsed": source["parsed"], "label": q.label,
                 "answered_as": ("pope/" if q.id in matched else "repope/") + source["id"]})
  return rows


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
    for number, q in jsonl.read_objects(path, errors.handle_input_error):
      try:
        items.append(_objhal_question(q, jsonl.location(path, number), images))
      except ValueError as e:
        errors.handle_input_error(e)
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
                                      root / "data" / "annotations.json", errors.handle_input_error)
  return [Item(str(e["id"]), images / e["image"], e["query"] + h.short_answer_suffix,
               e["truth"], {"type": e["type"], "dimension": e["dimension"]})
          for e in entries]


ITEM_LOADERS: dict[str, Callable[[Any, ErrorLog], list[Item]]] = {
    "pope": pope_items, "objhal": objhal_items, "amber": amber_items}


# ------------------------------------------------------------------------------- answers

def parsed_label(benchmark: str, answer: str) -> Optional[str]:
  if benchmark in ("pope", "repope"):
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

def objhal_files(h: Any) -> dict[str, str]:
  """sha256 of the files Object HalBench's figures depend on: its questions file (when
  given) and the COCO annotation files read for the truth."""
  paths = [pathlib.Path(h.objhal_questions)] if h.objhal_questions else []
  root = pathlib.Path(h.coco_annotations)
  paths += sorted(root.glob("instances_*2014.json")) + sorted(root.glob("captions_*2014.json"))
  return {path.name: pope.file_sha256(path) for path in paths}


def score(benchmark: str, answers: list[dict], h: Any, errors: ErrorLog,
          rows: Optional[list[dict]] = None) -> dict[str, Any]:
  """The benchmark's metrics of `answers` (`rlhfv_jax.evals`); an Object HalBench image
  the COCO annotations do not cover goes through `errors` (named, or skipped and listed).

  Args:
    benchmark: a `evals.BENCHMARKS` name or "repope" (`repope_rows` as `answers`).
    answers: the answer rows to score.
    h: `config.hallucination`.
    errors: the benchmark's error log.
    rows: if given, receives per scored item the values its figures came from (what
      `<bench>_scored.jsonl` holds: POPE / RePOPE the split, parsed answer and label;
      Object HalBench the CHAIR counts; AMBER the answer, label and type).
  """
  rows = [] if rows is None else rows
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
    rows.extend(dict(id=a["id"], image_id=a["image_id"],
                     **dataclasses.asdict(coco.counts(a["image_id"], a["answer"])))
                for a in covered)
    return dict(result, scored=len(covered), files=objhal_files(h))
  if benchmark in ("pope", "repope"):
    directory = pathlib.Path(h.pope_dir if benchmark == "pope" else h.repope_dir)
    out = {"splits": {}, "scored": len(answers),
           "files": {s: pope.file_sha256(directory / f"coco_{benchmark}_{s}.json")
                     for s in h.pope_splits}}
    rows.extend(dict({k: a[k] for k in ("id", "split", "label", "answered_as") if k in a},
                     parsed=pope.parse_answer(a["answer"])) for a in answers)
    for split in h.pope_splits:
      in_split = [a for a in answers if a["split"] == split]
      if in_split:
        out["splits"][split] = pope.score([a["answer"] for a in in_split],
                                          [a["label"] for a in in_split])
    f1s = [s["f1"] for s in out["splits"].values()]
    out["f1"] = float(np.mean(f1s)) if f1s else float("nan")
    return out
  rows.extend({"id": a["id"], "type": a["type"], "answer": a["answer"], "label": a["label"]}
              for a in answers)
  result = amber.score([a["answer"] for a in answers], [a["label"] for a in answers],
                       [a["type"] for a in answers])
  data = pathlib.Path(h.amber_dir) / "data"
  files = {path: pope.file_sha256(data / path) for path in AMBER_FILES}
  return dict(result, scored=len(answers), files=files)


def amber_markdown(result: dict[str, Any]) -> list[str]:
  """AMBER's official figures per block (what papers print), then the overall figures on
  answers normalized to Yes/No, then the published numbers."""
  keys = ("accuracy", "precision", "recall", "f1")
  def row(name: str, block_name: str, block: dict[str, Any]) -> str:
    return (f"| {name} | {block_name} | " + " | ".join(f"{100 * block[k]:.1f}" for k in keys)
            + f" | {block['items']} |")
  lines = ["## AMBER discriminative (official scoring: exact \"Yes\"/\"No\")", "",
           "| model | block | accuracy | precision | recall | F1 | items |",
           "|---" * 7 + "|"]
  # The official script prints every block; one without items (a subset) is left out.
  lines += [row("this run", name, result["official"][name]) for name in amber.BLOCKS
            if name == "overall" or result["official"][name]["items"]]
  lines.append(row(f"this run, answers normalized to Yes/No "
                   f"({result['changed_by_normalization']} changed)", "overall",
                   result["normalized"]["overall"]))
  for name, numbers in PUBLISHED["amber"]:
    lines.append(f"| {name} (published) | overall | " + " | ".join(
        f"{100 * numbers[k]:.1f}" if k in numbers else "" for k in keys) + " | |")
  return lines + ["", f"Scored {result['scored']} / {result['total']}.", ""]


def _percent(x: float) -> str:
  return "n/a" if np.isnan(x) else f"{100 * x:.1f}"


def yes_no_markdown(benchmark: str, result: dict[str, Any]) -> list[str]:
  """POPE / RePOPE as papers print them: per split accuracy, precision, recall, F1 and
  yes-ratio, then the mean over the splits; the published rows."""
  keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
  title = ("POPE" if benchmark == "pope" else
           "RePOPE (RePOPE's corrected labels, the same answers as POPE)")
  lines = [f"## {title}", "", "| model | split | accuracy | precision | recall | F1 | "
           "yes-ratio | items |", "|---" * 8 + "|"]
  splits = result["splits"]
  order = [s for s in pope.SPLITS if s in splits] + sorted(set(splits) - set(pope.SPLITS))
  for split in order:
    figures = splits[split]
    items = sum(figures[k] for k in ("tp", "fp", "tn", "fn"))
    lines.append(f"| this run | {split} | " + " | ".join(_percent(figures[k]) for k in keys)
                 + f" | {items} |")
  if len(order) > 1:
    lines.append("| this run | mean | " + " | ".join(
        _percent(float(np.mean([splits[s][k] for s in order]))) for k in keys)
        + f" | {result['scored']} |")
  for name, numbers in PUBLISHED.get(benchmark, []):
    lines.append(f"| {name} (published) | mean | " + " | ".join(
        _percent(numbers[k]) if k in numbers else "" for k in keys) + " | |")
  note = f"Scored {result['scored']} / {result['total']}."
  if benchmark == "repope":
    note += (f" {result['matched_to_pope']} questions answered as POPE's, "
             f"{result['answered_separately']} answered on their own (not in the POPE "
             "files given).")
  return lines + ["", note, ""]


def objhal_markdown(result: dict[str, Any]) -> list[str]:
  """Object HalBench: CHAIR_s, CHAIR_i, recall, the response-level rate, words."""
  keys = ("chair_s", "chair_i", "recall", "response_hall")
  lines = ["## Object HalBench, CHAIR (rule)", "",
           "| model | CHAIR_s | CHAIR_i (Ment) | recall | Resp | avg words | scored |",
           "|---" * 7 + "|",
           "| this run | " + " | ".join(_percent(result[k]) for k in keys)
           + f" | {result['avg_words']:.1f} | {result['scored']} / {result['total']} |"]
  for name, numbers in PUBLISHED["objhal"]:
    lines.append(f"| {name} (published) | " + " | ".join(
        _percent(numbers[k]) if k in numbers else "" for k in keys) + " | | |")
  return lines + ["", "Resp: hallucinating responses among those that mention a COCO "
                  "object; CHAIR_s: among all responses.", ""]


def markdown(results: dict[str, Any]) -> str:
  """The results beside the published numbers, one table per benchmark (percent)."""
  lines = ["# Hallucination benchmarks", ""]
  for benchmark, result in results["benchmarks"].items():
    if benchmark == "amber":
      lines += amber_markdown(result)
      continue
    lines += (objhal_markdown(result) if benchmark == "objhal"
              else yes_no_markdown(benchmark, result))
  return "\n".join(lines)


def write_results(root: pathlib.Path, results: dict[str, Any],
                  scored: dict[str, list[dict]]) -> None:
  """`hallucination_results.json` / `.md` and each entry's `<name>_scored.jsonl` (the
  `score` rows), what `rlhfv_jax.evals.compare` reads."""
  (root / RESULTS_JSON).write_text(json.dumps(results, indent=2, sort_keys=True,
                                              default=str))
  (root / RESULTS_MD).write_text(markdown(results))
  for name, rows in scored.items():
    (root / evals.scored_file(name)).write_text("".join(
        json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows),
        encoding="utf-8")


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
  scored: dict[str, list[dict]] = {}

  def answered(name: str, items: list[Item], errors: ErrorLog) -> dict[str, dict]:
    """Answers this process's share of `items` into `<name>_answers...jsonl`; returns
    every process's answers by id."""
    path = answering.answers_path(root, name, pid, count)
    answering.answer_items(name, items[pid::count], sample, params, path,
                           row=answer_row(name), batch_size=h.batch_size,
                           max_new_tokens=h.max_new_tokens[_ANSWERED_AS.get(name, name)],
                           prompt_multiple=h.prompt_multiple, errors=errors)
    if count > 1:
      multihost_utils.sync_global_devices(f"hallucination_eval {name} answered")
    return answering.read_all_answers(root, name, count)

  def record(name: str, rows: list[dict], total: int, errors: ErrorLog) -> None:
    """Scores `rows` under `name` into the results."""
    scored[name] = []
    result = score(name, rows, h, errors, scored[name])
    # Every process's skips (each process lists its own; the same skip once).
    skipped = len(read_skipped(root, name)) if h.error_policy == "skip" else 0
    result.update(total=total, skipped=skipped,
                  max_new_tokens=h.max_new_tokens[_ANSWERED_AS.get(name, name)])
    results["benchmarks"][name] = result
    logging.info("%s: %s", name, json.dumps(
        {k: v for k, v in result.items() if isinstance(v, (int, float))}))

  for benchmark in h.benchmarks:
    errors = ErrorLog(h.error_policy, root, name=benchmark)
    items = ITEM_LOADERS[benchmark](h, errors)
    unreadable = errors.num_skipped  # input lines/entries that made no item
    answers = answered(benchmark, items, errors)
    record(benchmark, [answers[i.id] for i in items if i.id in answers],
           len(items) + unreadable, errors)
    if benchmark == "pope" and h.repope_dir:
      # POPE's answers under RePOPE's labels; only questions POPE did not ask are answered.
      errors = ErrorLog(h.error_policy, root, name="repope")
      questions = repope_items(h, errors)
      unreadable = errors.num_skipped
      matched, unasked = match_repope(questions, items)
      own = answered("repope", unasked, errors) if unasked else {}
      record("repope", repope_rows(questions, matched, answers, own, errors),
             len(questions) + unreadable, errors)
      results["benchmarks"]["repope"].update(matched_to_pope=len(matched),
                                             answered_separately=len(unasked))
  if pid == 0:
    write_results(root, results, scored)
  return results
