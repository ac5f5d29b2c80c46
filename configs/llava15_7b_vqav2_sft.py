r"""VQAv2 SFT of LLaVA-1.5-7B: the stage before DDPO that mitigates the vision-language
mismatch (paper Sec. 3.3). LLaVA-1.5 fine-tuning hyper-parameters: lr 2e-5, cosine,
3% warmup, batch 128, 1 epoch; vision tower frozen; FSDP over all devices.

  python -m rlhfv_jax.main --config configs/llava15_7b_vqav2_sft.py \
      --workdir /runs/llava15_7b_vqav2_sft \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/vqav2 --config.data.data_dir=/data/tfds

The DDPO stage then starts from this run:
`--config.init.params=checkpoint --config.init.checkpoint_dir=/runs/llava15_7b_vqav2_sft`.
"""

from rlhfv_jax.train import defaults


def get_config():
  return defaults.llava15_vqav2_sft("7b")
