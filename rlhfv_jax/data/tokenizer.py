"""The LLaVA-1.5 tokenizer and chat template.

Template (LLaVA-1.5 / Vicuna v1 conversation, ``conv_vicuna_v1``), as text::

  {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>

with the default system message `VICUNA_V1_SYSTEM`. The prompt part is rendered with
jinja2 from `PROMPT_TEMPLATE` (overridable; it must contain exactly one ``<image>``).

Token layout (what `ChatTemplate.encode_prompt` and the pipeline produce)::

  [BOS] enc("{system} USER: ") [IMG] * num_image_tokens enc("\\n{question} ASSISTANT:")
        enc("{answer}") [EOS]

`enc` is SentencePiece with its dummy prefix (a leading "▁"), no BOS/EOS. The text on
either side of ``<image>`` is encoded separately, exactly as LLaVA's
`tokenizer_image_token` does and as llava-hf's processor ends up doing
(``... ':' '▁' <image> '▁' '<0x0A>' ...``). The answer is encoded on its own: its dummy
prefix is the space after "ASSISTANT:", so prompt + answer equals encoding the whole
conversation at once (tested), and the answer ids are exactly the response token list
that `rlhfv_jax.segments.correction_masks` diffs.

Tokenizers: `SentencePieceTokenizer` (a ``tokenizer.model`` file; ``<image>`` is appended
at id ``vocab_size`` = 32000 as in llava-hf) or `HFTokenizer` (a local HF tokenizer
directory; ``<image>`` is added as a special token if missing). Padding uses the
tokenizer's pad id if it has one, else 0 (``<unk>``): pad positions are never attended
to nor scored, the id only has to be a valid embedding row.
"""

from __future__ import annotations

import pathlib
from typing import Protocol, Sequence, Union

import jinja2
import numpy as np

from rlhfv_jax.data.records import IMAGE_PLACEHOLDER

VICUNA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's "
                    "questions.")
PROMPT_TEMPLATE = "{{ system }} USER: <image>\n{{ question }} ASSISTANT:"

Offsets = list[tuple[int, int]]


class Tokenizer(Protocol):
  """What the pipeline needs from a tokenizer (the demo may bring its own)."""

  bos_id: int
  eos_id: int
  pad_id: int
  image_token_id: int

  def encode(self, text: str) -> list[int]:
    """Ids of `text` with the SentencePiece dummy prefix, without BOS/EOS."""

  def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    """`encode(text)` plus each token's half-open character span in `text`."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` (special tokens dropped)."""


class SentencePieceTokenizer:
  """A SentencePiece ``.model`` (e.g. Llama-2 / Vicuna) with ``<image>`` appended."""

  def __init__(self, model_path: Union[str, pathlib.Path]):
    import sentencepiece  # local: only this backend needs it
    self.path = pathlib.Path(model_path)  # named by errors about what it lacks
    self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    self.bos_id = self._sp.bos_id()
    self.eos_id = self._sp.eos_id()
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
    self.image_token_id = self._sp.vocab_size()
    self.vocab_size = self._sp.vocab_size() + 1

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    pieces = self._sp.encode(text, out_type="proto").pieces
    # SentencePiece reports UTF-8 byte offsets; convert them to character offsets.
    char_at_byte = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
    to_char = lambda b: int(np.searchsorted(char_at_byte, b))
    return [p.id for p in pieces], [(to_char(p.begin), to_char(p.end)) for p in pieces]

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if 0 <= i < self._sp.vocab_size()])


