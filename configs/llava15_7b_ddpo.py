r"""DDPO on LLaVA-1.5-7B with the paper's hyper-parameters (RLHF-V, Yu et al. 2024).

beta 0.5, gamma 5 (weighted mean), lr 5e-7 with 10% warmup then cosine, batch 32,
7 epochs, no image cropping, vision tower frozen, FSDP over all devices.

1. Reference log-probs, once (cached next to the dataset):

  python -m rlhfv_jax.main --config configs/llava15_7b_ddpo.py:precompute_ref \
      --workdir /runs/llava15_7b_ref \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

2. DDPO (same overrides; resumes by itself from the newest checkpoint in --workdir):

  python -m rlhfv_jax.main --config configs/llava15_7b_ddpo.py \
      --workdir /runs/llava15_7b_ddpo \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/RLHF-V-Dataset --config.data.data_dir=/data/tfds

Variant `:rlhfv_release` uses the released RLHF-V scripts' weighting instead (gamma 1.1,
beta 0.1, weighted sum); `:eval` reports DDPO reward metrics of a trained run
(`--config.init.checkpoint_dir=/runs/llava15_7b_ddpo`). On a TPU pod or SLURM cluster use
launch/tpu_pod.py or launch/slurm_gpu.py, which add --distributed.
"""

from rlhfv_jax.train import defaults


def get_config(variant: str = ""):
  return defaults.llava15_ddpo("7b", variant)
