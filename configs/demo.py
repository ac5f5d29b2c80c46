r"""The embedded default: a miniature RLHF-V experiment, end to end on a CPU.

  python -m rlhfv_jax.main --config configs/demo.py --workdir /tmp/rlhfv_demo

Trains a tiny LLaVA-style model from scratch on a synthetic shape world (web captions
with mismatched objects, then VQA SFT), samples its descriptions, has an oracle
correct only the hallucinated segments, trains DPO / DDPO on that feedback, and writes
an ablation table (ablation.md / .csv / .png) over `demo.seeds` to the workdir. See
`rlhfv_jax/demo/pipeline.py` for the stages and the workdir layout.

Variants:
  ""       the full demo: 3 seeds, about 15 minutes on 2 CPU cores.
  "quick"  1 seed, smaller everything, a couple of minutes (CI: tests/demo/test_demo_quick.py):

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
    demo.world.update(num_train_scenes=1200, num_feedback_scenes=128, num_eval_scenes=64)
    demo.sft_web.update(steps=150)
    demo.sft_vqa.update(steps=30)
    demo.preference.update(num_epochs=2.0)
    config.train.log_every = 25
  return config
