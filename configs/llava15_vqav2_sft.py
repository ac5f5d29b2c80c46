r"""VQAv2 SFT of LLaVA-1.5: the stage before DDPO that mitigates the vision-language
mismatch (paper Sec. 3.3). LLaVA-1.5 fine-tuning hyper-parameters (the paper does not
list them): lr 2e-5, cosine, 3% warmup, batch 128, 1 epoch, no weight decay; vision
tower frozen; FSDP over all devices.

  python -m rlhfv_jax.main --config configs/llava15_vqav2_sft.py \
      --workdir /runs/llava15_7b_vqav2_sft \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/vqav2 --config.data.data_dir=/data/tfds

The argument after ":" pins a size ("7b" or "13b"); without one the architecture follows
the checkpoint. The DDPO stage then starts from this run:
`--config.init.params=checkpoint --config.init.checkpoint_dir=/runs/llava15_7b_vqav2_sft`.

`:lora` (with or without a size): LoRA on one accelerator, LLaVA-1.5's own LoRA recipe
(scripts/v1_5/finetune_lora.sh: rank 128, alpha 256 on every linear layer of the
language model, learning rate 2e-4), the base in bfloat16; its projector learning rate
(2e-5) is not separate here, so the projector stays as the checkpoint has it
(`--config.model.lora.trained=multi_modal_projector` trains it in full at 2e-4). A DDPO
run from it loads base + adapters as plain weights.

  python -m rlhfv_jax.main --config configs/llava15_vqav2_sft.py:lora \
      --workdir /runs/llava15_7b_vqav2_sft_lora \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.data.source_dir=/data/vqav2 --config.data.data_dir=/data/tfds
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.vqav2_sft_recipe("llava15", "configs/llava15_vqav2_sft.py", arg)
