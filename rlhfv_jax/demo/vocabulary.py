"""The demo's vocabulary: a small SentencePiece BPE model trained in code on the world's text.

Why not the LLaVA-1.5 (Llama-2) tokenizer? Three reasons, in order of weight:

1. The demo is the README's first command and must run on a fresh clone with nothing
   but the repository: the Llama-2 ``tokenizer.model`` lives outside it
   (``../shared/data``) and may not exist on a newcomer's machine.
2. Cost on 2 CPU cores: with 32001 ids the output projection and softmax of a 64-wide
   model are ~100x larger than the whole rest of it; the demo's text uses ~100 words.
3. Nothing is lost for what the demo measures: the closed-vocabulary world has no
   rare words, so a 300-piece vocabulary encodes every word as one or two pieces.

What is kept: the tokenizer is a real SentencePiece model (BPE, Llama-style
conventions: ``<unk>``=0, ``<s>``=1, ``</s>``=2, dummy prefix), written as a
``.model`` file and loaded through the project's own
`rlhfv_jax.data.tokenizer.SentencePieceTokenizer` — the same class, chat template,
image-token splicing and segment masks as a real run with ``config.data.tokenizer``
pointing at the Llama-2 file. Training is deterministic (one thread, no sampling of
the input), so the same corpus gives byte-identical model files.
"""

from __future__ import annotations

import io
import pathlib
from typing import Iterable, Sequence

import numpy as np
import sentencepiece

from rlhfv_jax.demo import corpora, world

DEFAULT_VOCAB_SIZE = 300


def training_text(system_message: str, seed: int = 0, num_scenes: int = 2000) -> list[str]:
  """Lines covering every word and sentence form the demo can produce or read.

  Args:
    system_message: the chat template's system message (its words must be encodable).
    seed: seed of the scenes and texts the lines are drawn from.
    num_scenes: scenes to draw captions and questions from; with 2000 every template,
      attribute and count occurs many times.

  Returns:
    The lines: captions with and without mismatches, VQA questions with answers,
    prompts, every closed-vocabulary word on its own, and the template's fixed text.
  """
  scenes = world.sample_scenes(seed, num_scenes, "tokenizer", max_objects=6)
  lines = [c.response for c in corpora.web_captions(scenes, seed, mismatch_rate=0.5)]
  lines += [f"{p.prompt} {p.response}" for p in corpora.vqa_pairs(scenes, seed, per_scene=2)]
  lines += list(corpora.DESCRIPTION_PROMPTS)
  words = (list(world.SHAPES) + [s + "s" for s in world.SHAPES] + list(world.COLORS)
           + list(world.SIZES) + list(world.CELL_NAMES) + list(world.NUMBER_WORDS))
  lines += [w.capitalize() for w in words] + words
  lines.append(f"{system_message} USER: \n ASSISTANT:")
  return lines


def train_sentencepiece(lines: Iterable[str], path: str | pathlib.Path,
                        vocab_size: int = DEFAULT_VOCAB_SIZE) -> pathlib.Path:
  """Trains a BPE SentencePiece model on `lines` and writes it to `path`.

  Args:
    lines: training sentences.
    path: output ``.model`` file (parent directories are created).
    vocab_size: target number of pieces; a smaller vocabulary is used when the text
      cannot fill it (the size is a limit, not a requirement).

  Returns:
    `path`.
  """
  lines = [line for line in lines if line.strip()]
  if not lines:
    raise ValueError("no text to train the demo tokenizer on")
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
      model_type="bpe", character_coverage=1.0, num_threads=1,
      shuffle_input_sentence=False, input_sentence_size=0, hard_vocab_limit=False,
      # Text is kept as written (newlines, spacing), like Llama-2's tokenizer.
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(model.getvalue())
  return path


def make_tokenizer_file(path: str | pathlib.Path, system_message: str,
                        vocab_size: int = DEFAULT_VOCAB_SIZE) -> pathlib.Path:
  """Writes the demo tokenizer for a chat template with `system_message` to `path`."""
  return train_sentencepiece(training_text(system_message), path, vocab_size)


def unknown_pieces(tokenizer_path: str | pathlib.Path, texts: Sequence[str]) -> list[str]:
  """Texts among `texts` that the tokenizer maps (partly) to ``<unk>``."""
  sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_path))
  ids = sp.encode(list(texts))
  return [t for t, row in zip(texts, ids) if np.any(np.asarray(row) == sp.unk_id())]
