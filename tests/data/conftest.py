"""Small on-disk datasets in every supported raw format, with real PNG/JPEG bytes."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raw_files import GOOD_ROWS, image_bytes, rlhfv_row, rlhfv_table
from rlhfv_jax.data.tokenizer import SentencePieceTokenizer


@pytest.fixture(scope="session")
def tokenizer(sentencepiece_tokenizer_path):
  """A SentencePiece tokenizer with LLaVA-1.5's ids, trained in code: what the data tests
  need, on any clone."""
  return SentencePieceTokenizer(sentencepiece_tokenizer_path)


@pytest.fixture(scope="session")
def llama_tokenizer(llama_tokenizer_path):
  """The real Llama-2 tokenizer, for the tests about its ids (skips when it is absent)."""
  return SentencePieceTokenizer(llama_tokenizer_path)


@pytest.fixture
def make_rlhfv_dir(tmp_path):
  """Writes RLHF-V parquet files; returns the directory."""
  def make(rows: list[dict], text_type=pa.string(), name="train-00000-of-00001.parquet"):
    directory = tmp_path / "rlhfv"
    directory.mkdir(exist_ok=True)
    pq.write_table(rlhfv_table(rows, text_type), directory / name)
    return directory
  return make


@pytest.fixture
def good_rlhfv_dir(make_rlhfv_dir):
  return make_rlhfv_dir([rlhfv_row(100 + i, f, fmt="JPEG" if i % 2 else "PNG")
                         for i, f in enumerate(GOOD_ROWS)])


@pytest.fixture
def make_jsonl_dir(tmp_path):
  """Writes `<split>.jsonl` + images; `lines` are dicts (image given as bytes) or raw bytes."""
  def make(lines, split="train"):
    directory = tmp_path / "jsonl"
    (directory / "images").mkdir(parents=True, exist_ok=True)
    with (directory / f"{split}.jsonl").open("wb") as f:
      for n, line in enumerate(lines):
        if isinstance(line, dict):
          line = dict(line)
          if isinstance(line.get("image"), bytes):
            (directory / "images" / f"{split}{n}.png").write_bytes(line["image"])
            line["image"] = f"images/{split}{n}.png"
          line = json.dumps(line).encode()
        f.write(line + b"\n")
    return directory
  return make


@pytest.fixture
def make_vqav2_dir(tmp_path):
  """Writes the official VQAv2 layout for `split` from (image_id, question, answer) triples."""
  def make(items, split="val", missing_images=(), broken_images=()):
    directory = tmp_path / "vqav2"
    image_dir = directory / f"{split}2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for n, (image_id, question, answer) in enumerate(items):
      qid = image_id * 1000 + n
      questions.append({"image_id": image_id, "question": question, "question_id": qid})
      annotations.append({"question_id": qid, "image_id": image_id,
                          "multiple_choice_answer": answer, "answer_type": "other",
                          "question_type": "what",
                          "answers": [{"answer": answer, "answer_confidence": "yes",
                                       "answer_id": k} for k in range(1, 11)]})
      path = image_dir / f"COCO_{split}2014_{image_id:012d}.jpg"
      if image_id in broken_images:
        path.write_bytes(image_bytes(image_id, fmt="JPEG")[:200])
      elif image_id not in missing_images:
        path.write_bytes(image_bytes(image_id, fmt="JPEG"))
    (directory / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(
        json.dumps({"questions": questions}))
    (directory / f"v2_mscoco_{split}2014_annotations.json").write_text(
        json.dumps({"annotations": annotations}))
    return directory
  return make

