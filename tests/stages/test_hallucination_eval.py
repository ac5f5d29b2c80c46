"""The hallucination_eval stage end to end on a tiny random LLaVA and tiny benchmark files
in the real formats: answers, scores, resume, padding, bad input."""

from __future__ import annotations

import io
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from rlhfv_jax import model as model_lib
from rlhfv_jax import sampler as sampler_lib
from rlhfv_jax.data.records import ErrorLog, RecordError
from rlhfv_jax.evals import amber, compare, pope
from rlhfv_jax.stages import config_validation, defaults
from rlhfv_jax.stages import hallucination_eval as halluc
from rlhfv_jax.train import mesh as mesh_lib


def _jpeg(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  coco = root / "val2014"
  coco.mkdir()
  for i in (1, 2, 3):
    (coco / f"COCO_val2014_{i:012d}.jpg").write_bytes(_jpeg(i))
  pope_dir = root / "pope"
  pope_dir.mkdir()
  for split, ids in (("random", (1, 2, 3, 1)), ("popular", (2, 3))):
    lines = [json.dumps({"question_id": n, "image": f"COCO_val2014_{i:012d}.jpg",
                         "text": "Is there a dog in the image?",
                         "label": "yes" if n % 2 else "no"}) for n, i in enumerate(ids)]
    (pope_dir / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
  annotations = root / "annotations"
  annotations.mkdir()
  (annotations / "instances_val2014.json").write_text(json.dumps({
      "categories": [{"id": 18, "name": "dog"}], "images": [{"id": i} for i in (1, 2, 3)],
      "annotations": [{"image_id": 1, "category_id": 18}]}))
  (annotations / "captions_val2014.json").write_text(json.dumps({"annotations": [
      {"image_id": i, "caption": "A cat on a couch."} for i in (1, 2, 3)]}))
  amber_root = root / "amber"
  (amber_root / "data" / "query").mkdir(parents=True)
  (amber_root / "image").mkdir()
  (amber_root / "image" / "AMBER_1.jpg").write_bytes(_jpeg(9))
  (amber_root / "data" / "query" / "query_discriminative.json").write_text(json.dumps(
      [{"id": 1005 + k, "image": "AMBER_1.jpg", "query": f"Is there a {w} in this image?"}
       for k, w in enumerate(("dog", "cat", "tree"))]))
  (amber_root / "data" / "annotations.json").write_text(json.dumps(
      [{"id": 1005 + k, "type": t, "truth": v} for k, (t, v) in enumerate((
          ("discriminative-hallucination", "no"), ("discriminative-attribute-state", "yes"),
          ("relation", "no")))]))
  return dict(pope_dir=str(pope_dir), coco_images=str(coco),
              coco_annotations=str(annotations), amber_dir=str(amber_root))


def tiny_config(files, tokenizer):
  config = defaults.base_config("hallucination_eval", "tiny")
  config.data.update(tokenizer=str(tokenizer), system_message="A chat.")
  config.hallucination.update(files, batch_size=4, objhal_num_images=2,
                              pope_splits=("random", "popular"),
                              max_new_tokens=dict(pope=3, amber=3, objhal=6))
  return config


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_scores_and_resume(files, llama_tokenizer_path, tmp_path):
  config = tiny_config(files, llama_tokenizer_path)
  config_validation.validate_config(config)
  results = halluc.run(config, str(tmp_path / "run"))
  run = tmp_path / "run"
  pope_answers = _lines(run / "pope_answers.jsonl")
  assert sorted(a["id"] for a in pope_answers) == sorted(
      [f"random/{n}" for n in range(4)] + [f"popular/{n}" for n in range(2)])
  assert all(a["parsed"] in ("yes", "no") for a in pope_answers)
  for bench, total in (("pope", 6), ("objhal", 2), ("amber", 3)):
    result = results["benchmarks"][bench]
    assert (result["scored"], result["total"], result["skipped"]) == (total, total, 0)
  pope_result = results["benchmarks"]["pope"]
  # The stage's score is the scorer's on the written answers.
  randoms = [a for a in pope_answers if a["split"] == "random"]
  assert pope_result["splits"]["random"] == pope.score([a["answer"] for a in randoms],
                                                       [a["label"] for a in randoms])
  assert set(results["benchmarks"]["objhal"]) >= {"response_hall", "chair_i", "chair_s",
                                                  "recall", "avg_words"}
  saved = json.loads((run / halluc.RESULTS_JSON).read_text())
  assert saved["settings"]["decoding"] == "greedy"
  assert saved["benchmarks"]["pope"]["files"]["random"] == pope.file_sha256(
      pathlib.Path(files["pope_dir"]) / "coco_pope_random.json")
  table = (run / halluc.RESULTS_MD).read_text()
  assert "LLaVA-1.5-7B (published)" in table and "| this run |" in table
  # AMBER: the scorer's official and normalized figures on the written answers, per block.
  amber_answers = _lines(run / "amber_answers.jsonl")
  assert [a["type"] for a in amber_answers] == [
      "discriminative-hallucination", "discriminative-attribute-state", "relation"]
  want = amber.score([a["answer"] for a in amber_answers], [a["label"] for a in amber_answers],
                     [a["type"] for a in amber_answers])
  got = saved["benchmarks"]["amber"]
  assert {k: got[k] for k in want} == want and set(got["official"]) == set(amber.BLOCKS)
  assert got["files"]["annotations.json"] == pope.file_sha256(
      pathlib.Path(files["amber_dir"]) / "data" / "annotations.json")
  for block in ("| this run | existence |", "| this run | attribute |",
                "| this run | state |", "| this run | relation |",
                "| LLaVA-1.5-7B (published) | overall | 73.5 |  |  | 77.6 | |"):
    assert block in table
  assert "| this run | number |" not in table  # no number items in this subset

  # Killed mid-write: two answers kept, the third cut mid-line. The re-run answers the rest
  # once each, and (greedy) the same as the uninterrupted run.
  resumed = tmp_path / "resumed"
  resumed.mkdir()
  text = (run / "amber_answers.jsonl").read_text()
  first_two = "".join(text.splitlines(keepends=True)[:2])
  (resumed / "amber_answers.jsonl").write_text(first_two + text.splitlines()[2][:10])
  config.hallucination.benchmarks = ("amber",)
  again = halluc.run(config, str(resumed))
  rows = _lines(resumed / "amber_answers.jsonl")
  assert [r["id"] for r in rows] == [r["id"] for r in _lines(run / "amber_answers.jsonl")]
  assert rows == _lines(run / "amber_answers.jsonl")
  assert again["benchmarks"]["amber"] == results["benchmarks"]["amber"]


def test_padding_does_not_change_greedy_answers(files, llama_tokenizer_path):
  config = tiny_config(files, llama_tokenizer_path)
  sample = sampler_lib.Sampler.from_config(config)
  params = model_lib.init_params(config.model, jax.random.key(0))
  images = [_jpeg(i) for i in range(3)]
  prompts = ["Is there a dog?", "Describe the image in great detail, please.", "Why?"]
  base = sample(params, images, prompts, max_new_tokens=4, batch_size=3).texts
  for multiple in (8, 64):
    assert sample(params, images, prompts, max_new_tokens=4, batch_size=3,
                  prompt_multiple=multiple).texts == base
  # One at a time (each row padded on its own) gives the same answers too.
  assert [sample(params, [i], [p], max_new_tokens=4, batch_size=1).texts[0]
          for i, p in zip(images, prompts)] == base


def test_bad_input_is_named_or_skipped(files, llama_tokenizer_path, tmp_path):
  config = tiny_config(files, llama_tokenizer_path)
  config.hallucination.update(benchmarks=("pope", "sqa"), pope_dir="")
  with pytest.raises(ValueError, match="unknown \\['sqa'\\]"):
    config_validation.validate_config(config)
  config.hallucination.benchmarks = ("pope",)
  with pytest.raises(ValueError, match="hallucination.pope_dir is empty"):
    config_validation.validate_config(config)
  # A POPE question whose image is missing: an error naming it, or a listed skip.
  pope_dir = tmp_path / "pope"
  pope_dir.mkdir()
  question = {"question_id": 7, "image": "COCO_val2014_000000000099.jpg", "text": "Dog?",
              "label": "no"}
  (pope_dir / "coco_pope_random.json").write_text(json.dumps(question) + "\n")
  config.hallucination.update(pope_dir=str(pope_dir), pope_splits=("random",))
  with pytest.raises(Exception, match="random/7.*cannot read image .*000000000099.jpg"):
    halluc.run(config, str(tmp_path / "raise"))
  config.hallucination.error_policy = "skip"
  result = halluc.run(config, str(tmp_path / "skip"))["benchmarks"]["pope"]
  assert (result["scored"], result["total"], result["skipped"]) == (0, 1, 1)
  assert "random/7" in (tmp_path / "skip" / "skipped_pope.jsonl").read_text()
  # An unreadable line of the question file: named, or skipped and counted in the total.
  with (pope_dir / "coco_pope_random.json").open("a") as f:
    f.write("{not json\n")
  config.hallucination.error_policy = "raise"
  with pytest.raises(Exception, match="coco_pope_random.json line 2: not valid JSON"):
    halluc.run(config, str(tmp_path / "raise2"))
  config.hallucination.error_policy = "skip"
  result = halluc.run(config, str(tmp_path / "skip2"))["benchmarks"]["pope"]
  assert (result["scored"], result["total"], result["skipped"]) == (0, 2, 2)


def test_answers_split_over_4_devices_equal_one_device(files, llama_tokenizer_path):
  config = tiny_config(files, llama_tokenizer_path)
  params = model_lib.init_params(config.model, jax.random.key(1))
  images = [_jpeg(i) for i in range(6)]
  prompts = ["Is there a dog?", "Describe the image.", "Why?", "What color?", "Count.", "Hi"]
  one = sampler_lib.Sampler.from_config(config)
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:4]), ("data",))
  four = sampler_lib.Sampler(one.model_config, one.template, one.preprocessor,
                             batch_sharding=jax.sharding.NamedSharding(
                                 mesh, jax.sharding.PartitionSpec("data")))
  on_four = jax.device_put(params, jax.sharding.NamedSharding(mesh,
                                                              jax.sharding.PartitionSpec()))
  want = one(params, images, prompts, max_new_tokens=5, batch_size=4).texts
  assert four(on_four, images, prompts, max_new_tokens=5, batch_size=4).texts == want
  with pytest.raises(ValueError, match="multiple of the 4 devices"):
    four(on_four, images, prompts, max_new_tokens=5, batch_size=2)


