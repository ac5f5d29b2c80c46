"""The `sample` stage on a tiny random LLaVA: answers into the annotation store, settings
recorded, resume draws the same answers, bad input named."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import config_files
from rlhfv_jax.annotate import store as store_lib
from rlhfv_jax.data.records import RecordError
from rlhfv_jax.evals import objhal
from rlhfv_jax.stages import config_validation
from rlhfv_jax.stages import sample as sample_stage


def _png(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


@pytest.fixture
def images(tmp_path):
  root = tmp_path / "images"
  (root / "sub").mkdir(parents=True)
  for name in ("a.png", "b.jpg", "sub/c.png"):
    (root / name).write_bytes(_png(len(name) + ord(name[0])))
  (root / "notes.txt").write_text("not an image")
  return root


def _config(images, tokenizer, **sample):
  config = config_files.load("tiny_cpu.py", "sample")
  config.data.tokenizer = str(tokenizer)
  config.sample.update(images=str(images), **sample)
  return config


def test_answers_go_to_the_store_with_their_settings(images, llama_tokenizer_path, tmp_path):
  config = _config(images, llama_tokenizer_path)
  config_validation.validate_config(config)
  result = sample_stage.run(config, str(tmp_path / "run"))
  assert result == {"questions": 6, "answered": 6, "added": 6,
                    "store": str(tmp_path / "run" / "annotations.sqlite")}
  store = store_lib.AnnotationStore(result["store"])
  assert store.image_root == str(images.resolve())
  items = store.items()
  assert [i.id for i in items] == ["a.png#0", "a.png#1", "b.jpg#0", "b.jpg#1",
                                   "sub/c.png#0", "sub/c.png#1"]
  # The paper's prompts in turn, one per image.
  assert [i.prompt for i in items[::2]] == list(objhal.PROMPTS[:3])
  assert items[0].meta == {"model": "random (seed 1)", "temperature": 0.7, "top_p": 0.9,
                           "seed": 0, "max_new_tokens": 8, "sample": 0,
                           "finished": items[0].meta["finished"]}
  assert all(i.answer for i in items)
  assert items[0].answer != items[1].answer  # two samples, not one answer twice
  # Running again adds nothing and answers nothing.
  again = sample_stage.run(config, str(tmp_path / "run"))
  assert (again["answered"], again["added"]) == (6, 0)


def test_a_killed_run_resumes_with_the_same_answers(images, llama_tokenizer_path, tmp_path):
  config = _config(images, llama_tokenizer_path)
  sample_stage.run(config, str(tmp_path / "straight"))
  straight = (tmp_path / "straight" / "sample_answers.jsonl").read_text().splitlines()
  killed = tmp_path / "killed"
  killed.mkdir()
  # A kill after the 3rd line, mid-way through writing the 4th.
  (killed / "sample_answers.jsonl").write_text("\n".join(straight[:3]) + "\n" + straight[3][:9])
  sample_stage.run(config, str(killed))
  resumed = (killed / "sample_answers.jsonl").read_text().splitlines()
  assert sorted(resumed) == sorted(straight)  # each answer once, and the same answers
  store = store_lib.AnnotationStore(killed / "annotations.sqlite")
  assert len(store.items()) == 6


def test_questions_file_and_bad_input(images, llama_tokenizer_path, tmp_path):
  questions = tmp_path / "q.jsonl"
  questions.write_text(json.dumps({"id": "q1", "image": "a.png", "question": "Any cats?"})
                       + "\n" + json.dumps({"image": "missing.png", "question": "Hm?"}) + "\n")
  config = _config(images, llama_tokenizer_path, questions=str(questions), num_samples=1,
                   temperature=0.0)
  with pytest.raises(RecordError, match="missing.png"):
    sample_stage.run(config, str(tmp_path / "raise"))
  config.sample.error_policy = "skip"
  result = sample_stage.run(config, str(tmp_path / "skip"))
  assert (result["questions"], result["answered"]) == (2, 1)
  skipped = (tmp_path / "skip" / "skipped_sample.jsonl").read_text()
  assert "missing.png" in skipped
  (item,) = store_lib.AnnotationStore(result["store"]).items()
  assert (item.id, item.prompt) == ("q1#0", "Any cats?")

  questions.write_text(json.dumps({"image": "../secret.png", "question": "Hm?"}) + "\n")
  with pytest.raises(store_lib.StoreError, match="relative to the image root"):
    sample_stage.questions(config.sample)
  questions.write_text('{"image": "a.png"}\n')
  with pytest.raises(ValueError, match="q.jsonl line 1: needs non-empty 'image' and 'question'"):
    sample_stage.questions(config.sample)


def test_validation_names_the_sampling_problems(images, llama_tokenizer_path):
  config = _config(images, llama_tokenizer_path, temperature=0.0, top_p=0.0, batch_size=6)
  config.sample.images = ""
  with pytest.raises(ValueError) as e:
    config_validation.validate_config(config)
  message = str(e.value)
  for expected in ("sample.images is empty", "greedy decoding gives the same answer",
                   "sample.top_p=0.0", "sample.batch_size=6 must be a multiple of the 4"):
    assert expected in message


@pytest.mark.slow
def test_two_processes_answer_their_shares_into_one_store(images, llama_tokenizer_path,
                                                          tmp_path, user_env):
  """`python -m rlhfv_jax.main` as 2 processes x 2 devices over loopback: each answers its
  own share into its own file, process 0 puts every answer into the store once, and the
  (greedy) answers are those of one process."""
  import pathlib
  import socket
  import subprocess
  import sys
  config_file = tmp_path / "sample_tiny.py"
  config_file.write_text(f"""
from rlhfv_jax.stages import defaults
def get_config():
  config = defaults.base_config("sample", "tiny")
  config.seed = 1
  config.data.update(tokenizer={str(llama_tokenizer_path)!r}, system_message="Chat.")
  config.sample.update(images={str(images)!r}, num_samples=1, temperature=0.0,
                       max_new_tokens=6, batch_size=2, prompt_multiple=8)
  return config
""")
  repo = pathlib.Path(__file__).parents[2]
  command = [sys.executable, "-m", "rlhfv_jax.main", f"--config={config_file}"]

  def env(devices):
    flags = [f for f in user_env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return dict(user_env, XLA_FLAGS=" ".join(
        flags + [f"--xla_force_host_platform_device_count={devices}"]))

  subprocess.run(command + [f"--workdir={tmp_path / 'one'}"], env=env(2), check=True,
                 capture_output=True, timeout=600, cwd=repo)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  procs = [subprocess.Popen(command + [f"--workdir={tmp_path / 'two'}",
                                       f"--coordinator_address={address}", "--num_processes=2",
                                       f"--process_id={i}"], env=env(2), cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for proc in procs:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
  shares = [json.loads(line)["id"] for k in range(2) for line in
            (tmp_path / "two" / f"sample_answers.process{k}-of-2.jsonl").read_text().splitlines()]
  assert sorted(shares) == ["a.png#0", "b.jpg#0", "sub/c.png#0"]  # each once, all of them
  one = {i.id: i.answer for i in store_lib.AnnotationStore(
      tmp_path / "one" / "annotations.sqlite").items()}
  two = {i.id: i.answer for i in store_lib.AnnotationStore(
      tmp_path / "two" / "annotations.sqlite").items()}
  assert two == one and len(two) == 3
