"""A run's workdir starts the next stage: the recipes' commands as a user runs them.

Subprocesses of `python -m rlhfv_jax.main` with the LLaVA-1.5 recipe configs, on a tiny
llava-hf checkpoint of a size no config names (CLIP 28/14, 3+3 layers, hidden 48, the
real 32k Llama vocabulary) and an RLHF-V-layout parquet, with no `--config.model.*`
override: every stage takes the architecture from where its params come from.

  precompute_ref -> ddpo -> :eval of that run -> hallucination_eval of that run (POPE)
  -> export_hf of that run -> transformers loads the export: its logits are the run's.
"""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rlhfv_jax import model as model_lib
from rlhfv_jax.stages import defaults, model_init

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
LLAVA_HF_VOCAB, IMAGE_TOKEN, PAD_TOKEN = 32064, 32000, 32001
ROWS = [("What is on the table?", "There is a blue mug on the wooden table.",
         "There is a red cup on the wooden table."),
        ("Describe the image.", "A dog sleeps on a sofa next to a lamp.",
         "A dog sleeps on a sofa next to a cat and a lamp."),
        ("What color is the car?", "The car is green.", "The car is yellow."),
        ("What is the man holding?", "He holds an umbrella.", "He holds a surfboard.")]


def _jpeg(seed: int, size=(40, 30)) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG")
  return buffer.getvalue()


def _hf_checkpoint(path: pathlib.Path) -> pathlib.Path:
  """A random llava-hf checkpoint of an unnamed size, as `save_pretrained` writes it."""
  torch = pytest.importorskip("torch")
  import transformers
  vision = transformers.CLIPVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
      image_size=28, patch_size=14, hidden_act="quick_gelu")
  text = transformers.LlamaConfig(
      vocab_size=LLAVA_HF_VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
      pad_token_id=PAD_TOKEN)
  config = transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
      image_seq_length=4, vision_feature_layer=-2, vision_feature_select_strategy="default")
  torch.manual_seed(0)
  model = transformers.LlavaForConditionalGeneration(config)
  with torch.no_grad():  # O(1) weights, so that logits are informative
    for _, param in model.named_parameters():
      param.normal_(0.0, 0.1)
  model.save_pretrained(path)
  return path


def _rlhfv_parquet(directory: pathlib.Path) -> pathlib.Path:
  """The openbmb/RLHF-V-Dataset layout: a JSON `text` column and an image struct."""
  directory.mkdir(parents=True)
  rows = [ROWS[i % len(ROWS)] for i in range(8)]
  image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  pq.write_table(pa.table({
      "image": pa.array([{"bytes": _jpeg(i), "path": f"{i}.jpg"} for i in range(len(rows))],
                        image_type),
      "text": pa.array([json.dumps({"question": q, "chosen": c, "rejected": r})
                        for q, c, r in rows]),
      "idx": pa.array(range(len(rows)), pa.int64()),
      "origin_dataset": pa.array(["coco"] * len(rows)),
      "origin_split": pa.array(["train"] * len(rows)),
      "ds_name": pa.array(["RLHF-V"] * len(rows)),
      "image_path": pa.array([f"img/{i}.jpg" for i in range(len(rows))]),
  }), directory / "train-00000-of-00001.parquet")
  return directory


