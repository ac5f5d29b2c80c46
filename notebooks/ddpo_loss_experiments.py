# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DDPO, the loss of RLHF-V: what γ, β and the normalization do
#
# RLHF-V (Yu et al., CVPR 2024) trains a multimodal LLM on *fine-grained corrections*: a
# labeler rewrites only the hallucinated segments of the model's answer y_l, giving y_w.
# Dense DPO (DDPO) scores an answer by its token log-probs with the corrected tokens y_c
# weighted γ:
#
# $$\log\pi(y|x) = \frac{1}{N}\Big[\sum_{t\in y_u}\log p_t + \gamma\sum_{t\in y_c}\log p_t\Big],
# \qquad N = |y_u| + \gamma|y_c|$$
#
# (the released scripts drop the $1/N$: a weighted *sum*), and trains with the DPO loss
# $-\log\sigma(\beta h)$ on the margin
# $h = [\log\pi(y_w) - \log\pi_{ref}(y_w)] - [\log\pi(y_l) - \log\pi_{ref}(y_l)]$.
#
# This notebook uses only the project's public API: `rlhfv_jax.segments` (which tokens
# are y_c), `rlhfv_jax.ddpo` (the scores and losses), the data layer's tokenizer and chat
# template, and the model. It runs on a laptop CPU in about a minute. Open it with
# `pip install -r requirements-dev.txt` and `jupyter lab notebooks/`.

# %%
import html
import os
import pathlib
import sys
import tempfile
import time

# The notebook lives in <repository>/notebooks; the package is used from the checkout.
if (pathlib.Path.cwd().parent / "rlhfv_jax").is_dir():
  sys.path.insert(0, str(pathlib.Path.cwd().parent))

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import HTML, display

from rlhfv_jax import ddpo, logps, segments
from rlhfv_jax import model as model_lib
from rlhfv_jax.data import loader
from rlhfv_jax.data.images import ImagePreprocessor
from rlhfv_jax.data.records import PreferenceRecord
from rlhfv_jax.data.tokenizer import ChatTemplate, SentencePieceTokenizer

# Figures are also written to $NOTEBOOK_FIGURES when it is set (docs/method.md's come from there).
FIGURES = os.environ.get("NOTEBOOK_FIGURES")


def save(figure, name):
  if FIGURES:
    pathlib.Path(FIGURES).mkdir(parents=True, exist_ok=True)
    figure.savefig(pathlib.Path(FIGURES) / f"{name}.png", dpi=110, bbox_inches="tight")


# The real LLaVA-1.5 / Vicuna tokenizer when it is around, else the demo's own.
candidates = [os.environ.get("RLHFV_LLAMA_TOKENIZER", ""),
              "../shared/data/llama2-tokenizer.model", "../../shared/data/llama2-tokenizer.model"]
found = next((p for p in candidates if p and pathlib.Path(p).is_file()), None)
if found is None:
  from rlhfv_jax.demo import vocabulary
  found = vocabulary.make_tokenizer_file(
      pathlib.Path(tempfile.mkdtemp()) / "demo.model", "A chat about an image.")
tokenizer = SentencePieceTokenizer(found)
print("tokenizer:", found, f"({tokenizer.vocab_size} pieces)")

# %% [markdown]
# ## 1. One correction, and its corrected segments y_c
#
# An answer y_l with three hallucinations (a colour, an object, a whole invented sentence)
# and its correction y_w. `segments.correction_masks` diffs the two *token* lists. In the
# paper's mode every changed token is in y_c (a deleted sentence is corrected on the
# rejected side); the released scripts' mode ("rlhfv") keeps only replacements, so pure
# deletions and insertions weigh like unchanged text.

# %%
rejected = ("The image shows a kitchen with a wooden table. On the table there are two red "
            "apples and a glass of milk. A cat is sleeping on the chair next to the window.")
chosen = ("The image shows a kitchen with a wooden table. On the table there are two green "
          "apples and a cup of coffee.")
template = ChatTemplate(tokenizer, num_image_tokens=16)
rejected_ids, chosen_ids = template.encode_answer(rejected), template.encode_answer(chosen)


def highlighted(ids, mask, color):
  pieces = []
  for token, corrected in zip(ids, mask):
    text = html.escape(tokenizer.decode([token]) or "·")
    style = f"background:{color};border-radius:3px" if corrected else ""
    pieces.append(f"<span style='{style}'>{text}</span>")
  return " ".join(pieces)


