"""Writes a few JSONL + PNG examples of each kind for subprocess runs of `rlhfv_jax.main`."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
from PIL import Image


_COLORS = ("red", "green", "blue", "yellow")
_THINGS = ("cup", "dog", "car", "lamp")


def _png(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


def write(directory: pathlib.Path, kind: str, num_examples: int = 24) -> pathlib.Path:
  """`<directory>/train.jsonl` + images of `num_examples` "preference" or "sft" records."""
  directory.mkdir(parents=True, exist_ok=True)
  lines = []
  for i in range(num_examples):
    (directory / f"{i}.png").write_bytes(_png(i))
    color, wrong, thing = _COLORS[i % 4], _COLORS[(i + 1) % 4], _THINGS[(i // 4) % 4]
    record = {"id": f"ex{i}", "image": f"{i}.png", "question": f"What is the {thing}?"}
    if kind == "preference":
      record.update(chosen=f"The {thing} is {color} and small.",
                    rejected=f"The {thing} is {wrong} and small.")
    else:
      record.update(answer=f"It is {color}.")
    lines.append(json.dumps(record))
  (directory / "train.jsonl").write_text("\n".join(lines) + "\n")
  return directory


def data_settings(root: pathlib.Path, tokenizer: pathlib.Path,
                  kind: str = "preference") -> dict[str, str]:
  """`config.data` paths pointing `configs/tiny_cpu.py` at fresh data under `root`."""
  source = write(root / f"source_{kind}", kind)
  return dict(source_dir=str(source), data_dir=str(root / "tfds"), tokenizer=str(tokenizer))


def overrides(root: pathlib.Path, tokenizer: pathlib.Path,
              kind: str = "preference") -> list[str]:
  """The same as `--config.data.*` flags."""
  return [f"--config.data.{k}={v}" for k, v in data_settings(root, tokenizer, kind).items()]
