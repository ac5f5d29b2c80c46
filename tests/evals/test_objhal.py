"""Object HalBench, rule-based CHAIR: mention extraction cases and hand-computed metrics,
and the lemmas against nltk's WordNetLemmatizer over the WordNet 3.0 database."""

import json
import math
import os
import pathlib
import shutil
import warnings

import pytest

from rlhfv_jax.evals import chair, objhal


@pytest.fixture(scope="module")
def vocabulary():
  return objhal.Vocabulary()


@pytest.mark.parametrize("text, want", [
    # Irregular plurals and WordNet's lemmas ("people" stays "people": person).
    ("Two people and three mice.", ["person", "mouse"]),
    ("Children with knives, skis and buses.", ["person", "knife", "skis", "bus"]),
    # "glasses" -> "glass": only "wine glass" is an object.
    ("Wine glasses and reading glasses on a dining table.", ["wine glass", "dining table"]),
    ("Two hot dogs, a baby elephant and a passenger train.", ["hot dog", "elephant", "train"]),
    ("A bow tie and sports balls.", ["tie", "sports ball"]),
    # "toilet seat" is the toilet; duplicates are kept.
    ("A toilet seat next to the toilet.", ["toilet", "toilet"]),
    # "train track" and "home plate" are phrases, not a train or a plate; "hot-dog" is one
    # Treebank token, not a hot dog.
    ("A hot-dog stand by the train tracks near home plate.", []),
    ("A TEDDY BEAR on a Couch.", ["teddy bear", "couch"]),
    ("The man's surfboard.", ["person", "surfboard"]),
    # WordNet 3.0 holds "men" as a noun of its own (the work force), so the official scorer
    # finds no person in it; "women" has no entry and becomes "woman".
    ("In the image, a men is near a toilet seat.", ["toilet"]),
    ("Men and women.", ["person"]),
    # "vases" -> "vas" (a WordNet noun, the shortest candidate); "bikers" stays "bikers"
    # (WordNet has no "biker"), so neither is an object.
    ("Two vases and three bikers, a biker and a vase.", ["person", "vase"]),
])
def test_mentions(vocabulary, text, want):
  assert vocabulary.mentions(text) == want


@pytest.fixture
def coco(tmp_path):
  categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
                {"id": 59, "name": "pizza"}]
  (tmp_path / "instances_val2014.json").write_text(json.dumps({
      "categories": categories, "images": [{"id": 1}, {"id": 2}, {"id": 3}],
      "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 1},
                      {"image_id": 2, "category_id": 59}]}))
  (tmp_path / "captions_val2014.json").write_text(json.dumps({"annotations": [
      {"image_id": 1, "caption": "A man walks a dog on a leash."},
      {"image_id": 1, "caption": "A woman with her puppy near a bench."},
      {"image_id": 2, "caption": "A pizza on a dining table next to wine glasses."}]}))
  return objhal.CocoObjects(tmp_path)


def test_ground_truth_unites_instances_and_captions(coco):
  assert coco.ground_truth[1] == {"person", "dog", "bench"}
  assert coco.ground_truth[2] == {"pizza", "dining table", "wine glass"}
  assert coco.ground_truth[3] == set()


def test_score_hand_computed(coco):
  responses = ["A man and his dog sit on a bench next to a cat.",   # cat hallucinated
               "Two pizzas and two hot dogs on the table.",         # hot dog hallucinated
               "A delicious meal."]                                 # no mention
  got = coco.score([1, 2, 2], responses)
  assert got["chair_s"] == pytest.approx(2 / 3)
  assert got["response_hall"] == pytest.approx(2 / 2)
  assert got["chair_i"] == pytest.approx(2 / 7)       # 4 + 3 mentions
  assert got["recall"] == pytest.approx((3 + 2 + 0) / 9)
  assert got["avg_words"] == pytest.approx((13 + 9 + 3) / 3)
  assert got["num_responses"] == 3
  with pytest.raises(KeyError, match="image 99"):
    coco.score([99], ["A dog."])


def test_chair_core_undefined_rates_are_nan():
  got = chair.chair_metrics([chair.MentionCounts(0, 0, 0, 0, 2)])
  assert got["chair_s"] == 0.0 and math.isnan(got["chair_i"]) and math.isnan(got["recall"])
  assert math.isnan(got["response_hall"])


def test_a_synonyms_file_of_your_own(tmp_path):
  (tmp_path / "syn.txt").write_text("dog, puppy\n\ncat, kitten\n")
  vocabulary = objhal.Vocabulary(objhal.read_synonyms(tmp_path / "syn.txt"))
  assert vocabulary.mentions("Two puppies and a kitten on a bench.") == ["dog", "cat"]
  assert len(objhal.COCO_SYNONYMS) == 80 and len(objhal.PROMPTS) == 8


