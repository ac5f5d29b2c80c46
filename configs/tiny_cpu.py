r"""A tiny LLaVA-style model on a handful of examples: the CPU config of the trainer tests.

It runs every stage in seconds on a laptop CPU. The data paths are left empty on purpose
(the run tells you what is missing); point them at a JSONL + image folder
(`rlhfv_jax/data/readers.py` describes the format) and the Llama-2 tokenizer:

  python -m rlhfv_jax.main --config configs/tiny_cpu.py:ddpo --workdir /tmp/tiny_ddpo \
      --config.data.source_dir=/tmp/tiny_data --config.data.data_dir=/tmp/tiny_tfds \
      --config.data.tokenizer=../shared/data/llama2-tokenizer.model

Variants: `ddpo` (default), `fsdp` (DDPO on a 2 x 2 data x FSDP mesh; needs 4 devices,
e.g. XLA_FLAGS=--xla_force_host_platform_device_count=4), `sft` (on `jsonl_sft` data),
`precompute_ref` (reference cache; then `--config.data.use_ref_cache=True` in `ddpo`),
`eval` (`--config.init.checkpoint_dir=<a ddpo workdir>`), `sample` (answers into an
annotation store; `--config.sample.images=<a folder of images>`), `label` (an AI labeler
over a store's answers; `--config.label.store=<annotations.sqlite>`), `iterate` (2 rounds of
sample -> label -> export -> DDPO; `--config.sample.images=<a folder of images>`),
`export_hf` (a run's
checkpoint as a llava-hf directory; `--config.init.checkpoint_dir=<a ddpo workdir>`).
"""

from rlhfv_jax.stages import defaults

VARIANTS = ("ddpo", "fsdp", "sft", "precompute_ref", "eval", "sample", "label",
            "iterate", "export_hf")


def get_config(arg: str = ""):
  variant = defaults.parse_arg(arg, "configs/tiny_cpu.py", variant=VARIANTS).variant or "ddpo"
  config = defaults.base_config("ddpo", "tiny")
  config.seed = 1
  config.data.dataset = "jsonl_preference"
  config.data.split = "train"
  config.data.system_message = "Chat."  # short prompts keep the buckets small
  config.data.buckets = (48, 64)
  config.data.num_threads = 2
  config.train.update(global_batch_size=8, num_steps=6, log_every=1)
  config.optim.update(learning_rate=1e-3, warmup_steps=1)
  config.checkpoint.update(every_steps=2, max_to_keep=2)
  config.precompute.batch_size = 4
  config.eval.update(split="train", batch_size=4)

  if variant == "fsdp":
    config.train.parallelism = "fsdp"
    config.train.mesh.update(data=2, fsdp=2)
  elif variant == "sft":
    config.stage = "sft"
    config.data.dataset = "jsonl_sft"
    config.eval.objective = "sft"
  elif variant == "precompute_ref":
    config.stage = "precompute_ref"
  elif variant == "eval":
    config.stage = "eval"
    config.init.params = "checkpoint"
  elif variant == "sample":
    config.stage = "sample"
    config.sample.update(num_samples=2, max_new_tokens=8, batch_size=4, prompt_multiple=8)
  elif variant == "label":
    config.stage = "label"
    config.label.update(batch_size=4, prompt_multiple=8)
  elif variant == "iterate":
    config.stage = "iterate"
    config.iterate.rounds = 2
    config.sample.update(num_samples=2, max_new_tokens=8, batch_size=4, prompt_multiple=8)
    config.label.update(batch_size=4, prompt_multiple=8)
    config.train.update(global_batch_size=4, num_steps=2)
  elif variant == "export_hf":
    config.stage = "export_hf"
    config.init.params = "checkpoint"
  return config