def test_objhal_images_the_annotations_do_not_cover(files, llama_tokenizer_path, tmp_path):
  annotations = tmp_path / "annotations"
  annotations.mkdir()
  (annotations / "instances_val2014.json").write_text(json.dumps({
      "categories": [{"id": 18, "name": "dog"}], "images": [{"id": 1}],
      "annotations": [{"image_id": 1, "category_id": 18}]}))
  (annotations / "captions_val2014.json").write_text(json.dumps({"annotations": []}))
  config = tiny_config(files, llama_tokenizer_path)
  config.hallucination.update(benchmarks=("objhal",), coco_annotations=str(annotations),
                              objhal_num_images=3)
  with pytest.raises(Exception, match="image [23] is not in the COCO annotations"):
    halluc.run(config, str(tmp_path / "raise"))
  config.hallucination.error_policy = "skip"
  result = halluc.run(config, str(tmp_path / "skip"))["benchmarks"]["objhal"]
  assert (result["scored"], result["total"], result["skipped"]) == (1, 3, 2)


@pytest.mark.slow
def test_sigkill_then_rerun_answers_each_item_once(files, llama_tokenizer_path, tmp_path,
                                                   user_env):
  """The config's command killed after its first batch, then run again: every item is
  answered exactly once, and the answers are those of an uninterrupted run."""
  import signal
  import subprocess
  import sys
  import time
  config_file = tmp_path / "halluc_tiny.py"
  config_file.write_text(f"""
from rlhfv_jax.stages import defaults
def get_config():
  config = defaults.base_config("hallucination_eval", "tiny")
  config.data.update(tokenizer={str(llama_tokenizer_path)!r}, system_message="A chat.")
  config.hallucination.update({files!r}, benchmarks=("pope",), batch_size=1,
                              pope_splits=("random", "popular"),
                              max_new_tokens=dict(pope=256, amber=3, objhal=6))
  return config
""")  # Long answers (random weights rarely stop early): the kill lands mid-benchmark.
  command = [sys.executable, "-m", "rlhfv_jax.main", f"--config={config_file}"]
  straight = tmp_path / "straight"
  subprocess.run(command + [f"--workdir={straight}"], env=user_env, check=True,
                 capture_output=True, timeout=600, cwd=pathlib.Path(__file__).parents[2])
  killed = tmp_path / "killed"
  proc = subprocess.Popen(command + [f"--workdir={killed}"], env=user_env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          cwd=pathlib.Path(__file__).parents[2])
  answers = killed / "pope_answers.jsonl"
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    if answers.exists() and answers.read_text().count("\n") >= 2:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  partial = answers.read_text().count("\n")
  assert 2 <= partial < 6, partial  # killed mid-benchmark
  subprocess.run(command + [f"--workdir={killed}"], env=user_env, check=True,
                 capture_output=True, timeout=600, cwd=pathlib.Path(__file__).parents[2])
  rows = _lines(answers)
  assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in _lines(
      straight / "pope_answers.jsonl"))  # each once
  by_id = {r["id"]: r for r in _lines(straight / "pope_answers.jsonl")}
  assert all(r == by_id[r["id"]] for r in rows)
  assert (json.loads((killed / halluc.RESULTS_JSON).read_text())["benchmarks"] ==
          json.loads((straight / halluc.RESULTS_JSON).read_text())["benchmarks"])


