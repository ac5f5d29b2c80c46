"""POPE (Li et al. 2023, RUCAIBox/POPE `evaluate.py`): polling-based object probing.

Question files `coco_pope_{random,popular,adversarial}.json` hold one JSON object a line:
``{"question_id", "image", "text", "label": "yes"|"no"}``. The official answer rule, kept
exactly (also LLaVA's `eval_pope.py`): take the text before the first '.', remove ',',
split on single spaces; the answer is "no" iff those words contain `No`, `not` or `no`,
else "yes". So "NO" → yes, "Not really." → yes, "I don't see a dog." → yes,
"Yes. But not a dog." → yes. Metrics with "yes" as the positive class.

Published: LLaVA-1.5-7B mean F1 85.9 over the three splits (LLaVA's question files, POPE
commit e3e3926, whose `random` split has 2,910 questions; record which file you used:
`file_sha256`).
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Callable, Iterator, Optional, Sequence

from rlhfv_jax import jsonl
from rlhfv_jax.evals import binary

SPLITS = ("random", "popular", "adversarial")
# LLaVA-1.5's suffix for short answers (its POPE evaluation appends it to each question).
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
_NO_WORDS = frozenset({"No", "not", "no"})


def parse_answer(text: str) -> str:
  """The official rule (module docstring): "no" or "yes"."""
  words = text.split(".")[0].replace(",", "").split(" ")
  return "no" if _NO_WORDS & set(words) else "yes"


def score(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
  """POPE metrics of raw model `answers` against "yes"/"no" `labels`.

  Returns:
    accuracy, precision, recall, f1, yes_ratio (share of "yes" answers), tp, fp, tn, fn.
  """
  bad = sorted({label for label in labels} - {"yes", "no"})
  if bad:
    raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad}")
  parsed = [parse_answer(a) for a in answers]
  counts = binary.confusion(parsed, labels, positive="yes")
  yes_ratio = parsed.count("yes") / len(parsed) if parsed else 0.0
  return dict(binary.metrics(counts), yes_ratio=yes_ratio, **counts)


def read_questions(path: str | pathlib.Path,
                   on_error: Optional[Callable[[ValueError], None]] = None) -> Iterator[dict]:
  """The questions of a POPE file (JSON lines), each checked for its keys.

  A bad line is a ValueError naming the file and line, raised, or passed to `on_error`
  (which may raise it or record it) and the line skipped."""
  path = pathlib.Path(path)
  for number, item in jsonl.read_objects(path, on_error):
    missing = [k for k in ("question_id", "image", "text", "label") if k not in item]
    if missing or item.get("label") not in ("yes", "no"):
      error = jsonl.JsonlError(path, number, f"needs question_id, image, text and a label "
                               f"'yes'/'no'; missing {missing}, label {item.get('label')!r}")
      if on_error is None:
        raise error
      on_error(error)
      continue
    yield item


def file_sha256(path: str | pathlib.Path) -> str:
  """Which question file a result came from (POPE's files differ between commits)."""
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
