r"""VQAv2 SFT of Gemma 3, the stage before DDPO that mitigates the vision-language mismatch
(paper Sec. 3.3); the recipe of configs/llava15_vqav2_sft.py (lr 2e-5, cosine, 3% warmup,
batch 128, 1 epoch, vision tower frozen, FSDP), for the Gemma 3 family.

  python -m rlhfv_jax.main --config configs/gemma3_vqav2_sft.py \
      --workdir /runs/gemma3_4b_vqav2_sft \
      --config.init.hf_checkpoint=/models/gemma-3-4b-it \
      --config.data.tokenizer=/models/gemma-3-4b-it \
      --config.data.source_dir=/data/vqav2 --config.data.data_dir=/data/tfds

The argument after ":" pins a size ("4b", "12b", "27b"); without one the architecture
follows the checkpoint. `:lora`: rank 16, alpha 16, lr 2e-4, the base in bf16. DDPO then
starts from this run: `--config.init.params=checkpoint
--config.init.checkpoint_dir=/runs/gemma3_4b_vqav2_sft`.
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.vqav2_sft_recipe("gemma3", "configs/gemma3_vqav2_sft.py", arg)