def test_fsdp_sharded_generation_equals_one_device(files, llama_tokenizer_path, tmp_path):
  """train.parallelism="fsdp": the stage shards the params over the process's 4 devices
  (a model too large for one) and answers as a single device does."""
  config = tiny_config(files, llama_tokenizer_path)
  config.hallucination.benchmarks = ("pope",)
  replicated = halluc.run(config, str(tmp_path / "replicated"))
  config.train.parallelism = "fsdp"
  config.train.mesh.update(data=1, fsdp=-1, min_fsdp_size=0)
  params = model_lib.init_params(config.model, jax.random.key(0))
  shardings, batch = mesh_lib.pass_layout(config.train, params, jax.local_devices())
  assert batch.mesh.shape == {"data": 1, "fsdp": 4}
  placed = jax.device_put(params, shardings)
  assert sum(not x.is_fully_replicated for x in jax.tree.leaves(placed)) > 10
  sharded = halluc.run(config, str(tmp_path / "fsdp"))
  assert (_lines(tmp_path / "fsdp" / "pope_answers.jsonl")
          == _lines(tmp_path / "replicated" / "pope_answers.jsonl"))
  assert sharded["benchmarks"] == replicated["benchmarks"]


# ------------------------------------------------------------------------------- RePOPE

# POPE's files: (question_id, image, object, label) per split.
POPE_QUESTIONS = {"random": [(1, 1, "dog", "yes"), (2, 1, "cat", "no"), (3, 2, "car", "yes"),
                             (4, 2, "bus", "no")],
                  "popular": [(1, 3, "person", "yes"), (2, 3, "chair", "no")]}
