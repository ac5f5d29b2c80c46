"""Chat templates and their tokenizers: LLaVA-1.5 (Vicuna v1) and Gemma 3.

A model family names its template (``Family.chat_template``, `rlhfv_jax.model.families`);
`TEMPLATES` maps the name to a `TemplateSpec`: the default prompt (jinja2, rendered by
`ChatTemplate.render_prompt`; it must contain exactly one ``<image>``), the default system
message, the image and answer-closing tokens and the markup the tokenizer must know.
Nothing outside this module branches on the template.

``vicuna_v1`` (LLaVA-1.5, ``conv_vicuna_v1``), as text::

  {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>

with the default system message `VICUNA_V1_SYSTEM` and the prompt `PROMPT_TEMPLATE`.
Token layout (what `ChatTemplate.encode_prompt` and the pipeline produce)::

  [BOS] enc("{system} USER: ") [IMG] * num_image_tokens enc("\\n{question} ASSISTANT:")
        enc("{answer}") [EOS]

`enc` is SentencePiece with its dummy prefix (a leading "▁"), no BOS/EOS. The text on
either side of ``<image>`` is encoded separately, exactly as LLaVA's
`tokenizer_image_token` does and as llava-hf's processor ends up doing
(``... ':' '▁' <image> '▁' '<0x0A>' ...``). The answer is encoded on its own: its dummy
prefix is the space after "ASSISTANT:", so prompt + answer equals encoding the whole
conversation at once (tested), and the answer ids are exactly the response token list
that `rlhfv_jax.segments.correction_masks` diffs. [IMG] is ``<image>``.

``gemma3`` (Gemma 3 instruction-tuned: HF's chat template for a user turn with the
content [image, text], system message in the first user turn), as text::

  <bos><start_of_turn>user\\n{system}\\n\\n<start_of_image>{question}<end_of_turn>\\n
  <start_of_turn>model\\n{answer}<end_of_turn>\\n

with no default system message (with an empty one, "{system}\\n\\n" is left out, as HF's
template does without a system turn) and the question trimmed (HF's template trims text
items). Token layout, ``<start_of_image>`` expanded as `Gemma3Processor` does (into
``\\n\\n<start_of_image>`` + [IMG] * num_image_tokens + ``<end_of_image>\\n\\n``)::

  [BOS] enc("<start_of_turn>user\\n[{system}\\n\\n]\\n\\n<start_of_image>") [IMG] * num_image_tokens
        enc("<end_of_image>\\n\\n{question}<end_of_turn>\\n<start_of_turn>model\\n")
        enc("{answer}") [EOS]

([...]: with a system message only.) `enc` has no dummy prefix, and the markup
(``<start_of_turn>`` ...) is one id each. The newlines around the image merge with the
text beside them ("\\n\\n\\n\\n" after a system message is one piece), so each side of the
image tokens is encoded as one string, never "\\n\\n" apart: the ids equal
`Gemma3Processor`'s for the same conversation (tested). [IMG] is ``<image_soft_token>``
(the model's ``image_token_id``). [EOS] is ``<end_of_turn>``: the Gemma tokenizer's
`eos_id` is that id, not ``<eos>``, so the pipeline closes answers with it and generation
stops on it. The "\\n" HF's template writes after it is never fed: a packed row ends at
the EOS (then padding), and nothing after the EOS is scored. The answer is encoded on its
own; after "model\\n" (a piece of its own) prompt + answer equals encoding the whole
conversation at once unless the answer starts with a newline (HF's template trims answers,
so its conversations never do).

Text refused (`TemplateSpec.reserved`, ValueError): a system message, question or answer
holding ``<image>`` or the template's markup, which the tokenizer would read as special
tokens (one ``<image_soft_token>`` more in a question is one image position more).

Tokenizers, picked by the path type (`load_tokenizer`), each for one template:
`SentencePieceTokenizer` (a ``.model`` file) or `HFTokenizer` (a local HF tokenizer
directory). The template's image token is appended when the vocabulary lacks it, at id
``vocab_size`` of a SentencePiece model (LLaVA's ``<image>`` = 32000, just past
Llama-2's pieces; Gemma 3's ``<image_soft_token>`` = 262144 is likewise an added token of
its HF tokenizer, not a piece of its ``tokenizer.model``), as a special token in an HF
directory; `factory.make_template` checks the id against the model's. The rest of the
markup must be in the vocabulary: a tokenizer without it is refused when it is loaded,
naming the file and the missing tokens.
Padding uses the tokenizer's pad id if it has one, else 0 (``<unk>`` for Llama-2): pad
positions are never attended to nor scored, the id only has to be a valid embedding row.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import jinja2
import numpy as np

from rlhfv_jax.data.records import IMAGE_PLACEHOLDER

VICUNA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's "
                    "questions.")
PROMPT_TEMPLATE = "{{ system }} USER: <image>\n{{ question }} ASSISTANT:"
GEMMA3_PROMPT_TEMPLATE = ("<start_of_turn>user\n{% if system %}{{ system }}\n\n{% endif %}"
                          "<image>{{ question | trim }}<end_of_turn>\n<start_of_turn>model\n")
GEMMA3_MARKUP = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                 "<image_soft_token>")

Offsets = list[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
  """A chat template: its text and what it needs from a tokenizer (module docstring).

  Attributes:
    name: its `TEMPLATES` key (a model family's ``chat_template``).
    prompt_template: the default jinja2 prompt (variables ``system`` and ``question``;
      exactly one ``<image>``).
    system: the default system message ("": none).
    image_token: the token put ``num_image_tokens`` times where ``<image>`` is.
    image_prefix, image_suffix: text around the image tokens, encoded together with the
      prompt text before / after them.
    processor_image_text: what transformers' processor expects in the text where
      ``<image>`` is (it expands it as `image_prefix` + tokens + `image_suffix`).
    eos_token: the token that closes an answer; None: the tokenizer's own EOS.
    markup: special tokens of the template's text (image token included, if it is one):
      each must be a single id of the tokenizer (the image token is appended if missing)
      and is encoded as that id.
  """

  name: str
  prompt_template: str
  system: str
  image_token: str
  image_prefix: str = ""
  image_suffix: str = ""
  processor_image_text: str = IMAGE_PLACEHOLDER
  eos_token: Optional[str] = None
  markup: tuple[str, ...] = ()

  def texts(self, system: Optional[str], prompt_template: Optional[str]) -> tuple[str, str]:
    """(system message, prompt template) with this template's defaults where None."""
    return (self.system if system is None else system,
            self.prompt_template if prompt_template is None else prompt_template)

  @property
  def reserved(self) -> tuple[str, ...]:
    """Strings refused in system messages, questions and answers: ``<image>``, the image
    token and the markup, which the tokenizer would read as special tokens."""
    return tuple(dict.fromkeys((IMAGE_PLACEHOLDER, self.image_token) + self.markup))


TEMPLATES = {
    "vicuna_v1": TemplateSpec(name="vicuna_v1", prompt_template=PROMPT_TEMPLATE,
                              system=VICUNA_V1_SYSTEM, image_token=IMAGE_PLACEHOLDER),
    "gemma3": TemplateSpec(name="gemma3", prompt_template=GEMMA3_PROMPT_TEMPLATE, system="",
                           image_token="<image_soft_token>",
                           image_prefix="\n\n<start_of_image>",
                           image_suffix="<end_of_image>\n\n",
                           processor_image_text="<start_of_image>",
                           eos_token="<end_of_turn>", markup=GEMMA3_MARKUP),
}
DEFAULT_TEMPLATE = "vicuna_v1"  # LLaVA-1.5's, for callers that name none


def template_spec(name: str) -> TemplateSpec:
  """The `TemplateSpec` called `name` (ValueError naming the known ones otherwise)."""
  if name not in TEMPLATES:
    raise ValueError(f"chat template {name!r} is not defined; defined: {', '.join(TEMPLATES)}")
  return TEMPLATES[name]


class Tokenizer(Protocol):
  """What the pipeline needs from a tokenizer (the demo may bring its own)."""

  bos_id: int
  eos_id: int
  pad_id: int
  image_token_id: int

  def encode(self, text: str) -> list[int]:
    """Ids of `text` as encoded on its own (LLaVA: with SentencePiece's dummy prefix;
    Gemma: without one), the template's markup as single ids, without BOS/EOS."""

  def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    """`encode(text)` plus each token's half-open character span in `text`."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` (special tokens dropped)."""


class _TemplateTokens:
  """What both backends do alike for their chat template: the image and EOS ids, the
  markup as single ids when encoding, special tokens dropped when decoding.

  A backend sets `path`, `bos_id`, `pad_id`, calls `_bind_template` and implements
  `_encode`, `_encode_with_offsets` and `_decode` for plain text.
  """

  path: pathlib.Path

  def _bind_template(self, template: str, lookup: Callable[[str], Optional[int]],
                     append: Callable[[str], int], own_eos: Optional[int]) -> None:
    """Looks up the template's tokens: `lookup` gives a token's id or None, `append` adds
    the image token (returning its id), `own_eos` is the tokenizer's EOS id."""
    spec = template_spec(template)
    self.template_name = template
    missing = [t for t in spec.markup if t != spec.image_token and lookup(t) is None]
    if missing:
      raise ValueError(
          f"the tokenizer at {str(self.path)!r} has no {', '.join(missing)}: the "
          f"{template!r} chat template needs them as single tokens (is it the tokenizer of "
          "the model family?)")
    image_id = lookup(spec.image_token)
    self.image_token_id = append(spec.image_token) if image_id is None else image_id
    self.eos_id = own_eos if spec.eos_token is None else lookup(spec.eos_token)
    self._markup = {t: self.image_token_id if t == spec.image_token else lookup(t)
                    for t in spec.markup}
    # Longest first: a marker that starts another is never matched in its place.
    self._markup_re = re.compile("(" + "|".join(
        re.escape(t) for t in sorted(self._markup, key=len, reverse=True)) + ")") if (
            self._markup) else None
    self._hidden = frozenset(self._markup.values()) | {self.image_token_id}

  def _parts(self, text: str) -> Iterator[tuple[int, str, Optional[int]]]:
    """(start, part, markup id or None for plain text) of `text`, in order."""
    start = 0
    for k, part in enumerate(self._markup_re.split(text)):
      if part:
        yield start, part, self._markup[part] if k % 2 else None
      start += len(part)

  def encode(self, text: str) -> list[int]:
    if self._markup_re is None:
      return self._encode(text)
    ids = []
    for _, part, special in self._parts(text):
      ids.extend(self._encode(part) if special is None else [special])
    return ids

  def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    if self._markup_re is None:
      return self._encode_with_offsets(text)
    ids, offsets = [], []
    for start, part, special in self._parts(text):
      if special is None:
        part_ids, part_offsets = self._encode_with_offsets(part)
        ids.extend(part_ids)
        offsets.extend((start + s, start + e) for s, e in part_offsets)
      else:
        ids.append(special)
        offsets.append((start, start + len(part)))
    return ids, offsets

  def decode(self, ids: Sequence[int]) -> str:
    # The markup may be plain (user-defined) pieces, which a backend would spell out.
    return self._decode([int(i) for i in ids if int(i) not in self._hidden])


class SentencePieceTokenizer(_TemplateTokens):
  """A SentencePiece ``.model`` (e.g. Llama-2 / Vicuna, Gemma 3) for a chat template."""

  def __init__(self, model_path: Union[str, pathlib.Path], template: str = DEFAULT_TEMPLATE):
    import sentencepiece  # local: only this backend needs it
    self.path = pathlib.Path(model_path)  # named by errors about what it lacks
    self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    self._pieces = self._sp.vocab_size()
    self.bos_id = self._sp.bos_id()
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
    self._bind_template(template, self._piece_id, lambda token: self._pieces,
                        own_eos=self._sp.eos_id())
    self.vocab_size = max(self._pieces, self.image_token_id + 1)

  def _piece_id(self, piece: str) -> Optional[int]:
    i = self._sp.piece_to_id(piece)  # <unk>'s id for an unknown piece
    return i if self._sp.id_to_piece(i) == piece else None

  def _encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def _encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    pieces = self._sp.encode(text, out_type="proto").pieces
    # SentencePiece reports UTF-8 byte offsets; convert them to character offsets.
    char_at_byte = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
    to_char = lambda b: int(np.searchsorted(char_at_byte, b))
    return [p.id for p in pieces], [(to_char(p.begin), to_char(p.end)) for p in pieces]

  def _decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([i for i in ids if 0 <= i < self._pieces])


class HFTokenizer(_TemplateTokens):
  """A local transformers tokenizer directory (tokenizer.json or tokenizer.model) for a
  chat template."""

  def __init__(self, directory: Union[str, pathlib.Path], template: str = DEFAULT_TEMPLATE):
    import transformers  # local: heavy import, only this backend needs it
    self.path = pathlib.Path(directory)  # named by errors about what it lacks
    self._tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    self.bos_id = self._tok.bos_token_id
    self.pad_id = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
    self._bind_template(template, self._tok.get_vocab().get, self._add_special,
                        own_eos=self._tok.eos_token_id)
    self.vocab_size = len(self._tok)
    if self.bos_id is None or self.eos_id is None:
      raise ValueError(f"tokenizer in {directory} has no BOS/EOS token")

  def _add_special(self, token: str) -> int:
    self._tok.add_special_tokens({"additional_special_tokens": [token]})
    return self._tok.convert_tokens_to_ids(token)

  def _encode(self, text: str) -> list[int]:
    return self._tok(text, add_special_tokens=False).input_ids

  def _encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
    out = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return out.input_ids, [tuple(o) for o in out.offset_mapping]

  def _decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=True)