def _pope(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """POPE's question files (one JSON object per line) and their COCO images."""
  coco, pope = root / "val2014", root / "pope"
  coco.mkdir(parents=True)
  pope.mkdir()
  for i in (1, 2):
    (coco / f"COCO_val2014_{i:012d}.jpg").write_bytes(_jpeg(100 + i))
  lines = [json.dumps({"question_id": n, "image": f"COCO_val2014_{1 + n % 2:012d}.jpg",
                       "text": f"Is there a {thing} in the image?",
                       "label": "yes" if n % 2 else "no"})
           for n, thing in enumerate(("dog", "car", "cup"))]
  (pope / "coco_pope_random.json").write_text("\n".join(lines) + "\n")
  return pope, coco


def _run_main(env: dict, config: str, workdir: pathlib.Path, *flags: str
              ) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "rlhfv_jax.main", "--config", config,
                         "--workdir", str(workdir), *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _main(env: dict, config: str, workdir: pathlib.Path, *flags: str) -> str:
  proc = _run_main(env, config, workdir, *flags)
  assert proc.returncode == 0, f"{config}:\n{proc.stderr[-4000:]}"
  assert (workdir / "config.json").is_file(), f"{config} wrote no {workdir}/config.json"
  return proc.stderr


def _architecture(workdir: pathlib.Path) -> dict:
  model = json.loads((workdir / "config.json").read_text())["model"]
  return {k: v for k, v in model.items() if k not in model_init.RUN_SETTINGS}


def test_each_stage_starts_from_the_previous_runs_workdir(tmp_path, user_env,
                                                          llama_tokenizer_path):
  torch = pytest.importorskip("torch")
  import transformers

  hf = _hf_checkpoint(tmp_path / "llava-tiny-hf")
  data = [f"--config.data.tokenizer={llama_tokenizer_path}",
          f"--config.data.source_dir={_rlhfv_parquet(tmp_path / 'RLHF-V-Dataset')}",
          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.num_threads=1"]
  ddpo_cfg = "configs/llava15_ddpo.py"

  # 1-2. The reference pass and DDPO from the llava-hf checkpoint.
  _main(user_env, f"{ddpo_cfg}:precompute_ref", tmp_path / "ref",
        f"--config.init.hf_checkpoint={hf}", "--config.precompute.batch_size=4", *data)
  ddpo = tmp_path / "ddpo"
  _main(user_env, ddpo_cfg, ddpo, f"--config.init.hf_checkpoint={hf}", *data,
        "--config.train.global_batch_size=4", "--config.train.num_steps=3",
        "--config.optim.learning_rate=1e-2", "--config.optim.warmup_fraction=0.0",
        "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=False")
  hf_architecture = model_lib.config_from_hf(hf).to_dict()
  assert _architecture(ddpo) == {k: v for k, v in hf_architecture.items()
                                 if k not in model_init.RUN_SETTINGS}

  # 3. The objective's metrics of that run.
  evaluation = tmp_path / "eval"
  log = _main(user_env, f"{ddpo_cfg}:eval", evaluation, f"--config.init.checkpoint_dir={ddpo}",
              "--config.eval.batch_size=4", *data)
  assert f"model config from {ddpo}/config.json" in log
  results = json.loads((evaluation / "eval_results.json").read_text())
  assert results["examples"] == 8 and np.isfinite(results["loss"])
  assert results["init"] == f"checkpoint:{ddpo}@-1"

  # 4. A hallucination benchmark of that run.
  pope_dir, coco = _pope(tmp_path / "bench")
  bench = tmp_path / "halbench"
  _main(user_env, "configs/llava15_hallucination_eval.py", bench,
        "--config.init.params=checkpoint", f"--config.init.checkpoint_dir={ddpo}",
        f"--config.data.tokenizer={llama_tokenizer_path}",
        "--config.hallucination.benchmarks=('pope',)", f"--config.hallucination.pope_dir={pope_dir}",
        "--config.hallucination.pope_splits=('random',)",
        f"--config.hallucination.coco_images={coco}", "--config.hallucination.batch_size=4",
        "--config.hallucination.max_new_tokens.pope=2")
  answers = (bench / "pope_answers.jsonl").read_text().splitlines()
  assert len(answers) == 3
  scores = json.loads((bench / "hallucination_results.json").read_text())["benchmarks"]
  assert list(scores) == ["pope"] and 0.0 <= scores["pope"]["f1"] <= 1.0

  # 5. The run as a llava-hf directory, with no size given.
  export = tmp_path / "export"
  _main(user_env, "configs/llava15_feedback.py:export_hf", export,
        f"--config.init.checkpoint_dir={ddpo}", f"--config.data.tokenizer={llama_tokenizer_path}")
  for workdir in (evaluation, bench, export):
    assert _architecture(workdir) == _architecture(ddpo), workdir

  # A pinned size that is not the run's: one line naming the parameters and the way out,
  # before anything runs.
  refused = _run_main(user_env, "configs/llava15_feedback.py:export_hf,7b", tmp_path / "no",
                      f"--config.init.checkpoint_dir={ddpo}",
                      f"--config.data.tokenizer={llama_tokenizer_path}")
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert "does not match config.model: " in refused.stderr
  assert "(32064, 48) vs config (32064, 4096)" in refused.stderr
  assert "Give no size" in refused.stderr and not (tmp_path / "no").exists()

  # transformers loads the export; its logits are the DDPO run's (f32 on both sides).
  run = defaults.base_config("export_hf")
  run.model = ml_collections.ConfigDict(json.loads((ddpo / "config.json").read_text())["model"])
  run.model.update(dtype="float32", remat=False)
  run.init.update(params="checkpoint", checkpoint_dir=str(ddpo))
  params = model_init.load_initial_params(run)
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(export / "hf").eval()
  processor = transformers.AutoProcessor.from_pretrained(export / "hf")
  messages = [{"role": "user", "content": [{"type": "image"},
                                           {"type": "text", "text": ROWS[0][0]}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  inputs = processor(text=text + ROWS[0][1], images=Image.open(io.BytesIO(_jpeg(0))),
                     return_tensors="pt")
  ids = inputs["input_ids"].numpy().astype(np.int32)
  pixels = inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)
  ours = model_lib.make_apply_fn(run.model)(params, ids, np.ones_like(ids, bool), pixels)
  with torch.no_grad():
    theirs = hf_model(**inputs).logits.numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=2e-4, rtol=2e-4)
  # The export holds the trained params, not the checkpoint DDPO started from.
  start = transformers.LlavaForConditionalGeneration.from_pretrained(hf).eval()
  with torch.no_grad():
    assert not np.allclose(start(**inputs).logits.numpy(), theirs, atol=1e-3)