rows = []
for mode in segments.MODES:
  rejected_mask, chosen_mask = segments.correction_masks(rejected_ids, chosen_ids, mode=mode)
  rows.append(f"<p><b>{mode}</b>: {rejected_mask.sum()} of {len(rejected_ids)} rejected and "
              f"{chosen_mask.sum()} of {len(chosen_ids)} chosen tokens in y_c</p>"
              f"<p>y_l: {highlighted(rejected_ids, rejected_mask, '#f8c9c9')}</p>"
              f"<p>y_w: {highlighted(chosen_ids, chosen_mask, '#c6efce')}</p>")
display(HTML("".join(rows)))
paper_rejected_mask, paper_chosen_mask = segments.correction_masks(rejected_ids, chosen_ids)

# %% [markdown]
# ## 2. How much each token's log-prob counts
#
# The gradient of the sequence score with respect to each token's log-prob is the weight
# that token gets in the update. Plain DPO (γ = 1, mean) weighs every token 1/|y|. The
# weighted mean gives corrected tokens γ/N and unchanged ones 1/N: as γ grows, the
# corrected tokens take most of the weight, and the rest still counts. The weighted sum
# gives 1 and γ, independent of length.

# %%
def score_weights(mask, corrected, gamma, normalize):
  lps = jnp.zeros((1, len(mask)))
  grad = jax.grad(lambda lp: ddpo.sequence_logps(lp, mask[None], corrected[None], gamma,
                                                 normalize)[0])(lps)
  return np.asarray(grad[0])


mask = np.ones(len(rejected_ids), bool)
settings = [("DPO (γ=1, mean)", 1.0, True), ("DDPO mean γ=2", 2.0, True),
            ("DDPO mean γ=5 (paper)", 5.0, True), ("DDPO mean γ=10", 10.0, True)]
figure, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6))
for label, gamma, normalize in settings:
  left.step(range(len(mask)), score_weights(mask, paper_rejected_mask, gamma, normalize),
            where="mid", label=label)
for label, gamma in (("DDPO sum γ=1.1 (released)", 1.1), ("DDPO sum γ=5", 5.0)):
  right.step(range(len(mask)), score_weights(mask, paper_rejected_mask, gamma, False),
             where="mid", label=label)
for axis, title in ((left, "weighted mean"), (right, "weighted sum")):
  for t in np.flatnonzero(paper_rejected_mask):
    axis.axvspan(t - 0.5, t + 0.5, color="#f8c9c9", lw=0)
  axis.set(title=f"∂ score(y_l) / ∂ log p_t, {title} (shaded: y_c)", xlabel="token of y_l")
  axis.legend(fontsize=8)
save(figure, "gradient_weights")
plt.show()

# %% [markdown]
# ## 3. Length bias
#
# Take answers of every length whose tokens are all equally good (log p = −1 each, 10 %
# of them corrected). The weighted sum scores a longer answer lower in proportion to its
# length; the weighted mean scores them all the same. The same holds for the implicit
# reward: if training moves every token's log-prob by δ = 0.05 (up in y_w, down in y_l),
# the margin h under the sum grows with the answers' length, so long pairs dominate the
# batch and β has to be chosen per length (the released scripts use β = 0.1, the paper's
# mean uses β = 0.5).

# %%
lengths = np.arange(10, 401, 10)
delta, gamma = 0.05, 5.0
# One row per length: the first n tokens are the answer, a tenth of them corrected.
positions = np.arange(lengths.max())
mask = positions[None, :] < lengths[:, None]
corrected = positions[None, :] < (lengths // 10)[:, None]
lp = -np.ones(mask.shape, np.float32)
figure, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6))
for normalize, label in ((True, "weighted mean"), (False, "weighted sum")):
  score = lambda x: ddpo.sequence_logps(x, mask, corrected, gamma, normalize)
  scores = score(lp)
  margins = (score(lp + delta) - scores) - (score(lp - delta) - scores)
  left.plot(lengths, scores, label=label)
  right.plot(lengths, margins, label=label)
left.set(title="score of an answer of equal per-token quality", xlabel="answer length")
right.set(title=f"margin h after a ±{delta} per-token change", xlabel="answer length")
left.legend(), right.legend()
save(figure, "length_bias")
plt.show()

# %% [markdown]
# ## 4. The loss and its gradient as functions of the margin
#
# `ddpo.preference_loss` takes the four sequence scores; here the margin h is swept
# directly. The sigmoid loss (DPO) saturates: pairs already ranked right stop
# contributing. Label smoothing ε (conservative DPO) keeps pushing back on confident
# pairs, the robust loss (rDPO) corrects for flipped labels (and goes below zero for
# confident pairs), IPO pulls h to 1/(2β) from both sides (its square leaves the axes
# quickly), and the hinge loss stops at h = 1/β.

