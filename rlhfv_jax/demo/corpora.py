"""Text corpora of the demo world: noisy "web" captions, clean VQA pairs, prompts.

The paper traces hallucination partly to the VL mismatch of pretraining/SFT data:
captions scraped from the web mention things that are not in their image, and a
model trained on them learns to say what usually co-occurs rather than what it
sees. The miniature reproduces that mechanism explicitly:

* `web_captions`: detailed descriptions of scenes in which a configurable share
  mention objects that are absent ("extra_object", drawn from a fixed co-occurrence
  prior `companion_kind`, so the noise is systematic and learnable like "a fork
  next to a plate") or give a present object the wrong colour ("wrong_color").
  The count sentence follows the caption's own (wrong) object list, as a careless
  caption writer's would.
* `vqa_pairs`: clean short-answer questions (count, colour, shape, position, size,
  yes/no presence with half the negatives drawn from the same co-occurrence prior),
  the miniature of LLaVA-1.5's VQAv2 SFT data.
* `DESCRIPTION_PROMPTS`: the instructions under which long descriptions are asked
  for (training captions, sampling for feedback, and evaluation).

Every sentence uses the closed vocabulary of `world`, in the sentence shapes that
`oracle.parse_description` reads back.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from rlhfv_jax.demo import world

DESCRIPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "What is in this image? Describe it.",
    "Provide a detailed description of the image.",
)
VQA_SUFFIX = "Answer the question using a single word or phrase."


def description_prompts(count: int) -> list[str]:
  """The instructions of `count` descriptions asked of a model (sampling, evaluation):
  `DESCRIPTION_PROMPTS` in turn, so every phrasing is asked equally often."""
  return [DESCRIPTION_PROMPTS[i % len(DESCRIPTION_PROMPTS)] for i in range(count)]


# Phrase used in sentences for an object in each cell.
WHERE_PHRASES: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)
# Position first: the writer (and the model) names a cell, then what is in it.
_OBJECT_TEMPLATES: tuple[str, ...] = (
    "{Where}, there is a {size} {color} {shape}.",
    "{Where}, I can see a {size} {color} {shape}.",
    "{Where} is a {size} {color} {shape}.",
)
_COUNT_TEMPLATES: tuple[tuple[str, str], ...] = (  # (singular, plural)
    ("There is one object in the image.", "There are {n} objects in the image."),
    ("The image contains one object.", "The image contains {n} objects."),
)
_CLOSING = "The background is dark."

# The co-occurrence prior of the web corpus: an object of shape s and colour c is
# "usually seen with" one of shape _COMPANION_SHAPE[s] and colour _COMPANION_COLOR[c].
_COMPANION_SHAPE = {"circle": "square", "square": "triangle", "triangle": "diamond",
                    "diamond": "circle"}
_COMPANION_COLOR = {"red": "blue", "blue": "yellow", "yellow": "green", "green": "white",
                    "white": "red"}
MISMATCH_KINDS: tuple[str, ...] = ("extra_object", "wrong_color")
VQA_TYPES: tuple[str, ...] = ("count", "color", "shape", "position", "size", "presence")
# Yes/no questions beside the VQA stage's own types: "Are there three objects in the
# image?" (the iterate study's labeler checks the descriptions' count sentences with it).
QUESTION_TYPES: tuple[str, ...] = VQA_TYPES + ("count_check",)


def companion_kind(obj: world.SceneObject) -> tuple[str, str]:
  """The (colour, shape) the web corpus wrongly associates with `obj`."""
  return (_COMPANION_COLOR[obj.color], _COMPANION_SHAPE[obj.shape])


@dataclasses.dataclass(frozen=True)
class TextExample:
  """One prompt/response pair about a scene.

  Attributes:
    scene_id: the scene the text is about.
    prompt: the user's instruction or question (without image placeholder).
    response: the assistant's answer.
    source: "web_caption" or "vqa/<question type>".
    mismatches: the VL mismatches injected into a web caption (empty when the text
      is faithful to the image), e.g. ("extra_object", "wrong_color").
  """

  scene_id: str
  prompt: str
  response: str
  source: str
  mismatches: tuple[str, ...] = ()


def count_sentence(n: int, rng: np.random.Generator) -> str:
  """A sentence stating that the image holds `n` objects."""
  singular, plural = _COUNT_TEMPLATES[int(rng.integers(len(_COUNT_TEMPLATES)))]
  return singular if n == 1 else plural.format(n=world.NUMBER_WORDS[n])


def object_sentence(obj: world.SceneObject, rng: np.random.Generator) -> str:
  """A sentence describing one object with all four attributes."""
  template = _OBJECT_TEMPLATES[int(rng.integers(len(_OBJECT_TEMPLATES)))]
  where = WHERE_PHRASES[obj.cell]
  return template.format(size=obj.size, color=obj.color, shape=obj.shape,
                         Where=where[:1].upper() + where[1:])


def describe(objects: Sequence[world.SceneObject], rng: np.random.Generator,
             closing_prob: float = 0.3) -> str:
  """A detailed description: count sentence, one sentence per object, maybe a closing.

  Args:
    objects: the objects the description asserts (faithful or not), described in
      reading order of their cells.
    rng: random stream for template choice.
    closing_prob: probability of ending with a sentence about the background.

  Returns:
    The description.
  """
  sentences = [count_sentence(len(objects), rng)]
  sentences += [object_sentence(o, rng) for o in sorted(objects, key=lambda o: o.cell)]
  if rng.random() < closing_prob:
    sentences.append(_CLOSING)
  return " ".join(sentences)


def _absent_kind(scene: world.Scene, rng: np.random.Generator,
                 taken: set[tuple[str, str]]) -> tuple[str, str]:
  """An absent (colour, shape), preferring the co-occurrence prior of a present object."""
  for i in rng.permutation(len(scene.objects)):
    kind = companion_kind(scene.objects[i])
    if kind not in taken:
      return kind
  free = [(c, s) for c in world.COLORS for s in world.SHAPES if (c, s) not in taken]
  return free[int(rng.integers(len(free)))]


def corrupt_objects(scene: world.Scene, kinds: Sequence[str],
                    rng: np.random.Generator) -> list[world.SceneObject]:
  """The object list a mismatched caption asserts for `scene`.

  Args:
    scene: the true scene.
    kinds: mismatches to inject, each in `MISMATCH_KINDS` ("extra_object" adds an
      absent object in an empty cell; "wrong_color" recolours a present object).
    rng: random stream.

  Returns:
    The asserted objects (true ones, possibly recoloured, plus invented ones).
  """
  objects = list(scene.objects)
  taken = {o.kind for o in objects}
  for kind in kinds:
    if kind == "extra_object":
      free_cells = sorted(set(range(len(world.CELL_NAMES))) - {o.cell for o in objects})
      color, shape = _absent_kind(scene, rng, taken)
      cell = free_cells[int(rng.integers(len(free_cells)))]
      size = world.SIZES[int(rng.integers(len(world.SIZES)))]
      objects.append(world.SceneObject(shape, color, size, cell))
      taken.add((color, shape))
    elif kind == "wrong_color":
      i = int(rng.integers(len(scene.objects)))
      target = objects[i]
      options = [c for c in world.COLORS
                 if c != target.color and (c, target.shape) not in taken]
      if not options:
        continue
      prior = _COMPANION_COLOR[target.color]
      color = prior if prior in options else options[int(rng.integers(len(options)))]
      objects[i] = dataclasses.replace(target, color=color)
      taken.add((color, target.shape))
    else:
      raise ValueError(f"unknown mismatch kind {kind!r}; expected one of {MISMATCH_KINDS}")
  return objects


def web_captions(scenes: Sequence[world.Scene], seed: int, mismatch_rate: float,
                 mismatch_weights: Mapping[str, float] | None = None,
                 max_extra: int = 2) -> list[TextExample]:
  """One "web" caption per scene, a share of them mismatched with their image.

  Args:
    scenes: the scenes.
    seed: seed of the text randomness (templates, which captions are corrupted).
    mismatch_rate: probability in [0, 1] that a caption carries mismatches.
    mismatch_weights: relative frequency of each mismatch kind; default 3:1
      extra_object : wrong_color.
    max_extra: a mismatched caption carries 1..max_extra mismatches.

  Returns:
    The captions, in scene order, prompted with `DESCRIPTION_PROMPTS`.
  """
  if not 0.0 <= mismatch_rate <= 1.0:
    raise ValueError(f"mismatch_rate must lie in [0, 1], got {mismatch_rate}")
  weights = dict(mismatch_weights or {"extra_object": 3.0, "wrong_color": 1.0})
  unknown = set(weights) - set(MISMATCH_KINDS)
  if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
    raise ValueError(f"mismatch_weights must give non-negative weights to kinds in "
                     f"{MISMATCH_KINDS} with a positive sum, got {weights}")
  names = list(weights)
  probs = np.array([weights[k] for k in names], dtype=np.float64)
  probs /= probs.sum()
  rng = np.random.default_rng(seed)
  examples = []
  for scene in scenes:
    prompt = DESCRIPTION_PROMPTS[int(rng.integers(len(DESCRIPTION_PROMPTS)))]
    kinds: tuple[str, ...] = ()
    if rng.random() < mismatch_rate:
      n = int(rng.integers(1, max_extra + 1))
      kinds = tuple(names[i] for i in rng.choice(len(names), size=n, p=probs))
    objects = corrupt_objects(scene, kinds, rng) if kinds else list(scene.objects)
    examples.append(TextExample(scene.scene_id, prompt, describe(objects, rng),
                                "web_caption", kinds))
  return examples


def _vqa_question(scene: world.Scene, qtype: str,
                  rng: np.random.Generator) -> tuple[str, str]:
  """One (question, answer) of type `qtype` about `scene`."""
  obj = scene.objects[int(rng.integers(len(scene.objects)))]
  if qtype == "count":
    return "How many objects are in the image?", world.NUMBER_WORDS[len(scene.objects)]
  if qtype == "color":
    return f"What color is the {obj.shape} {WHERE_PHRASES[obj.cell]}?", obj.color
  if qtype == "shape":
    return f"What shape is {WHERE_PHRASES[obj.cell]}?", obj.shape
  if qtype == "position":
    return f"Where is the {obj.color} {obj.shape}?", obj.position
  if qtype == "size":
    return f"Is the {obj.color} {obj.shape} small or large?", obj.size
  if qtype == "presence":
    if rng.random() < 0.5:
      color, shape = obj.kind
      answer = "Yes"
    else:
      color, shape = _absent_kind(scene, rng, {o.kind for o in scene.objects})
      answer = "No"
    return f"Is there a {color} {shape} in the image?", answer
  if qtype == "count_check":
    # Half the time the true count, else another of 1 .. 6 (the counts descriptions
    # state); "one" is asked as a description's "There is one object" is read: is
    # there an object?
    true = len(scene.objects)
    asked = true if rng.random() < 0.5 else int(rng.choice(
        [n for n in range(1, 7) if n != true]))
    if asked == 1:
      return "Is there an object in the image?", "Yes"
    return (f"Are there {world.NUMBER_WORDS[asked]} objects in the image?",
            "Yes" if asked == true else "No")
  raise ValueError(f"unknown VQA question type {qtype!r}; expected one of {QUESTION_TYPES}")


def vqa_pairs(scenes: Sequence[world.Scene], seed: int, per_scene: int = 3,
              types: Sequence[str] = VQA_TYPES) -> list[TextExample]:
  """Clean short-answer questions about each scene.

  Args:
    scenes: the scenes.
    seed: seed of question sampling.
    per_scene: questions per scene (types drawn uniformly from `types`).
    types: question types to draw from, each in `QUESTION_TYPES` (the VQA stage's
      are `VQA_TYPES`).

  Returns:
    `per_scene * len(scenes)` examples, prompts ending with `VQA_SUFFIX`.
  """
  unknown = set(types) - set(QUESTION_TYPES)
  if unknown or not types:
    raise ValueError(f"VQA types must be a non-empty subset of {QUESTION_TYPES}, got {types}")
  rng = np.random.default_rng(seed)
  examples = []
  for scene in scenes:
    for _ in range(per_scene):
      qtype = types[int(rng.integers(len(types)))]
      question, answer = _vqa_question(scene, qtype, rng)
      examples.append(TextExample(scene.scene_id, f"{question}\n{VQA_SUFFIX}", answer,
                                  f"vqa/{qtype}"))
  return examples
