r"""Hallucination benchmarks of a Gemma 3 model: POPE, Object HalBench (CHAIR) and AMBER,
from local copies of the benchmark files (configs/llava15_hallucination_eval.py lists
them); generation is the project's one sampler with Gemma 3's chat turns, stopping at
`<end_of_turn>`.

  python -m rlhfv_jax.main --config configs/gemma3_hallucination_eval.py \
      --workdir /runs/gemma3_12b_ddpo/hallucination \
      --config.init.params=checkpoint --config.init.checkpoint_dir=/runs/gemma3_12b_ddpo \
      --config.data.tokenizer=/models/gemma-3-12b-it \
      --config.hallucination.benchmarks=pope,objhal,amber \
      --config.hallucination.pope_dir=/data/POPE/output/coco \
      --config.hallucination.coco_images=/data/coco/val2014 \
      --config.hallucination.coco_annotations=/data/coco/annotations \
      --config.hallucination.amber_dir=/data/AMBER

The argument after ":" pins a size ("4b", "12b", "27b"); without one the architecture
follows the checkpoint (the HF config.json, or the run's). Params are replicated on each
process's devices; `--config.train.parallelism=fsdp` shards them (27B in bf16 is 54 GB).
"""

from rlhfv_jax.stages import recipes


def get_config(arg: str = ""):
  return recipes.hallucination_eval_recipe("gemma3", "configs/gemma3_hallucination_eval.py",
                                           arg)