def choice_token_ids(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
  """Ids of the single tokens that start an answer with one of `words`, e.g. yes/no.

  The template encodes the answer on its own (after "ASSISTANT:" or "model\\n"), so a
  model's first answer token is the word with a leading "▁" ("▁Yes", LLaVA's dummy
  prefix) or the bare piece ("Yes", Gemma's usual first token); either can start an
  answer. Every token that decodes to exactly the word, with or without leading
  whitespace, counts; casings are separate words (pass "yes" and "Yes" for RLAIF-V's
  P(yes)).

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


def load_tokenizer(path: Union[str, pathlib.Path], template: str = DEFAULT_TEMPLATE
                   ) -> Tokenizer:
  """A `SentencePieceTokenizer` for a ``.model`` file, an `HFTokenizer` for a directory,
  for the chat template `template` (a `TEMPLATES` name)."""
  path = pathlib.Path(path)
  if path.is_file():
    return SentencePieceTokenizer(path, template)
  if path.is_dir():
    return HFTokenizer(path, template)
  raise FileNotFoundError(f"no tokenizer at {str(path)!r} (expected a .model file or an HF "
                          "tokenizer directory)")


class ChatTemplate:
  """Renders prompts with the jinja2 template and encodes them with image tokens spliced.

  Args:
    tokenizer: a tokenizer for this template (`load_tokenizer(path, name)`).
    num_image_tokens: image tokens per image (the model's).
    system: the system message; None: the template's default.
    template: the jinja2 prompt (exactly one ``<image>``); None: the template's default.
    name: the `TEMPLATES` name.
  """

  def __init__(self, tokenizer: Tokenizer, num_image_tokens: int,
               system: Optional[str] = None, template: Optional[str] = None,
               name: str = DEFAULT_TEMPLATE):
    spec = template_spec(name)
    system, template = spec.texts(system, template)
    if num_image_tokens < 1:
      raise ValueError(f"num_image_tokens={num_image_tokens} must be >= 1")
    if template.count(IMAGE_PLACEHOLDER) != 1:
      raise ValueError(f"prompt template must contain {IMAGE_PLACEHOLDER!r} exactly once: "
                       f"{template!r}")
    # A tokenizer loaded for another template has other image / EOS ids.
    loaded_for = getattr(tokenizer, "template_name", name)
    if loaded_for != name:
      raise ValueError(f"the tokenizer at {getattr(tokenizer, 'path', '?')} was loaded for the "
                       f"{loaded_for!r} chat template, not {name!r}")
    self.spec = spec
    self.name = name
    self.tokenizer = tokenizer
    self.num_image_tokens = num_image_tokens
    self.system = self._check("system message", system)
    self.prompt_template = template
    self._template = jinja2.Environment(keep_trailing_newline=True,
                                        undefined=jinja2.StrictUndefined).from_string(template)

  def _check(self, what: str, text: str) -> str:
    """`text`, if it holds none of the template's markup (ValueError otherwise)."""
    found = [m for m in self.spec.reserved if m in text]
    if found:
      raise ValueError(f"the {what} contains {', '.join(found)}, markup of the {self.name!r} "
                       f"chat template that would be read as special tokens: {text[:200]!r}")
    return text

  def render_prompt(self, question: str) -> str:
    """The prompt as text, with a single ``<image>`` placeholder."""
    return self._template.render(system=self.system,
                                 question=self._check("question", question))

  def encode_prompt(self, question: str) -> list[int]:
    """BOS + prompt ids with ``num_image_tokens`` image ids where ``<image>`` is."""
    before, after = self.render_prompt(question).split(IMAGE_PLACEHOLDER)
    tok, spec = self.tokenizer, self.spec
    return ([tok.bos_id] + tok.encode(before + spec.image_prefix)
            + [tok.image_token_id] * self.num_image_tokens + tok.encode(spec.image_suffix + after))

  def encode_answer(self, answer: str) -> list[int]:
    """The response token ids y (without the closing EOS)."""
    return self.tokenizer.encode(self._check("answer", answer))

  def encode_answer_with_offsets(self, answer: str) -> tuple[list[int], Offsets]:
    """`encode_answer` plus each token's character span in `answer`."""
    return self.tokenizer.encode_with_offsets(self._check("answer", answer))


def make_chat_template(name: str, tokenizer: Tokenizer, num_image_tokens: int,
                       system: Optional[str] = None, template: Optional[str] = None
                       ) -> ChatTemplate:
  """The `TEMPLATES` template `name` over `tokenizer`; None for `system` / `template`
  means the template's default system message / prompt."""
  return ChatTemplate(tokenizer, num_image_tokens, system=system, template=template, name=name)
