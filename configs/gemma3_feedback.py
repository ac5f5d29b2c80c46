r"""The feedback loop of a Gemma 3 model: sample answers to correct, label them with an AI
labeler, export a trained model to a Gemma 3 HF directory (configs/llava15_feedback.py
describes each step).

  python -m rlhfv_jax.main --config configs/gemma3_feedback.py:sample \
      --workdir /runs/gemma3_feedback_round1 \
      --config.init.hf_checkpoint=/models/gemma-3-4b-it \
      --config.data.tokenizer=/models/gemma-3-4b-it \
      --config.sample.images=/data/feedback_images
  python -m rlhfv_jax.main --config configs/gemma3_feedback.py:label \
      --workdir /runs/gemma3_label_round1 \
      --config.label.store=/runs/gemma3_feedback_round1/annotations.sqlite \
      --config.init.hf_checkpoint=/models/gemma-3-4b-it \
      --config.data.tokenizer=/models/gemma-3-4b-it
  python -m rlhfv_jax.main --config configs/gemma3_feedback.py:export_hf \
      --workdir /runs/gemma3_ddpo_round1_hf --config.init.checkpoint_dir=/runs/gemma3_ddpo_round1 \
      --config.data.tokenizer=/models/gemma-3-4b-it

Variants: `sample` (default), `label`, `export_hf`, each optionally with a size (",4b",
",12b", ",27b"); without one the architecture follows the checkpoint. export_hf writes a
directory `Gemma3ForConditionalGeneration.from_pretrained` and `Gemma3Processor` load.
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.feedback_recipe("gemma3", "configs/gemma3_feedback.py", arg)
