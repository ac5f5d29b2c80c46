"""The `label` stage on a tiny random LLaVA as the labeler: every claim asked, P(yes) and
P(no) equal to the sampler's own computation, the verdict rule, the products (the AI's
annotations in the store, ranking pairs) recomputed from the verdicts, resume, bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

import config_files
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.feedback import claims as claims_lib
from rlhfv_jax.feedback import corrections
from rlhfv_jax.stages import answering, config_validation
from rlhfv_jax.stages import label as label_stage

ANSWERS = {
    # Two answers to one (image, prompt): a ranking pair is possible between them.
    "a#0": ("a.png", "There is a dog on the bench. A cat sleeps nearby, and a bird sings."),
    "a#1": ("a.png", "There is a dog. There is no car in the image."),
    "b#0": ("b.png", "Two people ride bicycles past a bus."),
}
PROMPT = "Describe the image."


def _png(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


def _store(tmp_path, answers=ANSWERS):
  images = tmp_path / "images"
  images.mkdir(parents=True, exist_ok=True)
  for k, name in enumerate(sorted({image for image, _ in answers.values()})):
    (images / name).write_bytes(_png(k))
  store = store_lib.AnnotationStore(tmp_path / "annotations.sqlite")
  store.image_root = str(images)
  store.add_items(store_lib.Item(i, image, PROMPT, text) for i, (image, text) in answers.items())
  store.close()
  return tmp_path / "annotations.sqlite"


def _config(store, tokenizer, **label):
  config = config_files.load("tiny_cpu.py", "label")
  config.data.tokenizer = str(tokenizer)
  config.label.update(store=str(store), **label)
  return config


def test_verdict_rule_by_hand():
  claim = claims_lib.Claim("presence", "dog", (0, 3), (0, 10), "Is there a dog in the image?",
                           "yes")
  absent = dataclasses.replace(claim, kind="absence", expected="no")
  assert not label_stage.failed(claim, 0.6, 0.3) and label_stage.failed(claim, 0.2, 0.3)
  assert label_stage.failed(absent, 0.6, 0.3) and not label_stage.failed(absent, 0.2, 0.3)


def test_label_run_products_follow_the_verdicts(tmp_path, llama_tokenizer_path):
  store_path = _store(tmp_path)
  config = _config(store_path, llama_tokenizer_path)
  config_validation.validate_config(config)
  summary = label_stage.run(config, str(tmp_path / "run"))
  extractor = claims_lib.RuleClaimExtractor()
  claims = {i: extractor.extract(text) for i, (_, text) in ANSWERS.items()}
  assert summary["items"] == 3 and summary["claims"] == sum(len(c) for c in claims.values())
  assert summary["labeler"] == "ai:random-1"

  # P(yes), P(no): the sampler's computation on each claim's question and image.
  sample, params = answering.local_sampler(config, config.label.batch_size)
  tok = sample.template.tokenizer
  choices = {"yes": tokenizer_lib.choice_token_ids(tok, ("yes", "Yes")),
             "no": tokenizer_lib.choice_token_ids(tok, ("no", "No"))}
  rows = [json.loads(line) for line in (tmp_path / "run" / "verdicts.jsonl").open()]
  assert [r["item_id"] for r in rows] == list(ANSWERS)
  images = {name: (tmp_path / "images" / name).read_bytes() for name in ("a.png", "b.png")}
  for row in rows:
    image = images[ANSWERS[row["item_id"]][0]]
    questions = [c["question"] + config.label.question_suffix for c in row["claims"]]
    direct = sample.choice_probabilities(params, [image] * len(questions), questions,
                                         choices=choices, batch_size=4, prompt_multiple=8)
    np.testing.assert_allclose([c["p_yes"] for c in row["claims"]], direct["yes"], rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose([c["p_no"] for c in row["claims"]], direct["no"], rtol=1e-4,
                               atol=1e-7)
    assert [c["question"] for c in row["claims"]] == [c.question for c in claims[row["item_id"]]]
    for c in row["claims"]:
      assert c["failed"] == label_stage.failed(claims_lib.Claim(**{
          k: tuple(v) if k in ("span", "sentence") else v for k, v in c.items()
          if k not in ("p_yes", "p_no", "failed")}), c["p_yes"], c["p_no"])
    assert row["score"] == -sum(c["failed"] for c in row["claims"])

  # The store holds the labeler's annotation of each item, from the failed claims' spans.
  store = store_lib.AnnotationStore(store_path)
  by_item = {a.item_id: a for a in store.annotations() if a.annotator == "ai:random-1"}
  for row in rows:
    text = ANSWERS[row["item_id"]][1]
    spans = [tuple(c["span"]) for c in row["claims"] if c["failed"]]
    annotation = by_item.get(row["item_id"])
    if not spans:
      assert annotation.verdict == "no_hallucination"
      continue
    fixed = corrections.delete_failed(text, spans)
    if fixed.text.strip():
      assert (annotation.verdict, annotation.corrected) == ("corrected", fixed.text)
    else:
      assert annotation is None
  # Ranking pairs: RLAIF-V's rule over the answers of one (image, prompt).
  scored = [corrections.ScoredAnswer(r["item_id"], ANSWERS[r["item_id"]][1], -r["score"],
                                     len(r["claims"])) for r in rows if r["item_id"] != "b#0"]
  want = corrections.ranking_pairs(scored, min_gap=1.0, max_pairs=2, max_length_ratio=2.0)
  pairs = [json.loads(line) for line in (tmp_path / "run" / "ranking_pairs.jsonl").open()]
  assert [(p["chosen_item_id"], p["rejected_item_id"]) for p in pairs] == [
      (p.chosen_id, p.rejected_id) for p in want]
  assert summary["ranking_pairs"] == len(want)

  # A killed run resumes: cut the answers file mid-line, run again, same verdicts.
  answers = tmp_path / "run" / "label_answers.jsonl"
  text = answers.read_text()
  answers.write_text(text[:len(text) // 2])
  again = label_stage.run(config, str(tmp_path / "run"))
  assert again == summary
  assert [json.loads(line) for line in (tmp_path / "run" / "verdicts.jsonl").open()] == rows


def test_bad_input_is_named(tmp_path, llama_tokenizer_path):
  store_path = _store(tmp_path, dict(ANSWERS, **{"c#0": ("a.png", "A sunny day.")}))
  config = _config(store_path, llama_tokenizer_path)
  with pytest.raises(Exception, match="c#0.*no claim"):
    label_stage.run(config, str(tmp_path / "run"))
  config.label.error_policy = "skip"
  summary = label_stage.run(config, str(tmp_path / "run2"))
  assert summary["skipped"] == 1 and summary["items_unlabelled"] == 1
  claims_file = tmp_path / "claims.jsonl"
  claims_file.write_text(json.dumps({"item_id": "zzz", "claims": []}) + "\n")
  config.label.update(claims_file=str(claims_file), error_policy="raise")
  with pytest.raises(Exception, match=r"claims.jsonl line 1.*zzz"):
    label_stage.run(config, str(tmp_path / "run3"))
  with pytest.raises(ValueError, match="not an annotation store"):
    label_stage.run(_config(tmp_path / "missing.sqlite", llama_tokenizer_path),
                    str(tmp_path / "run4"))


def test_validation_names_the_label_problems(tmp_path, llama_tokenizer_path):
  config = _config("", llama_tokenizer_path, min_gap=0.0, max_length_ratio=0.5,
                   error_policy="maybe")
  with pytest.raises(ValueError) as e:
    config_validation.validate_config(config)
  for field in ("label.store is empty", "label.min_gap=0.0", "label.max_length_ratio=0.5",
                "label.error_policy='maybe'"):
    assert field in str(e.value), field


def test_a_vocabulary_file_of_ones_own_defines_the_claims(tmp_path, llama_tokenizer_path):
  """``label.vocabulary``: the rule extractor's classes come from the file (two-word
  classes, plurals and negation as for COCO); an answer naming none of them is named."""
  answers = {"s#0": ("a.png", "A red circle at the top. There is no blue square. A dog."),
             "s#1": ("a.png", "Two green triangles on the left.")}
  vocabulary = tmp_path / "shapes.txt"
  vocabulary.write_text("red circle\nblue square\ngreen triangle, green wedge\n")
  config = _config(_store(tmp_path, answers), llama_tokenizer_path,
                   vocabulary=str(vocabulary))
  config_validation.validate_config(config)
  label_stage.run(config, str(tmp_path / "run"))
  rows = {json.loads(line)["item_id"]: json.loads(line)["claims"]
          for line in (tmp_path / "run" / "verdicts.jsonl").open()}
  assert [(c["kind"], c["object"], c["question"], c["expected"]) for c in rows["s#0"]] == [
      ("presence", "red circle", "Is there a red circle in the image?", "yes"),
      ("absence", "blue square", "Is there a blue square in the image?", "no")]
  assert [(c["kind"], c["object"], c["count"]) for c in rows["s#1"]] == [
      ("count", "green triangle", 2)]

  store = _store(tmp_path / "other", {"x#0": ("a.png", "A yellow diamond.")})
  config = _config(store, llama_tokenizer_path, vocabulary=str(vocabulary))
  with pytest.raises(Exception, match=f"x#0.*no object mention of {vocabulary}"):
    label_stage.run(config, str(tmp_path / "run2"))
  for bad, message in ((dict(vocabulary=str(tmp_path / "none.txt")), "is not a file"),
                       (dict(vocabulary=str(vocabulary), claims_file="c.jsonl"),
                        "set one of them")):
    with pytest.raises(ValueError, match=message):
      config_validation.validate_config(_config(store, llama_tokenizer_path, **bad))


def test_a_labeler_that_cannot_answer_yes_or_no_is_refused(tmp_path, sentencepiece_tokenizer_path):
  """The in-code test tokenizer has no single "yes" token: refused, naming the file."""
  config = _config(_store(tmp_path), sentencepiece_tokenizer_path)
  with pytest.raises(ValueError, match=f"{sentencepiece_tokenizer_path}.*no single token for 'yes'"):
    label_stage.run(config, str(tmp_path / "run"))


@pytest.mark.slow  # subprocesses
def test_two_processes_label_their_shares_into_one_store(tmp_path, llama_tokenizer_path,
                                                         user_env):
  """`python -m rlhfv_jax.main` as 2 processes x 2 devices over loopback: each scores its
  own share of the questions into its own file, process 0 writes the products once, and
  the verdicts are those of one process."""
  import socket
  import subprocess
  import sys
  repo = pathlib.Path(__file__).parents[2]
  stores = {name: _store(tmp_path / name) for name in ("one", "two")}

  def command(name):
    config_file = tmp_path / f"label_{name}.py"
    config_file.write_text(f"""