# RePOPE's: the dog relabelled "no" (POPE's wrong "yes"), the cat removed (ambiguous), the
# car under another question id, the bus relabelled "yes" (POPE's wrong "no"), and a
# question POPE's random file does not ask.
REPOPE_QUESTIONS = {"random": [(1, 1, "dog", "no"), (7, 2, "car", "yes"),
                               (4, 2, "bus", "yes"), (9, 3, "dog", "no")],
                    "popular": [(1, 3, "person", "yes"), (2, 3, "chair", "no")]}


def _question_files(directory, name, questions):
  """Question files in the official format (JSON lines, no newline after the last)."""
  directory.mkdir()
  for split, rows in questions.items():
    (directory / f"coco_{name}_{split}.json").write_text("\n".join(json.dumps(
        {"question_id": q, "image": f"COCO_val2014_{i:012d}.jpg",
         "text": f"Is there a {o} in the image?", "label": label})
        for q, i, o, label in rows))


def test_repope_is_scored_from_pope_answers(tmp_path):
  _question_files(tmp_path / "pope", "pope", POPE_QUESTIONS)
  _question_files(tmp_path / "repope", "repope", REPOPE_QUESTIONS)
  h = defaults.base_config("hallucination_eval", "tiny").hallucination
  h.update(pope_dir=str(tmp_path / "pope"), repope_dir=str(tmp_path / "repope"),
           coco_images="/coco", pope_splits=("random", "popular"))
  errors = ErrorLog("raise", tmp_path, name="repope", process_index=0, process_count=1)
  pope_items = halluc.pope_items(h, errors)
  questions = halluc.repope_items(h, errors)
  # Matched by split, image and text (not by question id); only the new one is answered.
  matched, unasked = halluc.match_repope(questions, pope_items)
  assert matched == {"random/1": "random/1", "random/7": "random/3", "random/4": "random/4",
                     "popular/1": "popular/1", "popular/2": "popular/2"}
  assert [q.id for q in unasked] == ["random/9"]
  said = {"random/1": "Yes", "random/2": "No", "random/3": "Yes",
          "random/4": "No, there is not.", "popular/1": "Yes", "popular/2": "Yes"}
  pope_answers = {i.id: halluc.answer_row("pope")(i, said[i.id], True) for i in pope_items}
  own = {q.id: halluc.answer_row("repope")(q, "No", True) for q in unasked}
  rows = halluc.repope_rows(questions, matched, pope_answers, own, errors)
  scored = {"pope": [], "repope": []}
  results = {"benchmarks": {
      "pope": dict(halluc.score("pope", list(pope_answers.values()), h, errors,
                                scored["pope"]), total=6),
      "repope": dict(halluc.score("repope", rows, h, errors, scored["repope"]), total=6,
                     matched_to_pope=5, answered_separately=1)}}
  pope_result, repope_result = results["benchmarks"]["pope"], results["benchmarks"]["repope"]
  # POPE random: all four right; popular: "Yes", "Yes" against yes, no.
  assert pope_result["splits"]["random"] == pytest.approx(dict(
      accuracy=1, precision=1, recall=1, f1=1, yes_ratio=0.5, tp=2, fp=0, tn=2, fn=0))
  # RePOPE random: dog "Yes" vs no (FP), car "Yes" (TP), bus "No" vs yes (FN), the new
  # dog question "No" (TN); the removed cat question is not scored.
  assert repope_result["splits"]["random"] == pytest.approx(dict(
      accuracy=0.5, precision=0.5, recall=0.5, f1=0.5, yes_ratio=0.5, tp=1, fp=1, tn=1, fn=1))
  assert repope_result["splits"]["popular"] == pytest.approx(dict(
      accuracy=0.5, precision=0.5, recall=1, f1=2 / 3, yes_ratio=1, tp=1, fp=1, tn=0, fn=0))
  assert (pope_result["f1"], repope_result["f1"]) == (pytest.approx(5 / 6),
                                                      pytest.approx(7 / 12))
  assert repope_result["scored"] == 6 and repope_result["files"] == {
      s: pope.file_sha256(tmp_path / "repope" / f"coco_repope_{s}.json")
      for s in ("random", "popular")}
  assert sorted(r["answered_as"] for r in scored["repope"]) == [
      "pope/popular/1", "pope/popular/2", "pope/random/1", "pope/random/3", "pope/random/4",
      "repope/random/9"]

  # The results Markdown: POPE and RePOPE per split as papers print them, and the mean.
  table = halluc.markdown(results)
  pope_part, repope_part = table.split("## RePOPE")
  for row in ("| this run | random | 100.0 | 100.0 | 100.0 | 100.0 | 50.0 | 4 |",
              "| this run | popular | 50.0 | 50.0 | 100.0 | 66.7 | 100.0 | 2 |",
              "| this run | mean | 75.0 | 75.0 | 100.0 | 83.3 | 75.0 | 6 |",
              "| LLaVA-1.5-7B (published) | mean |  |  |  | 85.9 |  | |"):
    assert row in pope_part
  for row in ("| this run | random | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 4 |",
              "| this run | popular | 50.0 | 50.0 | 100.0 | 66.7 | 100.0 | 2 |",
              "| this run | mean | 50.0 | 50.0 | 75.0 | 58.3 | 75.0 | 6 |"):
    assert row in repope_part
  assert "5 questions answered as POPE's, 1 answered on their own" in repope_part

  # What the stage writes is what `compare` reads: the same figures, zero against itself.
  (tmp_path / "run").mkdir()
  halluc.write_results(tmp_path / "run", results, scored)
  c = compare.compare([tmp_path / "run", tmp_path / "run"], resamples=50)
  assert c.values["run"]["RePOPE F1"] == pytest.approx(7 / 12) and not c.warnings
  assert all((d.low, d.high) == (0.0, 0.0) for d in c.differences["run #2"].values())

  # A matched question whose POPE answer is missing (its item skipped) is named.
  del pope_answers["random/3"]
  with pytest.raises(RecordError, match="random/7.*POPE item random/3"):
    halluc.repope_rows(questions, matched, pope_answers, own, errors)


