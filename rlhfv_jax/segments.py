"""Corrected segments y_c: a token-level diff of the original answer y_l against y_w.

The labeler rewrote only hallucinated segments, so the two answers share long unchanged
runs (y_u). Everything else is a corrected segment y_c, the tokens DDPO weights by γ.

Two rules, both on `difflib.SequenceMatcher(None, rejected_ids, chosen_ids)` with its
default settings (autojunk on), keeping only matching blocks of at least `min_match`
tokens (shorter "matches" are coincidences such as a shared "the" inside a rewrite):

* ``mode="paper"`` (default; the paper's definition): every token outside the kept
  blocks is corrected on its own side. A deleted hallucination (rejected side only)
  and an inserted fact (chosen side only) are weighted too.
* ``mode="rlhfv"`` (the released RLHF-V rule): the gap between two consecutive kept
  blocks is a corrected segment on both sides only when it is non-empty on BOTH sides,
  i.e. a replacement; pure insertions and deletions get no weight.

Decision (both modes): the start of the sequences and difflib's terminating (size 0)
block at (len(rejected), len(chosen)) bound the first and last gaps, so an edit at the
very beginning or end of an answer counts like one in the middle.
"""

from __future__ import annotations

import difflib
from typing import Iterator, Sequence

import numpy as np

MODES = ("paper", "rlhfv")
# Defaults of `correction_masks`, and so of the run config (`ddpo.DDPOConfig`).
DEFAULT_MODE = "paper"
DEFAULT_MIN_MATCH = 3


def _gaps(rejected_ids: Sequence[int], chosen_ids: Sequence[int],
          min_match: int) -> Iterator[tuple[int, int, int, int]]:
  """Yields (rej_start, rej_end, cho_start, cho_end) for each gap between kept blocks."""
  matcher = difflib.SequenceMatcher(None, list(rejected_ids), list(chosen_ids))
  rej_pos = cho_pos = 0
  for block in matcher.get_matching_blocks():
    is_terminator = block.size == 0
    if block.size < min_match and not is_terminator:
      continue
    yield rej_pos, block.a, cho_pos, block.b
    rej_pos, cho_pos = block.a + block.size, block.b + block.size


def correction_masks(rejected_ids: Sequence[int], chosen_ids: Sequence[int],
                     mode: str = DEFAULT_MODE,
                     min_match: int = DEFAULT_MIN_MATCH) -> tuple[np.ndarray, np.ndarray]:
  """Marks the tokens of each answer that lie in a corrected segment.

  Args:
    rejected_ids: token ids of the original answer y_l (response tokens only).
    chosen_ids: token ids of the corrected answer y_w (response tokens only).
    mode: "paper" or "rlhfv", see the module docstring.
    min_match: matching blocks shorter than this many tokens are not "unchanged".

  Returns:
    (rejected_mask, chosen_mask): bool arrays of len(rejected_ids) and len(chosen_ids);
    True = the token is in a corrected segment.
  """
  if mode not in MODES:
    raise ValueError(f"correction_masks: mode={mode!r}; expected one of {MODES}")
  if min_match < 1:
    raise ValueError(f"correction_masks: min_match={min_match} must be >= 1")
  rejected_mask = np.zeros(len(rejected_ids), dtype=bool)
  chosen_mask = np.zeros(len(chosen_ids), dtype=bool)
  for rej_start, rej_end, cho_start, cho_end in _gaps(rejected_ids, chosen_ids, min_match):
    is_replacement = rej_end > rej_start and cho_end > cho_start
    if mode == "paper" or is_replacement:
      rejected_mask[rej_start:rej_end] = True
      chosen_mask[cho_start:cho_end] = True
  return rejected_mask, chosen_mask