class HFTokenizer:
  """A local transformers tokenizer directory (tokenizer.json or tokenizer.model)."""

  def __init__(self, directory: Union[str, pathlib.Path]):
    import transformers  # local: heavy import, only this backend needs it
    self.path = pathlib.Path(directory)  # named by errors about what it lacks
    self._tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    if IMAGE_PLACEHOLDER not in self._tok.get_vocab():
      self._tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    self.bos_id = self._tok.bos_token_id
    self.eos_id = self._tok.eos_token_id
    self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
    self.image_token_id = self._tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    self.vocab_size = len(self._tok)
    if self.bos_id is None or self.eos_id is None:
      raise ValueError(f"tokenizer in {directory} has no BOS/EOS token")

  def encode(self, text: str) -> list[int]:
    return self._tok(text, add_special_tokens=False).input_ids

  def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    out = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return out.input_ids, [tuple(o) for o in out.offset_mapping]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def choice_token_ids(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
  """Ids of the single tokens that start an answer with one of `words`, e.g. yes/no.

  The template encodes the answer on its own after "ASSISTANT:", so a model's first
  answer token is normally the word with the dummy prefix ("▁Yes"); the bare piece
  ("Yes") can start an answer too. Every token that decodes to exactly the word, with
  or without leading whitespace, counts; casings are separate words (pass "yes" and
  "Yes" for RLAIF-V's P(yes)).

  Args:
    tokenizer: a tokenizer with `vocab_size` (both of this module's do).
    words: the answer words.

  Returns:
    The ids, in id order per word, words in the given order (no repeats).

  Raises:
    ValueError: naming the tokenizer and the word, when a word is no single token.
  """
  # Scanning the vocabulary finds both forms whatever the backend; decoding a lone
  # "▁yes" drops its leading space, as SentencePiece and HF decoders do.
  wanted = set(words)
  found: dict[str, list[int]] = {w: [] for w in words}
  for i in range(tokenizer.vocab_size):
    text = tokenizer.decode([i]).lstrip()
    if text in wanted:
      found[text].append(i)
  ids = []
  for word in words:
    if not found[word]:
      where = getattr(tokenizer, "path", type(tokenizer).__name__)
      raise ValueError(f"the labeler's tokenizer {where} has no single token for {word!r}; "
                       "a labeler must answer yes/no in one token")
    ids.extend(i for i in found[word] if i not in ids)
  return ids


def load_tokenizer(path: Union[str, pathlib.Path]) -> Tokenizer:
  """A `SentencePieceTokenizer` for a ``.model`` file, an `HFTokenizer` for a directory."""
  path = pathlib.Path(path)
  if path.is_file():
    return SentencePieceTokenizer(path)
  if path.is_dir():
    return HFTokenizer(path)
  raise FileNotFoundError(f"no tokenizer at {str(path)!r} (expected a .model file or an HF "
                          "tokenizer directory)")


class ChatTemplate:
  """Renders prompts with the jinja2 template and encodes them with image tokens spliced."""

  def __init__(self, tokenizer: Tokenizer, num_image_tokens: int,
               system: str = VICUNA_V1_SYSTEM, template: str = PROMPT_TEMPLATE):
    if num_image_tokens < 1:
      raise ValueError(f"num_image_tokens={num_image_tokens} must be >= 1")
    if template.count(IMAGE_PLACEHOLDER) != 1:
      raise ValueError(f"prompt template must contain {IMAGE_PLACEHOLDER!r} exactly once: "
                       f"{template!r}")
    self.tokenizer = tokenizer
    self.num_image_tokens = num_image_tokens
    self.system = system
    self._template = jinja2.Environment(keep_trailing_newline=True,
                                        undefined=jinja2.StrictUndefined).from_string(template)

  def render_prompt(self, question: str) -> str:
    """The prompt as text, with a single ``<image>`` placeholder."""
    return self._template.render(system=self.system, question=question)

  def encode_prompt(self, question: str) -> list[int]:
    """BOS + prompt ids with ``num_image_tokens`` image ids where ``<image>`` is."""
    before, after = self.render_prompt(question).split(IMAGE_PLACEHOLDER)
    tok = self.tokenizer
    return ([tok.bos_id] + tok.encode(before) + [tok.image_token_id] * self.num_image_tokens
            + tok.encode(after))

  def encode_answer(self, answer: str) -> list[int]:
    """The response token ids y (without the closing EOS)."""
    return self.tokenizer.encode(answer)
