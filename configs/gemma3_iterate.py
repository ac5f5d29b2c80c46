r"""Iterated on-policy AI-feedback DDPO of a Gemma 3 model (configs/llava15_iterate.py
describes the loop), unattended, in one workdir:

  python -m rlhfv_jax.main --config configs/gemma3_iterate.py \
      --workdir /runs/gemma3_4b_iterate \
      --config.init.hf_checkpoint=/models/gemma-3-4b-it \
      --config.data.tokenizer=/models/gemma-3-4b-it \
      --config.sample.images=/data/feedback_images

Variants: a size (",4b" / ",12b" / ",27b") pins the architecture; without one it follows
the checkpoint.
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.iterate_recipe("gemma3", "configs/gemma3_iterate.py", arg)
