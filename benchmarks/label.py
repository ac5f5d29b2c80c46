"""Verifying claims (the `label` stage's yes/no verdicts): the project's one forward vs.
transformers' PyTorch LLaVA on the same weights, questions and images.

  python -m benchmarks.label [--claims 64] [--batch 16] [--repeats 3]
  python -m benchmarks.label --iteration_times /tmp/rlhfv_demo   # after configs/demo.py:iterate

The claims are what `rlhfv_jax.feedback.claims.RuleClaimExtractor` finds in a few
descriptions, asked as the label stage asks them (the question + " Please answer yes or
no."). One small LLaVA-proportioned model (random weights, `benchmarks.
sampler_vs_transformers.small_config`) exported through the project's HF export and
loaded by `LlavaForConditionalGeneration`. The project: `Sampler.choice_probabilities`
(generation's prefill without a KV cache, jitted, P(yes) / P(no) gathered on the device);
transformers: the full forward of each left-padded batch under `torch.no_grad`, softmax
of the last position, the same ids summed. Prints claims verified per second of both, the
ratio, and the largest difference of P(yes) between them (checked before timing). Needs
the Llama-2 tokenizer (RLHFV_LLAMA_TOKENIZER or ../shared/data) and torch
(requirements-dev.txt).

``--iteration_times DIR`` prints instead the share of an iteration's time each step takes
(sample, label, export, reference, ddpo, eval), summed over every iterate workdir under
DIR (each ``iterate_report.json``: a demo iterate study's seeds, or one `iterate` run),
as the rounds measured them (`rlhfv_jax.stages.iterate.time_shares`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import jax
import numpy as np

from benchmarks import common
from benchmarks.sampler_vs_transformers import best_of, images, small_sampler
from rlhfv_jax import model as model_lib
from rlhfv_jax import sampler as sampler_lib
from rlhfv_jax.data.tokenizer import choice_token_ids
from rlhfv_jax.feedback.claims import RuleClaimExtractor
from rlhfv_jax.model import hf_io
from rlhfv_jax.stages import iterate

ANSWERS = (
    "A man rides a bicycle past a parked car. Two dogs sit on the bench, and there is no cat.",
    "The kitchen has a microwave, an oven and a refrigerator. A cup stands on the table.",
    "Three people hold umbrellas at the bus stop. A traffic light and a fire hydrant are "
    "on the corner.",
)
SUFFIX = " Please answer yes or no."


def questions(count: int) -> list[str]:
  """`count` label-stage questions, cycling through the claims of `ANSWERS`."""
  extractor = RuleClaimExtractor()
  asked = [c.question + SUFFIX for text in ANSWERS for c in extractor.extract(text)]
  return [asked[i % len(asked)] for i in range(count)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--claims", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3,
                      help="each timing is the fastest of this many runs")
  parser.add_argument("--iteration_times", metavar="DIR",
                      help="print the steps' shares of the iterations under DIR instead")
  args = parser.parse_args()
  if args.iteration_times:
    print_iteration_times(pathlib.Path(args.iteration_times))
    return
  import torch
  import transformers

  cfg, params, template, sample = small_sampler()
  tok = template.tokenizer
  choices = {"yes": choice_token_ids(tok, ("yes", "Yes")),
             "no": choice_token_ids(tok, ("no", "No"))}
  pics, prompts = images(args.claims), questions(args.claims)

  def ours() -> np.ndarray:
    p = sample.choice_probabilities(params, pics, prompts, choices=choices,
                                    batch_size=args.batch)
    return p["yes"]

  with tempfile.TemporaryDirectory() as directory:
    hf_io.save_hf_llava(cfg, params, directory)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(
        directory, attn_implementation="sdpa").eval()
  rows = [template.encode_prompt(p) for p in prompts]
  longest = max(len(r) for r in rows)  # one padded length, as the sampler pads a call
  yes = torch.tensor(choices["yes"])

  def theirs() -> np.ndarray:
    out = []
    for first in range(0, args.claims, args.batch):
      ids, mask = sampler_lib.left_pad(rows[first:first + args.batch], tok.pad_id, longest)
      pixels = np.stack([sample.preprocessor(p) for p in pics[first:first + args.batch]])
      with torch.no_grad():
        logits = hf(input_ids=torch.from_numpy(ids).long(),
                    attention_mask=torch.from_numpy(mask).long(),
                    pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits
      out.append(torch.softmax(logits[:, -1].float(), -1)[:, yes].sum(-1).numpy())
    return np.concatenate(out)

  ours(), theirs()  # compile / warm up
  difference = float(np.max(np.abs(ours() - theirs())))
  print(f"CPU: {common.cpu_model()}, {jax.device_count()} JAX "
        f"device(s); model: CLIP {cfg.vision.num_layers}x{cfg.vision.hidden_size}, "
        f"{model_lib.num_image_tokens(cfg)} image tokens, Llama {cfg.text.num_layers}x"
        f"{cfg.text.hidden_size}; {args.claims} claims, batch {args.batch}")
  print(f"max |P(yes) project - P(yes) transformers| = {difference:.2e}")
  seconds_ours, _ = best_of(args.repeats, ours)
  seconds_theirs, _ = best_of(args.repeats, theirs)
  print(f"project      {args.claims / seconds_ours:8.1f} claims/s")
  print(f"transformers {args.claims / seconds_theirs:8.1f} claims/s")
  print(f"ratio project/transformers {seconds_theirs / seconds_ours:.2f}x")


def print_iteration_times(root: pathlib.Path) -> None:
  """Each step's share of the rounds' time in every iterate_report.json under `root`."""
  reports = sorted(root.rglob(f"{iterate.REPORT}.json"))
  if not reports:
    raise SystemExit(f"no {iterate.REPORT}.json under {root}: run an iteration first "
                     "(python -m rlhfv_jax.main --config configs/demo.py:iterate ...)")
  rows = [row for path in reports for row in json.loads(path.read_text())]
  print(f"CPU: {common.cpu_model()}; {len(rows)} rounds in {len(reports)} iteration(s) under "
        f"{root}")
  print(iterate.time_shares(rows))


if __name__ == "__main__":
  main()