# Debian's wordnet-base package: the Princeton WordNet 3.0 database.
WORDNET_DIR = pathlib.Path("/usr/share/wordnet")
REQUIRE_WORDNET_VAR = "RLHFV_REQUIRE_WORDNET"
# WordNet's lexicographer file names (lexnames(5WN)), which Debian does not ship as a file
# and nltk's reader opens; the third column is the part of speech (1 noun ... 4 adverb).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food "
    "noun.group noun.location noun.motive noun.object noun.person noun.phenomenon "
    "noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative "
    "verb.weather adj.ppl").split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
  """nltk's WordNetCorpusReader over Debian's database, installed as `nltk.corpus.wordnet`
  so that nltk's own WordNetLemmatizer uses it (nothing is downloaded)."""
  if not (WORDNET_DIR / "data.noun").is_file():
    message = (f"needs the WordNet 3.0 database in {WORDNET_DIR}: apt-get install "
               "wordnet-base (Debian/Ubuntu; nltk's data cannot be downloaded offline)")
    if os.environ.get(REQUIRE_WORDNET_VAR) == "1":
      pytest.fail(message)
    pytest.skip(message)
  import nltk.corpus
  import nltk.data
  from nltk.corpus.reader.wordnet import WordNetCorpusReader

  class Reader(WordNetCorpusReader):

    def map_wn(self, version="wordnet"):
      # Sense mapping for the multilingual data, which would load nltk_data's own copy of
      # WordNet; the lemmatizer never uses it.
      return None

  # nltk opens corpus files only below its data paths and refuses links out of them,
  # hence copies in a folder added to those paths.
  root = tmp_path_factory.mktemp("wordnet")
  for name in WordNetCorpusReader._FILES:
    if (WORDNET_DIR / name).is_file():
      shutil.copyfile(WORDNET_DIR / name, root / name)
  (root / "lexnames").write_text("".join(
      f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n"
      for i, name in enumerate(_LEXNAMES)))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(nltk.data, "path", [*nltk.data.path, str(root)])
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # no multilingual data: expected here
      reader = Reader(str(root), None)
    patch.setattr(nltk.corpus, "wordnet", reader)
    yield reader


def test_the_database_is_wordnet_3_0(wordnet):
  from nltk.stem import WordNetLemmatizer
  assert wordnet.get_version() == "3.0"
  lemmatize = WordNetLemmatizer().lemmatize
  assert [lemmatize(w) for w in ("men", "women", "vases", "mice", "glasses", "was")] == [
      "men", "woman", "vas", "mouse", "glass", "wa"]


def _reachable_forms(wordnet, vocabulary):
  """Every lower-case token that nltk's lemmatizer or the project's could turn into a word
  the extraction looks at (a vocabulary word or a part of a two-word phrase).

  nltk's noun lemma of a token is the token itself, one of its noun.exc entries, or one
  suffix rule applied once, so the tokens that can reach a word are the word, the word
  with each rule reversed, and the noun.exc keys that name it; the project's rules draw
  from the same candidates. Tokens are lower-cased first, so "iPhone" reaches nothing.
  """
  words = {w for w in vocabulary.to_class if " " not in w}
  words |= {part for phrase in vocabulary.double_words for part in phrase.split()}
  forms = set(words)
  for word in words:
    for old, new in wordnet.MORPHOLOGICAL_SUBSTITUTIONS["n"]:
      if word.endswith(new):
        forms.add(word[:len(word) - len(new)] + old)
  exceptions = wordnet._exception_map["n"]
  forms |= {form for form, lemmas in exceptions.items() if set(lemmas) & words}
  return words, sorted(f for f in forms if f == f.lower())


def test_lemmas_equal_nltk_wordnet_on_every_reachable_form(wordnet, vocabulary):
  from nltk.stem import WordNetLemmatizer
  lemmatize = WordNetLemmatizer().lemmatize
  words, forms = _reachable_forms(wordnet, vocabulary)
  assert len(forms) == 887  # the count the module docstring gives
  official = {form: lemmatize(form) for form in forms}
  assert {f: (vocabulary.lemmatize(f), official[f]) for f in forms
          if vocabulary.lemmatize(f) != official[f]} == {}
  # The committed table holds exactly the forms where the rules alone go wrong.
  assert objhal._WORDNET_LEMMAS == {f: official[f] for f in forms
                                    if vocabulary.rule_lemma(f) != official[f]}
  # The rules' exceptions are noun.exc's entries for these words, as WordNet has them.
  exceptions = wordnet._exception_map["n"]
  assert objhal._IRREGULAR_PLURALS == {
      form: next(l for l in lemmas if l in words) for form, lemmas in exceptions.items()
      if set(lemmas) & words}
