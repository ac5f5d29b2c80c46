r"""Hallucination benchmarks of a LLaVA-1.5 model: POPE, Object HalBench (CHAIR, rule-based)
and AMBER (discriminative), from local copies of the benchmark files.

  python -m rlhfv_jax.main --config configs/llava15_hallucination_eval.py \
      --workdir /runs/halbench_7b \
      --config.init.hf_checkpoint=/models/llava-1.5-7b-hf \
      --config.data.tokenizer=/models/llava-1.5-7b-hf/tokenizer.model \
      --config.hallucination.benchmarks=pope,objhal,amber \
      --config.hallucination.pope_dir=/data/POPE/output/coco \
      --config.hallucination.coco_images=/data/coco/val2014 \
      --config.hallucination.coco_annotations=/data/coco/annotations \
      --config.hallucination.amber_dir=/data/AMBER

A trained run instead of the HF checkpoint: `--config.init.params=checkpoint
--config.init.checkpoint_dir=/runs/llava15_7b_ddpo`. The argument after ":" pins a size
("7b" / "13b"); without one the architecture follows the checkpoint. Writes
<bench>_answers.jsonl, hallucination_results.json and hallucination_results.md; a killed
run resumes where it stopped.
"""

from rlhfv_jax.model.config import SIZES
from rlhfv_jax.train import defaults


def get_config(size: str = ""):
  if size not in ("",) + SIZES:
    raise ValueError(f"configs/llava15_hallucination_eval.py takes a size in {SIZES} or "
                     f"none, got {size!r}")
  return defaults.llava15_base("hallucination_eval", size)
