"""Helpers that write raw files of each supported format (used by the fixtures and tests)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image


def image_bytes(seed: int, size=(32, 24), fmt: str = "PNG") -> bytes:
  """A random RGB image of `size` (width, height) encoded as `fmt`."""
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  return buffer.getvalue()


GOOD_ROWS = [
    dict(question="What is on the table?",
         chosen="There is a blue mug on the wooden table.",
         rejected="There is a red cup on the wooden table."),
    dict(question="Describe the image.",
         chosen="A dog sleeps on a sofa next to a lamp.",
         rejected="A dog sleeps on a sofa next to a cat and a lamp."),
    dict(question="What color is the car?", chosen="The car is green.",
         rejected="The car is yellow."),
]


def rlhfv_table(rows: list[dict], text_type=pa.string()) -> pa.Table:
  image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  return pa.table({
      "image": pa.array([r["image"] for r in rows], image_type),
      "text": pa.array([r["text"] for r in rows], text_type),
      "idx": pa.array([r.get("idx") for r in rows], pa.int64()),
      "origin_dataset": pa.array(["coco"] * len(rows)),
      "origin_split": pa.array(["train"] * len(rows)),
      "ds_name": pa.array(["RLHF-V"] * len(rows)),
      "image_path": pa.array([f"img/{i}.jpg" for i in range(len(rows))]),
  })


def rlhfv_row(idx, fields, image=None, fmt="JPEG"):
  return {"idx": idx, "text": json.dumps(fields),
          "image": {"bytes": image if image is not None else image_bytes(idx, fmt=fmt),
                    "path": f"{idx}.jpg"}}


def rlaifv_table(rows: list[dict]) -> pa.Table:
  """The openbmb/RLAIF-V-Dataset parquet layout: top-level question/chosen/rejected."""
  image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  return pa.table({
      "ds_name": pa.array(["RLAIF-V"] * len(rows)),
      "image": pa.array([{"bytes": image_bytes(r["idx"]), "path": None} for r in rows],
                        image_type),
      "question": pa.array([r["question"] for r in rows]),
      "chosen": pa.array([r["chosen"] for r in rows]),
      "rejected": pa.array([r["rejected"] for r in rows]),
      "origin_dataset": pa.array(["OK-VQA"] * len(rows)),
      "origin_split": pa.array(["train"] * len(rows)),
      "idx": pa.array([r["idx"] for r in rows], pa.int64()),
      "image_path": pa.array([f"{r['idx']}.jpg" for r in rows]),
  })