def test_repope_beside_pope_in_a_run(files, llama_tokenizer_path, tmp_path):
  """RePOPE's questions POPE asks are not answered again; the others are, once."""
  questions = {"random": [(0, 1, "dog", "yes"), (5, 2, "cat", "no")],
               "popular": [(0, 2, "dog", "no")]}
  _question_files(tmp_path / "repope", "repope", questions)
  config = tiny_config(files, llama_tokenizer_path)
  config.hallucination.update(benchmarks=("objhal",), repope_dir=str(tmp_path / "repope"))
  with pytest.raises(ValueError, match="repope_dir is set but 'pope' is not in"):
    config_validation.validate_config(config)
  config.hallucination.benchmarks = ("pope",)
  config_validation.validate_config(config)
  run = tmp_path / "run"
  results = halluc.run(config, str(run))["benchmarks"]
  assert [r["id"] for r in _lines(run / "repope_answers.jsonl")] == ["random/5"]
  result = results["repope"]
  assert (result["scored"], result["total"], result["matched_to_pope"],
          result["answered_separately"]) == (3, 3, 2, 1)
  by_id = {r["id"]: r for r in _lines(run / "pope_answers.jsonl")}
  own = _lines(run / "repope_answers.jsonl")[0]
  answers = {"random": [by_id["random/0"]["answer"], own["answer"]],
             "popular": [by_id["popular/0"]["answer"]]}  # popular/0: image 2's dog
  for split, labels in (("random", ["yes", "no"]), ("popular", ["no"])):
    assert result["splits"][split] == pope.score(answers[split], labels)
  assert "## RePOPE" in (run / halluc.RESULTS_MD).read_text()
  assert len(_lines(run / "repope_scored.jsonl")) == 3
  assert len(_lines(run / "pope_scored.jsonl")) == 6
  c = compare.compare([run, run], resamples=20)
  assert c.values["run"]["RePOPE F1"] == pytest.approx(result["f1"]) and not c.warnings
