r"""The feedback loop of a LLaVA-1.5 model: sample answers to correct, and export a trained
model to a llava-hf directory.

  # 1. The model's own answers (2 per image, the paper's description prompts) into a store:
  python -m rlhfv_jax.main --config configs/llava15_feedback.py:sample \
      --workdir /runs/feedback_round1 \
      --config.init.params=hf --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.sample.images=/data/feedback_images
  # 2a. Optional: an AI labeler proposes fine-grained corrections (annotator
  #     ai:<labeler>) and ranking pairs (RLAIF-V; the labeler is any checkpoint, here
  #     the policy itself: self-feedback):
  python -m rlhfv_jax.main --config configs/llava15_feedback.py:label \
      --workdir /runs/label_round1 \
      --config.label.store=/runs/feedback_round1/annotations.sqlite \
      --config.init.params=hf --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model
  # 2. Annotators correct them, AI proposals pre-filled where 2a ran (prints the URL):
  python -m rlhfv_jax.annotate --store /runs/feedback_round1/annotations.sqlite
  # 3. Export, then train with configs/llava15_ddpo.py on the export:
  python -m rlhfv_jax.annotate export --store /runs/feedback_round1/annotations.sqlite \
      --out /data/feedback_round1 [--ranking_pairs /runs/label_round1/ranking_pairs.jsonl]
  python -m rlhfv_jax.main --config configs/llava15_ddpo.py --workdir /runs/ddpo_round1 \
      --config.data.dataset=jsonl_preference \
      --config.data.source_dir=/data/feedback_round1/preference ...
  # 4. The trained model as a llava-hf directory, for serving elsewhere (the architecture
  #    is the run's, from its config.json):
  python -m rlhfv_jax.main --config configs/llava15_feedback.py:export_hf \
      --workdir /runs/ddpo_round1_hf --config.init.checkpoint_dir=/runs/ddpo_round1 \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model

Variants: `sample` (default), `label` (`rlhfv_jax/stages/label.py`) and `export_hf`,
each optionally with a size (",7b" / ",13b") that pins the architecture; without one it
follows the checkpoint (the llava-hf `config.json`, or the `config.json` a run writes
into its workdir). Sampling settings are the `sample` section's (temperature 0.7, top-p
0.9, 512 new tokens), the labeler's the `label` section's (RLAIF-V's "Please answer yes
or no.", P(yes) and P(no) over both casings, pairs with a score gap >= 1, <= 2 per
prompt); params are replicated on each process's devices
(`--config.train.parallelism=fsdp` shards them, for a model too large for one device).
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.feedback_recipe("llava15", "configs/llava15_feedback.py", arg)