# %%
margins = jnp.linspace(-15, 15, 301)
zeros = jnp.zeros_like(margins)
figure, axes = plt.subplots(2, 2, figsize=(12, 6.5), sharex=True)
for column, beta in enumerate((0.1, 0.5)):
  for loss_type, smoothing in (("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.1),
                               ("ipo", 0.0), ("hinge", 0.0)):
    def loss_at(h, beta=beta, loss_type=loss_type, smoothing=smoothing):
      loss, _ = ddpo.preference_loss(h, 0.0, 0.0, 0.0, beta, loss_type, smoothing)
      return loss
    values = jax.vmap(loss_at)(margins)
    grads = jax.vmap(jax.grad(loss_at))(margins)
    label = loss_type + (f", ε={smoothing}" if smoothing else "")
    axes[0, column].plot(margins, values, label=label)
    axes[1, column].plot(margins, jnp.abs(grads), label=label)
  axes[0, column].set(title=f"loss, β={beta}", ylim=(-1, 4))
  axes[1, column].set(title=f"|∂loss/∂h|, β={beta}", xlabel="margin h", ylim=(0, 0.6))
  axes[0, column].legend(fontsize=8)
save(figure, "losses")
plt.show()

# %% [markdown]
# ## 5. A tiny random LLaVA: where the gradient goes
#
# A real `PreferenceBatch` from two records through the data pipeline (chat template,
# expanded image tokens, segment masks), scored by a tiny random LLaVA. The gradient of
# the DDPO loss with respect to the per-token log-probs is zero outside the answers (the
# prompt and the image tokens), and inside an answer a corrected token gets γ times the
# gradient of an unchanged one. Then the full `ddpo_loss` is differentiated with respect
# to the parameters and the jitted step is timed.

# %%
cfg = model_lib.llava_config("tiny")
cfg.image_token_id = tokenizer.image_token_id
cfg.text.vocab_size = max(cfg.text.vocab_size, tokenizer.image_token_id + 1)
template = ChatTemplate(tokenizer, model_lib.num_image_tokens(cfg), system="A chat.")
preprocess = ImagePreprocessor(cfg.vision.image_size)
policy = model_lib.init_params(cfg, jax.random.key(0))
reference = jax.tree.map(jnp.copy, policy)


def png(seed):
  import io
  from PIL import Image
  buffer = io.BytesIO()
  pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


records = [PreferenceRecord(f"ex{k}", png(k), "Describe the image.", chosen, rejected)
           for k in range(2)]
batch, _ = next(loader.ordered_batches(records, template, preprocess, indices=[0, 1],
                                       batch_size=2, buckets=(160, 256)))
apply_fn = model_lib.make_apply_fn(cfg)
config = ddpo.PAPER_HPARAMS


def loss_from_token_logps(lps, batch=batch, config=config):
  """The DDPO loss as a function of the policy's per-token log-probs (reference fixed)."""
  chosen_lp, rejected_lp = lps
  score = lambda lp, t: ddpo.sequence_logps(lp, t.loss_mask, t.corrected_mask, config.gamma,
                                            config.normalize)
  loss, _ = ddpo.preference_loss(score(chosen_lp, batch.chosen), score(rejected_lp,
                                                                        batch.rejected),
                                 score(ref_lps[0], batch.chosen),
                                 score(ref_lps[1], batch.rejected), config.beta)
  return loss.mean()


answer_logps = jax.jit(lambda params, batch: logps.answer_token_logps(apply_fn, params, batch))
ref_lps = answer_logps(reference, batch)
grads = jax.grad(loss_from_token_logps)(answer_logps(policy, batch))
for name, g, tokens in (("chosen", grads[0], batch.chosen), ("rejected", grads[1],
                                                              batch.rejected)):
  g = np.asarray(g[0])
  outside = np.abs(g[~np.asarray(tokens.loss_mask[0])]).max()
  corrected = g[np.asarray(tokens.corrected_mask[0])]
  unchanged = g[np.asarray(tokens.loss_mask[0] & ~tokens.corrected_mask[0])]
  print(f"{name}: |grad| outside the answer {outside:.1e}; corrected / unchanged token "
        f"gradient = {corrected.mean() / unchanged.mean():.2f} (γ = {config.gamma})")
  assert outside == 0 and np.allclose(corrected / unchanged.mean(), config.gamma, rtol=1e-4)

ddpo_loss = ddpo.make_ddpo_loss(apply_fn, config)
step = jax.jit(jax.value_and_grad(ddpo_loss, has_aux=True))
(loss, metrics), param_grads = step(policy, reference, batch)
print(f"loss {float(loss):.4f} (log 2 = {np.log(2):.4f}: policy == reference)")
jax.block_until_ready(step(policy, reference, batch))
start = time.perf_counter()
for _ in range(5):
  jax.block_until_ready(step(policy, reference, batch))
print(f"jitted loss + grad: {(time.perf_counter() - start) / 5 * 1000:.1f} ms per batch of "
      f"{batch.chosen.input_ids.shape[0]} pairs x {batch.chosen.input_ids.shape[1]} tokens")
print("gradient norm:", float(optax.global_norm(param_grads)))

# %% [markdown]
# ## 6. A short γ sweep: where the probability mass moves
#
# Train the tiny model for a few steps on a handful of synthetic pairs, for several γ,
# and measure how the policy moved away from the reference, separately on corrected and
# unchanged tokens. What to look for (and what this run shows on a laptop): with γ = 1
# (DPO) the update spreads over every token of both answers, the shared text moving
# almost as much as the corrections; as γ grows the corrected tokens keep moving (the
# hallucinated words of y_l lose probability, their corrections in y_w gain it) while the
# unchanged text moves less and less. A random tiny model on four pairs is a toy: the
# numbers are not the paper's, the direction is the point. One compilation serves every
# γ (it is a traced argument here).

# %%
pairs = [
    ("A red car is parked next to a tree.", "A blue car is parked next to a tree."),
    ("Two dogs play on the grass near a bench.", "Two cats play on the grass near a bench."),
    ("A man holds an umbrella and a phone.", "A man holds an umbrella."),
    ("The plate has three apples and a knife.", "The plate has two apples and a knife."),
]
sweep_records = [PreferenceRecord(f"p{k}", png(10 + k), "Describe the image.", good, bad)
                 for k, (bad, good) in enumerate(pairs)]
sweep_batch, _ = next(loader.ordered_batches(sweep_records, template, preprocess,
                                             indices=range(4), batch_size=4,
                                             buckets=(96, 160)))
sweep_ref = answer_logps(reference, sweep_batch)
optimizer = optax.adam(1e-3)


def sweep_loss(params, gamma):
  lps = logps.answer_token_logps(apply_fn, params, sweep_batch)
  score = lambda lp, t: ddpo.sequence_logps(lp, t.loss_mask, t.corrected_mask, gamma, True,
                                            check_nonempty=False)
  loss, _ = ddpo.preference_loss(
      score(lps[0], sweep_batch.chosen), score(lps[1], sweep_batch.rejected),
      score(sweep_ref[0], sweep_batch.chosen), score(sweep_ref[1], sweep_batch.rejected), 0.5)
  return loss.mean()


@jax.jit
def train(gamma, num_steps=10):
  def one_step(state, _):
    params, opt_state = state
    grads = jax.grad(sweep_loss)(params, gamma)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None
  (params, _), _ = jax.lax.scan(one_step, (policy, optimizer.init(policy)), None, num_steps)
  return logps.answer_token_logps(apply_fn, params, sweep_batch)


def mean_shift(moved, ref, tokens, corrected):
  where = tokens.loss_mask & (tokens.corrected_mask if corrected else ~tokens.corrected_mask)
  return float(jnp.sum(jnp.where(where, moved - ref, 0.0)) / jnp.sum(where))


gammas = (1.0, 2.0, 5.0, 10.0)
shifts = {key: [] for key in ("chosen, corrected", "chosen, unchanged", "rejected, corrected",
                              "rejected, unchanged")}
for gamma in gammas:
  moved = train(jnp.float32(gamma))
  for key in shifts:
    side, kind = key.split(", ")
    k = 0 if side == "chosen" else 1
    tokens = sweep_batch.chosen if side == "chosen" else sweep_batch.rejected
    shifts[key].append(mean_shift(moved[k], sweep_ref[k], tokens, kind == "corrected"))
figure, axis = plt.subplots(figsize=(7, 3.8))
for key, values in shifts.items():
  axis.plot(gammas, values, marker="o", label=key)
axis.axhline(0, color="gray", lw=0.5)
axis.set(xscale="log", xticks=gammas, xticklabels=[str(g) for g in gammas], xlabel="γ",
         ylabel="mean log p(policy) − log p(reference)",
         title="after 10 steps on 4 pairs (tiny random LLaVA, weighted mean, β=0.5)")
axis.legend(fontsize=8)
save(figure, "gamma_sweep")
plt.show()
