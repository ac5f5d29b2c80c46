r"""The embedded default: a miniature RLHF-V experiment, end to end on a CPU.

  python -m rlhfv_jax.main --config configs/demo.py --workdir /tmp/rlhfv_demo

Trains a tiny LLaVA-style model from scratch on a synthetic shape world (web captions,
a share of them mentioning objects that are not in the image), then per seed: VQA SFT,
sampled descriptions, an oracle that corrects only their hallucinated segments, DPO /
DDPO on that feedback, and CHAIR-style evaluation on held-out scenes. Writes the
ablation table (ablation.md / .csv / .png) to the workdir; stages and layout are in
`rlhfv_jax/demo/pipeline.py`.

Variants:
  ""       the full demo: a 1500-step base model, then 3 seeds (see the README for the
           measured time on 2 CPU cores).
  "quick"  a 60-step base model and 1 seed, a couple of minutes; the models are too
           short-trained to see much (the CI check of the whole pipeline:
           tests/demo/test_demo_quick.py):

  python -m rlhfv_jax.main --config configs/demo.py:quick --workdir /tmp/rlhfv_demo_quick

Any field can be overridden, e.g. `--config.demo.seeds=0,1 --config.ddpo.gamma=3`.
"""

import ml_collections

from rlhfv_jax.demo import pipeline

VARIANTS = ("", "quick")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  config = pipeline.default_config()
  if variant == "quick":
    demo = config.demo
    demo.seeds = (0,)
    demo.world.update(num_train_scenes=800, num_feedback_scenes=96, num_eval_scenes=48)
    demo.sft_web.update(steps=60)
    demo.sft_vqa.update(steps=10)
    # One generation batch shape for sampling and evaluation: one compilation.
    demo.sampling.batch_size = demo.eval.batch_size = 48
    config.train.log_every = 20
  return config
