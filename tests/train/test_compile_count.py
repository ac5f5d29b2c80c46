"""The train step compiles once per bucket length over a run with several buckets, on the
pmap path and the FSDP mesh path (compilations counted from XLA's own compile events)."""

from __future__ import annotations

import json
import logging
import re

import pytest

import config_files
import main_run_data
from rlhfv_jax.stages import training

pytestmark = pytest.mark.slow  # subprocesses / stages end to end


def _write(directory, num_short=12, num_long=4):
  """Preference records whose answers fit the small bucket, and some that need the big one."""
  directory.mkdir(parents=True)
  lines = []
  for i in range(num_short + num_long):
    (directory / f"{i}.png").write_bytes(main_run_data._png(i))
    long = i >= num_short
    tail = " It stands on a wooden table next to a window with white curtains." * 3 if long else ""
    lines.append(json.dumps({"id": f"ex{i}", "image": f"{i}.png", "question": "What is it?",
                             "chosen": f"A red cup.{tail}", "rejected": f"A blue cup.{tail}"}))
  (directory / "train.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("variant", ["ddpo", "fsdp"])
def test_the_train_step_compiles_once_per_bucket(tmp_path, llama_tokenizer_path, caplog,
                                                 variant):
  _write(tmp_path / "source")
  config = config_files.load("tiny_cpu.py", variant)
  config.data.update(source_dir=str(tmp_path / "source"), data_dir=str(tmp_path / "tfds"),
                     tokenizer=str(llama_tokenizer_path), buckets=(48, 112))
  config.train.update(num_steps=8, log_every=100)
  config.checkpoint.every_steps = 100
  with caplog.at_level(logging.INFO):
    training.run(config, str(tmp_path / "run"))
  (line,) = [r.getMessage() for r in caplog.records if "the train step compiled" in
             r.getMessage()]
  compiles, shapes = map(int, re.findall(r"(\d+) (?:time|batch shape)", line))
  assert shapes == 2, line  # both buckets were used (the shuffle is seeded)
  assert compiles == shapes, line
  assert not [r for r in caplog.records if "retraces" in r.getMessage()]
