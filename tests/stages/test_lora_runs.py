"""LoRA runs through the stages on a tiny model: the checkpoints hold only the adapters
(and a pointer to the base), a killed run resumes exactly, the FSDP mesh with gradient
accumulation and the reference cache gives the pmap run's metrics, and a later stage
(export to llava-hf, read back by transformers) gets the trained model as plain weights."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import config_files
import main_run_data
from rlhfv_jax import model as model_lib
from rlhfv_jax.model import lora
from rlhfv_jax.stages import export_hf, model_init, runner
from rlhfv_jax.train import checkpointing
from rlhfv_jax.train import parallel as parallel_lib

LORA = dict(rank=4, alpha=8.0)


def _config(tmp_path, tokenizer, variant="ddpo"):
  data = tmp_path / "data"
  if not data.exists():
    main_run_data.write(data, "preference")
  config = config_files.load("tiny_cpu.py", variant)
  config.data.update(tokenizer=str(tokenizer), source_dir=str(data),
                     data_dir=str(tmp_path / "tfds"))
  config.model.lora.update(LORA)
  return config


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


KEYS = ("loss", "logps/policy_chosen", "logps/policy_rejected", "logps/ref_chosen",
        "logps/ref_rejected", "grad_norm")


@pytest.fixture(scope="module")
def pmap_run(tmp_path_factory, llama_tokenizer_path):
  tmp_path = tmp_path_factory.mktemp("lora")
  config = _config(tmp_path, llama_tokenizer_path)
  params = runner.run(config, str(tmp_path / "pmap"))
  return tmp_path, config, params


def test_checkpoints_hold_the_adapters_and_point_at_the_base(pmap_run):
  tmp_path, config, params = pmap_run
  ckpt = checkpointing.Checkpointer(tmp_path / "pmap" / "checkpoints", save_every_steps=1)
  stored = ckpt.param_shapes(ckpt.latest_step())
  ckpt.close()
  base = model_lib.param_shapes(lora.base_config(config.model))
  assert jax.tree.structure(stored) == jax.tree.structure(
      lora.init_adapters(base, config.model.lora, jax.random.PRNGKey(0)))
  pointer = json.loads((tmp_path / "pmap" / "checkpoints" / lora.BASE_POINTER).read_text())
  assert pointer["init"]["params"] == "random" and pointer["lora"]["rank"] == 4
  # The run trained: its first step is the reference exactly, later ones are not.
  metrics = _metrics(tmp_path / "pmap")
  assert metrics[0]["logps/policy_chosen"] == metrics[0]["logps/ref_chosen"]
  assert metrics[-1]["rewards/margin"] != 0.0
  # What it returns, and what a later stage loads from it, is the base with the adapters
  # folded in (plain weights of the architecture).
  later = config_files.load("tiny_cpu.py", "export_hf")
  later.data.tokenizer = config.data.tokenizer
  later.init.update(params="checkpoint", checkpoint_dir=str(tmp_path / "pmap"))
  model_init.check_checkpoint_shapes(later)
  loaded = model_init.load_initial_params(later)
  assert jax.tree.structure(loaded) == jax.tree.structure(base)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_killed_lora_run_resumes_exactly(pmap_run, monkeypatch):
  tmp_path, config, params = pmap_run
  real_step, calls = parallel_lib.PmapParallel.step, []

  def killed_at_step_3(self, state, batch, frozen_inputs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt("killed")
    return real_step(self, state, batch, frozen_inputs)

  monkeypatch.setattr(parallel_lib.PmapParallel, "step", killed_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    runner.run(config, str(tmp_path / "killed"))
  monkeypatch.setattr(parallel_lib.PmapParallel, "step", real_step)
  resumed = runner.run(config, str(tmp_path / "killed"))
  want = {m["step"]: m for m in _metrics(tmp_path / "pmap")}
  for m in _metrics(tmp_path / "killed")[-3:]:  # the steps after the resume
    assert {k: m[k] for k in KEYS} == {k: want[m["step"]][k] for k in KEYS}
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fsdp_with_accumulation_and_the_reference_cache_matches_pmap(pmap_run):
  """The base sharded on a 2 x 2 mesh, the small adapters replicated, 2 micro-batches,
  the reference's log-probs from the cache (the base's, computed by precompute_ref)."""
  tmp_path, config, params = pmap_run
  reference = _config(tmp_path, config.data.tokenizer, "precompute_ref")
  runner.run(reference, str(tmp_path / "reference"))
  fsdp = _config(tmp_path, config.data.tokenizer, "fsdp")
  fsdp.train.grad_accum_steps = 2
  fsdp.data.use_ref_cache = True
  fsdp_params = runner.run(fsdp, str(tmp_path / "fsdp"))
  for a, b in zip(_metrics(tmp_path / "fsdp"), _metrics(tmp_path / "pmap")):
    for key in KEYS:
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)
  for a, b in zip(jax.tree.leaves(fsdp_params), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_the_merged_export_has_the_unmerged_models_logits(pmap_run):
  torch = pytest.importorskip("torch")
  import transformers

  tmp_path, config, _ = pmap_run
  export = config_files.load("tiny_cpu.py", "export_hf")
  export.data.tokenizer = config.data.tokenizer
  export.init.update(params="checkpoint", checkpoint_dir=str(tmp_path / "pmap"))
  out = export_hf.run(export, str(tmp_path / "export"))
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  # The unmerged model: the base and the checkpoint's adapters through LoRADense.
  base = model_lib.init_params(lora.base_config(config.model), jax.random.PRNGKey(config.seed))
  ckpt = checkpointing.Checkpointer(tmp_path / "pmap" / "checkpoints", save_every_steps=1)
  shapes = ckpt.param_shapes(ckpt.latest_step())
  adapters = ckpt.restore_params(ckpt.latest_step(), checkpointing.abstract_with_shardings(
      shapes, jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                           shapes)))
  ckpt.close()
  cfg = config.model
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 30000, (1, 40))
  ids[0, 1:1 + model_lib.num_image_tokens(cfg)] = cfg.image_token_id
  pixels = rng.normal(size=(1, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(
      np.float32)
  ours = model_lib.make_apply_fn(cfg, skip_prompt_logits=False)(
      lora.merge(base, adapters), ids, np.ones_like(ids, bool), pixels)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(ids.shape),
                      pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits
  # float32; the adapters folded into W (export) against the two low-rank matmuls.
  np.testing.assert_allclose(theirs.numpy(), np.asarray(ours), atol=2e-4, rtol=2e-4)

  # The adapters alone, in the PEFT format, read back onto the base as a starting point
  # (init.peft_adapter): the trained model's weights again.
  adapter = tmp_path / "export" / "hf" / export_hf.PEFT_DIR
  assert (adapter / "adapter_config.json").is_file()
  start = config_files.load("tiny_cpu.py", "export_hf")
  start.init.update(params="random", peft_adapter=str(adapter))
  start.seed = config.seed
  folded = model_init.load_initial_params(start)
  want = model_init.load_initial_params(export)
  for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  start.init.peft_adapter = str(tmp_path / "nothing")
  with pytest.raises(ValueError, match="init.peft_adapter=.*holds no adapter_config.json"):
    runner.run(start, str(tmp_path / "never"))
