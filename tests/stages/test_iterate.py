"""The `iterate` stage: 2 rounds on a tiny random LLaVA, killed mid-round and resumed, a
review stop, a round without pairs refused. The model's generation is replaced by canned
descriptions that name objects (a random model names none, so the rule-based claims
would have nothing to check) and its yes/no verdicts by a fixed rule (a random labeler
says yes to everything; the real verdicts are tests/stages/test_label.py's); claims,
corrections, the store, the export, the reference and DDPO run for real."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import config_files
from rlhfv_jax import sampler as sampler_lib
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.stages import iterate, runner

DESCRIPTIONS = (
    "There is a dog. A cat sleeps. A bus waits.",
    "A man rides a bicycle. There is a car. A bird sings.",
    "Two people stand. There is a bench. A cup is here.",
)


@pytest.fixture
def canned(monkeypatch):
  """Generation replaced: each call's answers cycle through `DESCRIPTIONS`; returns the
  number of calls so far."""
  calls = []

  def generate(self, params, images, prompts, **kwargs):
    start = len(calls)
    calls.append(len(prompts))
    texts = [DESCRIPTIONS[(start + i) % len(DESCRIPTIONS)] for i in range(len(prompts))]
    return sampler_lib.Samples(texts, [True] * len(texts))

  monkeypatch.setattr(sampler_lib.Sampler, "__call__", generate)
  return calls


# The stand-in labeler rejects these objects, wherever they are.
REJECTED = ("cat", "bird", "car", "cup")


@pytest.fixture
def rule_labeler(monkeypatch):
  def verdicts(self, params, images, prompts, **kwargs):
    no = np.array([any(f" {w} " in p for w in REJECTED) for p in prompts], np.float32)
    return {"yes": 1.0 - no, "no": no}

  monkeypatch.setattr(sampler_lib.Sampler, "choice_probabilities", verdicts)


def _images(tmp_path):
  root = tmp_path / "images"
  root.mkdir(parents=True)
  for k in range(2):
    pixels = np.random.default_rng(k).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    (root / f"{k}.png").write_bytes(buffer.getvalue())
  return root


def _config(tmp_path, tokenizer, **iterate_settings):
  config = config_files.load("tiny_cpu.py", "iterate")
  config.data.tokenizer = str(tokenizer)
  config.sample.update(images=str(_images(tmp_path)), prompts=("Describe the image.",))
  config.iterate.update(**iterate_settings)
  return config


def test_two_rounds_each_from_the_last_policy_resume_after_a_kill(tmp_path, canned,
                                                                  rule_labeler,
                                                                  llama_tokenizer_path,
                                                                  monkeypatch):
  config = _config(tmp_path, llama_tokenizer_path)
  iterate.validate(config)
  workdir = tmp_path / "run"
  real_run = runner.run

  def killed_in_round_2(cfg, directory):
    if directory == str(workdir / "round_2" / "ddpo"):
      raise KeyboardInterrupt("killed")
    return real_run(cfg, directory)

  monkeypatch.setattr(runner, "run", killed_in_round_2)
  with pytest.raises(KeyboardInterrupt):
    iterate.run(config, str(workdir))
  sampled_before = list(canned)
  monkeypatch.setattr(runner, "run", real_run)
  report = iterate.run(config, str(workdir))
  assert canned == sampled_before  # resumed: no answer drawn again
  assert [row["round"] for row in report["rounds"]] == [1, 2]
  for k, row in enumerate(report["rounds"], start=1):
    directory = workdir / f"round_{k}"
    # Each round trains from the last one's policy, with that policy as the reference.
    ddpo = json.loads((directory / "ddpo" / "config.json").read_text())
    reference = json.loads((directory / "reference" / "config.json").read_text())
    want = "random" if k == 1 else "checkpoint"
    assert ddpo["init"]["params"] == reference["init"]["params"] == want
    if k == 2:
      assert ddpo["init"]["checkpoint_dir"] == str(workdir / "round_1" / "ddpo")
    # ... on its own store's pairs only.
    assert ddpo["data"]["source_dir"] == str(directory / "export" / "preference")
    pairs = (directory / "export" / "preference" / "train.jsonl").read_text().splitlines()
    assert len(pairs) == row["export"]["pairs"] > 0
    store = store_lib.AnnotationStore(directory / "annotations.sqlite")
    ids = {i.id for i in store.items()}
    assert {json.loads(p)["origin"]["item_id"] for p in pairs} <= ids
    assert {a.annotator for a in store.annotations()} == {"ai:random-1" if k == 1 else "ai:ddpo"}
    assert list((directory / "ddpo").glob("checkpoints/*"))
  assert "| 2 |" in (workdir / "iterate_report.md").read_text()
  assert (workdir / "iterate_report.png").stat().st_size > 0


def test_review_stop_and_a_round_without_pairs(tmp_path, canned, llama_tokenizer_path,
                                               monkeypatch):
  config = _config(tmp_path, llama_tokenizer_path, stop_after_label=True, rounds=1)
  workdir = tmp_path / "run"
  assert iterate.run(config, str(workdir)) == {"rounds": []}
  assert (workdir / "round_1" / iterate.REVIEW_MARK).is_file()
  assert not (workdir / "round_1" / "export").exists()
  # A labeler that passes every claim corrects nothing: no pair, the round is refused.
  monkeypatch.setattr(sampler_lib.Sampler, "choice_probabilities",
                      lambda self, params, images, prompts, **kw: {
                          "yes": np.ones(len(prompts)), "no": np.zeros(len(prompts))})
  other = _config(tmp_path / "b", llama_tokenizer_path, rounds=1)
  with pytest.raises(ValueError, match="round 1: the export of .* holds no preference pair"):
    iterate.run(other, str(tmp_path / "b" / "run"))


def test_validation_names_the_step(tmp_path, llama_tokenizer_path):
  config = _config(tmp_path, llama_tokenizer_path, rounds=0)
  with pytest.raises(ValueError, match="iterate.rounds=0"):
    iterate.validate(config)
  config = _config(tmp_path / "c", llama_tokenizer_path)
  config.label.min_gap = 0.0
  with pytest.raises(ValueError, match="(?s)iterate step 'label'.*label.min_gap=0.0"):
    iterate.validate(config)


def test_each_round_is_scored_by_hallucination_eval(tmp_path, canned, rule_labeler,
                                                    llama_tokenizer_path):
  """``iterate.evaluate``: the round's new policy (its ddpo run) answers the benchmarks;
  the metrics and every step's time are in the report."""
  coco = tmp_path / "val2014"
  coco.mkdir()
  for i in (1, 2):
    (coco / f"COCO_val2014_{i:012d}.png").write_bytes((_images(tmp_path / f"c{i}") / "0.png")
                                                      .read_bytes())
  pope = tmp_path / "pope"
  pope.mkdir()
  (pope / "coco_pope_random.json").write_text("".join(json.dumps({
      "question_id": n, "image": f"COCO_val2014_{i:012d}.png",
      "text": "Is there a dog in the image?", "label": label}) + "\n"
      for n, (i, label) in enumerate(((1, "yes"), (2, "no")))))
  config = _config(tmp_path, llama_tokenizer_path, rounds=1, evaluate=True)
  config.hallucination.update(benchmarks=("pope",), pope_dir=str(pope), coco_images=str(coco),
                              pope_splits=("random",), batch_size=4, prompt_multiple=8)
  iterate.validate(config)
  workdir = tmp_path / "run"
  (row,) = iterate.run(config, str(workdir))["rounds"]
  evaluated = json.loads((workdir / "round_1" / "eval" / "config.json").read_text())
  assert evaluated["stage"] == "hallucination_eval"
  assert evaluated["init"]["checkpoint_dir"] == str(workdir / "round_1" / "ddpo")
  # The canned answers say no "no": both questions are answered yes.
  pope = row["eval"]["benchmarks"]["pope"]
  assert pope["scored"] == 2 and (pope["splits"]["random"]["tp"],
                                  pope["splits"]["random"]["fp"]) == (1, 1)
  assert "pope.f1 0.667" in (workdir / "iterate_report.md").read_text()
  assert set(row["seconds"]) == {"sample", "label", "export", "reference", "ddpo", "eval"}
  assert "Time per step over 1 round(s)" in (workdir / "iterate_report.md").read_text()