from rlhfv_jax.stages import defaults
def get_config():
  config = defaults.base_config("label", "tiny")
  config.seed = 1
  config.data.update(tokenizer={str(llama_tokenizer_path)!r}, system_message="Chat.")
  config.label.update(store={str(stores[name])!r}, batch_size=2, prompt_multiple=8)
  return config
""")
    return [sys.executable, "-m", "rlhfv_jax.main", f"--config={config_file}",
            f"--workdir={tmp_path / name / 'run'}"]

  def env(devices):
    flags = [f for f in user_env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return dict(user_env, XLA_FLAGS=" ".join(
        flags + [f"--xla_force_host_platform_device_count={devices}"]))

  subprocess.run(command("one"), env=env(2), check=True, capture_output=True, timeout=600,
                 cwd=repo)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  procs = [subprocess.Popen(command("two") + [f"--coordinator_address={address}",
                                              "--num_processes=2", f"--process_id={i}"],
                            env=env(2), cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for proc in procs:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
  run = tmp_path / "two" / "run"
  shares = [json.loads(line)["id"] for k in range(2) for line in
            (run / f"label_answers.process{k}-of-2.jsonl").read_text().splitlines()]
  extractor = claims_lib.RuleClaimExtractor()
  every = [f"{i}|{k}" for i, (_, text) in ANSWERS.items()
           for k in range(len(extractor.extract(text)))]
  assert sorted(shares) == sorted(every)  # each question once, all of them

  def verdicts(name):
    return [json.loads(line) for line in (tmp_path / name / "run" / "verdicts.jsonl").open()]

  one, two = verdicts("one"), verdicts("two")
  assert [r["item_id"] for r in two] == [r["item_id"] for r in one] == list(ANSWERS)
  for a, b in zip(one, two):
    assert [c["failed"] for c in a["claims"]] == [c["failed"] for c in b["claims"]]
    np.testing.assert_allclose([c["p_yes"] for c in a["claims"]],
                               [c["p_yes"] for c in b["claims"]], rtol=1e-4, atol=1e-8)

  def proposals(name):
    store = store_lib.AnnotationStore(stores[name])
    return {(a.item_id, a.verdict, a.corrected) for a in store.annotations()}

  assert proposals("two") == proposals("one")
  assert (run / "ranking_pairs.jsonl").read_text() == (
      tmp_path / "one" / "run" / "ranking_pairs.jsonl").read_text()
