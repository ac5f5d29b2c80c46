"""The iterate study's pieces without training: claims over the world's objects read
against the oracle's grounding, the labeler's counts by hand, the config and the rounds'
runner config, a workdir shared between studies (the study with real training is
test_demo_quick.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import config_files
from rlhfv_jax.data import tokenizer as tokenizer_lib
from rlhfv_jax.demo import corpora, driver, iteration, oracle, runs, settings, vocabulary, world
from rlhfv_jax.evals import objhal
from rlhfv_jax.feedback import claims as claims_lib
from rlhfv_jax.stages import config_validation, iterate

EXTRACTOR = claims_lib.RuleClaimExtractor(objhal.Vocabulary(iteration.claims_vocabulary()))


def _claim_row(claim: claims_lib.Claim, failed: bool = False) -> dict:
  return dict(kind=claim.kind, object=claim.object, expected=claim.expected,
              count=claim.count, failed=failed)


def test_claims_of_captions_are_true_exactly_where_the_oracle_grounds_them():
  """Every mention of a mismatched caption: the rule extractor's claim (over the world's
  20 objects) is true in the scene exactly when the oracle finds its colour-shape type
  there (an independent reading: `oracle.parse_description` / `ground_mention`)."""
  scenes = world.sample_scenes(7, 300, "claims", max_objects=4)
  captions = corpora.web_captions(scenes, 7, 0.6, {"extra_object": 1.0, "wrong_color": 1.0})
  by_id = {s.scene_id: s for s in scenes}
  checked = false = counts = 0
  for caption in captions:
    scene, text = by_id[caption.scene_id], caption.response
    claims = EXTRACTOR.extract(text)
    parsed = oracle.parse_description(text)
    objects = [c for c in claims if c.object != iteration.ANY_OBJECT]
    assert {c.object for c in objects} == {f"{m.color} {m.shape}" for m in parsed.mentions}
    for claim in objects:
      assert claim.kind == "presence" and claim.question == f"Is there a {claim.object} in the image?"
      mention = next(m for m in parsed.mentions if m.span[0] <= claim.span[0] < m.span[1])
      truth = oracle.ground_mention(mention, scene).exists
      assert iteration.claim_is_true(_claim_row(claim), scene) == truth, (text, claim)
      checked += 1
      false += not truth
    # The count sentence ("There are three objects in the image."): one claim, as the
    # oracle reads it.
    (stated,) = parsed.count_claims
    (claim,) = [c for c in claims if c.object == iteration.ANY_OBJECT]
    if stated.count > 1:
      assert (claim.kind, claim.count) == ("count", stated.count)
      assert claim.question == f"Are there {world.NUMBER_WORDS[stated.count]} objects in the image?"
    else:
      assert claim.question == "Is there an object in the image?"
    assert iteration.claim_is_true(_claim_row(claim), scene) == (
        stated.count == len(scene.objects) or stated.count == 1), text
    counts += stated.count != len(scene.objects)
  assert checked > 500 and false > 50 and counts > 0  # every kind was checked


def test_the_labelers_yes_no_questions_are_the_claims_questions():
  """The labeler's VQA data asks exactly what the extractor asks of descriptions."""
  scenes = world.sample_scenes(3, 200, "q")
  pairs = corpora.vqa_pairs(scenes, 3, per_scene=2, types=("presence", "count_check"))
  by_id = {s.scene_id: s for s in scenes}
  asked = {p.prompt.split("\n")[0] for p in pairs}
  for obj in ("red circle", "white diamond"):
    assert f"Is there a {obj} in the image?" in asked
  for n in ("two", "three", "four"):
    assert f"Are there {n} objects in the image?" in asked
  for pair in pairs:
    question = pair.prompt.split("\n")[0]
    (claim,) = EXTRACTOR.extract(question.replace("Is there", "There is")
                                 .replace("Are there", "There are").replace("?", "."))
    assert claim.question == question
    truth = iteration.claim_is_true(_claim_row(claim), by_id[pair.scene_id])
    assert pair.response == ("Yes" if truth else "No"), pair
  # The VQA stage's own data is unchanged by the extra type: drawn from VQA_TYPES.
  assert not any(p.source == "vqa/count_check" for p in corpora.vqa_pairs(scenes, 3))


def test_absence_and_count_claims_by_hand():
  scene = world.Scene("s", (world.SceneObject("circle", "red", "small", 0),
                            world.SceneObject("square", "blue", "large", 4)))
  claims = EXTRACTOR.extract("There is no red circle. There is no green square. "
                             "Two blue squares. One blue square.")
  assert [(c.kind, c.object, c.count) for c in claims] == [
      ("absence", "red circle", None), ("absence", "green square", None),
      ("count", "blue square", 2)]
  assert [iteration.claim_is_true(_claim_row(c), scene) for c in claims] == [False, True, False]


