"""Object HalBench (RLHF-V's protocol), rule-based path: CHAIR over COCO objects.

Label results "CHAIR (rule)": the paper's numbers use GPT-3.5 to extract objects, so a
rule-based number is a different number (published, GPT path: LLaVA-1.5-7B 53.6 / 25.2
Resp / Ment, RLHF-V-13B 12.2 / 7.5).

Mention extraction, as in RLHF-V's `eval_gpt_obj_halbench.py` rule path (CHAIR):
lower-case; tokenize; lemmatize every token as a noun; join two-word phrases (every
multi-word synonym, "home plate", "train track"; "baby X" / "adult X" → X for animals,
"passenger jet/train" → jet/train, "bow tie" → tie, "toilet seat" → toilet); drop "seat"
when "toilet" occurs; keep the words in the 80-class synonym list (RLHF-V's refined list,
`COCO_SYNONYMS`, or a `synonyms_refine.txt` of your own) and map each to its class.

Where this can differ from the official nltk + WordNet path (NLTK's data packages cannot
be fetched on these machines, so nothing here needs them):
* Tokens: NLTK's Treebank tokenizer (part of the `nltk` package, no data) applied per
  sentence, sentences split after '.', '!' or '?' followed by a space, where
  `nltk.word_tokenize` splits sentences with the punkt model. They differ only around
  abbreviations ("Mr. Smith"), which contain no COCO object.
* Lemmas: WordNet's noun morphology (its exception list for the irregular plurals of the
  vocabulary — people, children, men, women, mice, geese, oxen, knives, teeth, feet, ... —
  and its suffix rules s, ses, ves, xes, zes, ches, shes, men, ies), keeping a candidate
  only if it is a vocabulary word, where WordNet keeps any noun it knows and returns the
  shortest. The two agree on every vocabulary word; they can differ only on a word whose
  shorter form is a WordNet noun outside the vocabulary while the word itself is in it
  (none is known in the refined list). Tested: "people", "mice", "glasses", "wine
  glasses", "hot dogs", "children", "knives", "skis", "buses".
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Sequence

from nltk.tokenize import TreebankWordTokenizer

from rlhfv_jax.evals import chair

# RLHF-V's eval/data/synonyms_refine.txt: one COCO class a line, its name first.
COCO_SYNONYMS: tuple[str, ...] = (
    "person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, "
    "baby, worker, passenger, sister, brother, biker, policeman, cop, officer, lady, cowboy, "
    "bride, groom, male, female, guy, traveler, mother, father, gentleman, pitcher, player, "
    "skier, snowboarder, skater, skateboarder, guy, foreigner, child, gentleman, caller, "
    "offender, coworker, trespasser, patient, politician, soldier, grandchild, serviceman, "
    "walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, driver, "
    "solider, hunter, shopper, villager, pedestrian",
    "bicycle, bike, unicycle, minibike, trike",
    "car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, "
    "taxi",
    "motorcycle, scooter, motor bike, motor cycle, motorbike, scooter, moped",
    "airplane, jetliner, plane, air plane, monoplane, aircraft, jet, jetliner, airbus, "
    "biplane, seaplane",
    "bus, minibus, trolley",
    "train, locomotive, tramway, caboose",
    "truck, pickup, lorry, hauler, firetruck",
    "boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, "
    "yacht, kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, "
    "watercraft, tugboat, schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, "
    "steamboat, riverboat, battleship, steamship",
    "traffic light, street light, traffic signal, stop light, streetlight, stoplight",
    "fire hydrant, hydrant",
    "stop sign",
    "parking meter",
    "bench, pew",
    "bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, "
    "heron, hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, "
    "shorebird, woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, willet, "
    "gull, swan, bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, "
    "rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock, "
    "cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird",
    "cat, kitten, feline, tabby",
    "dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, "
    "collie, pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, "
    "sheepdog, weimaraner, corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky",
    "horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, "
    "clydesdale, bronc, bronco",
    "sheep, lamb, ram, lamb, goat, ewe",
    "cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison",
    "elephant", "bear, panda", "zebra", "giraffe", "backpack, knapsack", "umbrella",
    "handbag, wallet, purse, briefcase", "tie, bow, bow tie", "suitcase, suit case, luggage",
    "frisbee", "skis, ski", "snowboard", "sports ball, ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard, longboard, skimboard, shortboard, wakeboard",
    "tennis racket, racket", "bottle", "wine glass", "cup", "fork",
    "knife, pocketknife, knive", "spoon", "bowl, container", "banana", "apple",
    "sandwich, burger, sub, cheeseburger, hamburger", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut, doughnut, bagel",
    "cake, cheesecake, cupcake, shortcake, coffeecake, pancake", "chair, seat, stool",
    "couch, sofa, recliner, futon, loveseat, settee, chesterfield", "potted plant, houseplant",
    "bed", "dining table, table, desk, coffee table",
    "toilet, urinal, commode, toilet, lavatory, potty", "tv, monitor, televison, television",
    "laptop, computer, notebook, netbook, lenovo, macbook, laptop computer", "mouse",
    "remote, remote control", "keyboard",
    "cell phone, mobile phone, phone, cellphone, telephone, phon, smartphone, iPhone",
    "microwave", "oven, stovetop, stove, stove top oven", "toaster", "sink",
    "refrigerator, fridge, fridge, freezer", "book", "clock", "vase", "scissors",
    "teddy bear, teddybear", "hair drier, hairdryer", "toothbrush",
)

# The 8 description prompts of the RLHF-V paper's appendix (Object HalBench).
PROMPTS: tuple[str, ...] = (
    "Provide a thorough description of the given image.",
    "What is this photo about? Please answer in great detail.",
    "Provide a thorough description of the given picture.",
    "Explain the narrative or story that the image seems to convey, detailing each part that "
    "contributes to it.",
    "Please provide a detailed description of the image. Describe the visual elements, "
    "colors, shapes, textures, and any objects or people present along with the overall mood "
    "or atmosphere portrayed in the image.",
    "Please provide a detailed description of the image, including its visual elements, such "
    "as colors, shapes, textures, objects, and people.",
    "Provide an intricate description of the image, capturing its visual elements, including "
    "colors, shapes, textures, objects, and any people present.",
    "Compose a detailed account of the image, encompassing its visual characteristics, like "
    "colors, shapes, textures, objects, and any human subjects, by paying careful attention "
    "to the specifics.",
)

_EXTRA_DOUBLE_WORDS = ("home plate", "train track")  # kept whole so "train"/"plate" is not read
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
            "giraffe", "animal", "cub")
_DOUBLE_WORD_CASES = {"passenger jet": "jet", "passenger train": "train", "bow tie": "tie",
                      "toilet seat": "toilet", "wine glas": "wine glass"}
# WordNet's noun exceptions (noun.exc) for plurals that reach the vocabulary.
_IRREGULAR_PLURALS = {
    "children": "child", "grandchildren": "grandchild", "men": "man", "women": "woman",
    "gentlemen": "gentleman", "policemen": "policeman", "servicemen": "serviceman",
    "mice": "mouse", "geese": "goose", "oxen": "ox", "knives": "knife", "feet": "foot",
    "teeth": "tooth", "calves": "calf", "wolves": "wolf", "leaves": "leaf", "halves": "half",
    "loaves": "loaf", "shelves": "shelf", "people": "people", "sheep": "sheep",
}
# WordNet's noun suffix rules (morphy).
_SUFFIX_RULES = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"),
                 ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"))
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOKENIZER = TreebankWordTokenizer()


def read_synonyms(path: str | pathlib.Path) -> tuple[str, ...]:
  """A `synonyms_refine.txt`-format file: one class a line, comma-separated, name first."""
  lines = [l.strip() for l in pathlib.Path(path).read_text().splitlines() if l.strip()]
  if not lines:
    raise ValueError(f"{path}: no synonym lines")
  return tuple(lines)


class Vocabulary:
  """Words -> COCO classes, with the double-word rules of CHAIR (module docstring)."""

  def __init__(self, synonym_lines: Sequence[str] = COCO_SYNONYMS):
    self.to_class: dict[str, str] = {}
    for line in synonym_lines:
      words = [w.strip() for w in line.split(",") if w.strip()]
      for word in words:
        self.to_class.setdefault(word, words[0])
    multi = [w for w in self.to_class if " " in w] + list(_EXTRA_DOUBLE_WORDS)
    self.double_words = {w: w for w in multi}
    for animal in _ANIMALS:
      self.double_words[f"baby {animal}"] = animal
      self.double_words[f"adult {animal}"] = animal
    self.double_words.update(_DOUBLE_WORD_CASES)
    # Lemmas worth finding: vocabulary words and the parts of two-word phrases.
    self._known = ({w for w in self.to_class if " " not in w}
                   | {part for phrase in self.double_words for part in phrase.split()})

  def lemmatize(self, word: str) -> str:
    """Noun lemma of `word` as WordNet gives it for the vocabulary (module docstring)."""
    if word in _IRREGULAR_PLURALS:
      return _IRREGULAR_PLURALS[word]
    forms = [word[:-len(suffix)] + ending for suffix, ending in _SUFFIX_RULES
             if word.endswith(suffix) and len(word) > len(suffix)]
    known = [f for f in forms if f in self._known]
    return min(known, key=len) if known else word

  def words(self, text: str) -> list[str]:
    """Lower-cased tokens, lemmatized, two-word phrases joined (before the vocabulary)."""
    tokens = [t for sentence in _SENTENCE_END.split(text.lower())
              for t in _TOKENIZER.tokenize(sentence)]
    lemmas = [self.lemmatize(t) for t in tokens]
    joined, i = [], 0
    while i < len(lemmas):
      pair = " ".join(lemmas[i:i + 2])
      if pair in self.double_words:
        joined.append(self.double_words[pair])
        i += 2
      else:
        joined.append(lemmas[i])
        i += 1
    if "toilet" in joined and "seat" in joined:
      joined = [w for w in joined if w != "seat"]
    return joined

  def mentions(self, text: str) -> list[str]:
    """The COCO class of every object mention in `text`, in order, duplicates kept."""
    return [self.to_class[w] for w in self.words(text) if w in self.to_class]


class CocoObjects:
  """COCO 2014 ground truth per image (instances ∪ objects of the reference captions).

  Args:
    annotation_dir: a folder with `instances_{train,val}2014.json` and
      `captions_{train,val}2014.json` (at least the val pair; every present file is read).
    synonym_lines: the vocabulary (default: RLHF-V's refined list).
  """

  def __init__(self, annotation_dir: str | pathlib.Path,
               synonym_lines: Sequence[str] = COCO_SYNONYMS):
    self.vocabulary = Vocabulary(synonym_lines)
    directory = pathlib.Path(annotation_dir)
    instances = sorted(directory.glob("instances_*2014.json"))
    captions = sorted(directory.glob("captions_*2014.json"))
    if not instances or not captions:
      raise FileNotFoundError(f"{directory}: needs instances_*2014.json and "
                              "captions_*2014.json (COCO 2014 annotations)")
    self.ground_truth: dict[int, set[str]] = {}
    for path in instances:
      data = json.loads(path.read_text())
      names = {c["id"]: c["name"] for c in data["categories"]}
      for annotation in data["annotations"]:
        name = names[annotation["category_id"]]
        cls = self.vocabulary.to_class.get(name, name)
        self.ground_truth.setdefault(int(annotation["image_id"]), set()).add(cls)
      for image in data.get("images", ()):
        self.ground_truth.setdefault(int(image["id"]), set())
    for path in captions:
      for annotation in json.loads(path.read_text())["annotations"]:
        self.ground_truth.setdefault(int(annotation["image_id"]), set()).update(
            self.vocabulary.mentions(annotation["caption"]))

  def mentions(self, text: str) -> list[str]:
    """COCO class per mention, in order, duplicates kept."""
    return self.vocabulary.mentions(text)

  def counts(self, image_id: int, response: str) -> chair.MentionCounts:
    if int(image_id) not in self.ground_truth:
      raise KeyError(f"image {image_id}: not in the COCO annotations read")
    truth = self.ground_truth[int(image_id)]
    mentioned = self.mentions(response)
    return chair.MentionCounts(
        mentions=len(mentioned), hallucinated=sum(m not in truth for m in mentioned),
        covered=len(set(mentioned) & truth), objects=len(truth),
        words=len(response.split()))

  def score(self, image_ids: Sequence[int], responses: Sequence[str]) -> dict[str, float]:
    """response_hall, chair_i, chair_s, recall, avg_words, num_responses (rates in
    [0, 1]; `evals.chair`)."""
    if len(image_ids) != len(responses):
      raise ValueError(f"{len(image_ids)} image ids for {len(responses)} responses")
    return chair.chair_metrics([self.counts(i, r) for i, r in zip(image_ids, responses)])