def test_labeler_table_counts_by_hand(tmp_path):
  scene = world.Scene("s1", (world.SceneObject("circle", "red", "small", 0),))
  presence = EXTRACTOR.extract("A red circle. A blue square. A green diamond.")
  rows = [
      # true claim kept, false claim rejected, false claim kept
      {"item_id": "s1#0", "claims": [_claim_row(presence[0]), _claim_row(presence[1], True),
                                     _claim_row(presence[2])]},
      # a true claim rejected
      {"item_id": "s1#1", "claims": [_claim_row(presence[0], True)]},
  ]
  path = tmp_path / "verdicts.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  table = iteration.labeler_table(path, {"s1": scene})
  # claims, false, rejected, rejected_false
  np.testing.assert_array_equal(table, [[3, 2, 1, 1], [1, 0, 1, 0]])
  sums = table.sum(0)
  assert iteration._labeler_ratio(sums, "precision") == pytest.approx(1 / 2)
  assert iteration._labeler_ratio(sums, "recall") == pytest.approx(1 / 2)
  assert iteration._labeler_ratio(sums, "false_share") == pytest.approx(2 / 4)


def test_config_variants_and_validation():
  config = config_files.load("demo.py", "quick,iterate")
  assert config.demo.study == "iterate" and config.demo.iterate.rounds == 2
  assert config.demo.seeds == (0,)  # the quick demo's settings otherwise
  assert config_files.load("demo.py", "iterate").demo.iterate.rounds == 3
  settings.validate(config)
  with pytest.raises(ValueError, match="different studies"):
    config_files.load("demo.py", "sweep,iterate")
  config.demo.iterate.update(rounds=0, num_scenes=10_000, num_samples=1)
  with pytest.raises(ValueError) as e:
    settings.validate(config)
  for field in ("demo.iterate.rounds=0", "demo.iterate.num_scenes=10000",
                "demo.iterate.num_samples=1"):
    assert field in str(e.value), field


def test_the_rounds_config(tmp_path):
  """Round 1 starts from the seed's sft_vqa; the labeler is the seed's labeler run,
  asked as its VQA data asks; DDPO trains as the oracle's arm does."""
  config = config_files.load("demo.py", "iterate")
  path = vocabulary.make_tokenizer_file(tmp_path / "tokenizer.model",
                                        config.data.system_message, config.demo.vocab_size)
  tokenizer = tokenizer_lib.SentencePieceTokenizer(path)
  rounds = settings.iterate_config(config, tmp_path, 2, path, tokenizer)
  oracle_arm = settings.stage_config(config, tmp_path, 2, runs.Run(runs.ORACLE_ARM), path,
                                     tokenizer)
  seed = runs.seed_paths(tmp_path, 2)
  assert rounds.init.checkpoint_dir == str(seed.run(runs.Run(runs.SFT_VQA)))
  assert rounds.iterate.labeler_checkpoint_dir == str(seed.run(runs.Run(runs.LABELER)))
  for section in ("ddpo", "optim", "train"):
    assert rounds[section].to_dict() == oracle_arm[section].to_dict(), section
  assert rounds.data.buckets == oracle_arm.data.buckets
  assert rounds.sample.questions == str(runs.ai_paths(tmp_path, 2).questions)
  assert rounds.sample.num_samples == config.demo.iterate.num_samples
  assert rounds.label.question_suffix == "\n" + corpora.VQA_SUFFIX
  # The labeler's answers are single tokens of the demo tokenizer.
  for words in (rounds.label.yes_words, rounds.label.no_words):
    assert len(tokenizer_lib.choice_token_ids(tokenizer, words)) == 1
  (tmp_path / "claims_vocabulary.txt").write_text("\n".join(iteration.claims_vocabulary()))
  iterate.validate(rounds)
  labeler = settings.stage_config(config, tmp_path, 2, runs.Run(runs.LABELER), path, tokenizer)
  config_validation.validate_config(labeler)
  assert labeler.init.checkpoint_dir == str(seed.run(runs.Run(runs.SFT_WEB)))
  assert labeler.data.source_dir == str(seed.data(runs.LABELER_DATA))
  assert labeler.train.num_steps == config.demo.labeler.steps


def test_a_workdir_serves_every_study_of_the_same_settings(tmp_path):
  ablation = config_files.load("demo.py", "quick")
  driver._check_workdir(ablation, tmp_path)
  driver._check_workdir(config_files.load("demo.py", "quick,iterate"), tmp_path)
  other = config_files.load("demo.py", "quick,iterate")
  other.demo.sft_vqa.steps += 1
  with pytest.raises(ValueError, match="different config"):
    driver._check_workdir(other, tmp_path)
