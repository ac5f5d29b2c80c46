r"""Dense Direct Preference Optimization (DDPO), the loss of RLHF-V (Yu et al., CVPR 2024).

Notation follows the paper. A response y is split into corrected segments y_c (tokens a
human labeler rewrote) and unchanged segments y_u. With per-token log-probs
lp_t = log p(y_t | x, y_<t):

  score(y) = (Σ_{t∈y_u} lp_t + γ Σ_{t∈y_c} lp_t) / N,   N = |y_u| + γ|y_c|      (paper, Eq. 4)
  score(y) =  Σ_{t∈y_u} lp_t + γ Σ_{t∈y_c} lp_t                                 (released scripts)

  h    = (score_π(y_w) − score_ref(y_w)) − (score_π(y_l) − score_ref(y_l))
  loss = −log σ(β h)                                                          (Eq. 3, DPO form)

y_w is the labeler-corrected ("chosen") answer, y_l the model's original ("rejected") one.
The reference model is the frozen instruction-tuned model; only the policy trains.

Everything here is a pure function of arrays, jit/pmap/grad-safe, and meant to be imported
into notebooks as well as used by the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rlhfv_jax import logps
from rlhfv_jax import segments
from rlhfv_jax.batch import PreferenceBatch, SFTBatch, TokenSequences
# The log-prob layer's public names, re-exported for notebooks (`ddpo.token_logps`).
from rlhfv_jax.logps import ApplyFn, token_logps

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


@dataclasses.dataclass(frozen=True)
class DDPOConfig:
  """Everything that defines the DDPO objective: the one source of its defaults.

  The defaults are the paper's (Eq. 3-4, Sec. 4.1). The run config's ``ddpo`` section
  has exactly these fields (`rlhfv_jax.stages.defaults` builds it from this class) and
  `from_config` reads it back, so a misspelt field is an error, not a silent default.

  Attributes:
    gamma: γ > 0, weight of corrected-segment tokens (paper 5; 1 is plain DPO).
    beta: β > 0, scale of the log-ratio margin (paper 0.5, released scripts 0.1).
    normalize: score = weighted mean (paper) or weighted sum (released scripts).
    loss_type: one of `LOSS_TYPES`.
    label_smoothing: ε in [0, 0.5), the preference-flip probability (sigmoid / robust).
    segment_mode: how y_c is found, one of `segments.MODES` ("paper" | "rlhfv").
    segment_min_match: shortest run of equal tokens kept as unchanged (`segments`).
    check_empty_responses: check for empty answers inside jit (see `sequence_logps`).
  """

  gamma: float = 5.0
  beta: float = 0.5
  normalize: bool = True
  loss_type: str = "sigmoid"
  label_smoothing: float = 0.0
  segment_mode: str = segments.DEFAULT_MODE
  segment_min_match: int = segments.DEFAULT_MIN_MATCH
  check_empty_responses: bool = True

  def __post_init__(self):
    problems = self.problems()
    if problems:
      raise ValueError("invalid DDPO config: " + "; ".join(problems))

  def problems(self) -> list[str]:
    """What makes the objective undefined, each naming the ``ddpo.`` field."""
    out = []
    if not self.gamma > 0:
      out.append(f"ddpo.gamma={self.gamma} must be > 0 (paper: 5; 1 is plain DPO)")
    if not self.beta > 0:
      out.append(f"ddpo.beta={self.beta} must be > 0: it scales the log-ratio margin "
                 "(paper: 0.5; released scripts: 0.1)")
    if self.loss_type not in LOSS_TYPES:
      out.append(f"ddpo.loss_type={self.loss_type!r}; expected one of {LOSS_TYPES}")
    if not 0.0 <= self.label_smoothing < 0.5:
      out.append(f"ddpo.label_smoothing={self.label_smoothing} must lie in [0, 0.5) "
                 "(a flip probability)")
    elif self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
      out.append(f"ddpo.label_smoothing is only defined for 'sigmoid' and 'robust', not "
                 f"{self.loss_type!r}")
    if self.segment_mode not in segments.MODES:
      out.append(f"ddpo.segment_mode={self.segment_mode!r}; expected one of {segments.MODES}")
    if self.segment_min_match < 1:
      out.append(f"ddpo.segment_min_match={self.segment_min_match} must be >= 1")
    return out

  @classmethod
  def from_config(cls, config: "DDPOConfig | Mapping[str, Any] | Any") -> "DDPOConfig":
    """From a DDPOConfig, a mapping or an ml_collections ConfigDict (missing fields take
    their defaults; unknown fields are refused, naming them)."""
    if isinstance(config, cls):
      return config
    values = dict(config.items()) if hasattr(config, "items") else dict(config)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"unknown ddpo field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The two named weightings. The paper's is the default everywhere.
PAPER_HPARAMS = DDPOConfig()
RLHFV_RELEASE_HPARAMS = DDPOConfig(gamma=1.1, beta=0.1, normalize=False, segment_mode="rlhfv")

Metrics = dict[str, jax.Array]


def _raise_if_empty(counts: np.ndarray) -> None:
  empty = np.flatnonzero(np.asarray(counts) == 0)
  if empty.size:
    raise ValueError(
        f"sequence_logps: example(s) at batch index {empty.tolist()} have an empty response "
        "(loss_mask has no True entry); a response must contain at least one scored token.")


def sequence_logps(token_logps: jax.Array, loss_mask: jax.Array, corrected_mask: jax.Array,
                   gamma: float, normalize: bool = True,
                   check_nonempty: bool = True) -> jax.Array:
  r"""DDPO sequence score: corrected tokens weighted γ, unchanged tokens weighted 1.

  normalize=True (the paper):  (Σ_u lp + γ Σ_c lp) / (|y_u| + γ|y_c|)
  normalize=False (released RLHF-V scripts):  Σ_u lp + γ Σ_c lp

  With γ = 1 and normalize=True this is length-normalised DPO's mean token log-prob.

  Args:
    token_logps: [B, T] per-token log-probs (from `token_logps`).
    loss_mask: [B, T] bool, tokens of the response y.
    corrected_mask: [B, T] bool, tokens in corrected segments y_c; must be ⊆ loss_mask.
    gamma: weight γ of corrected tokens.
    normalize: weighted mean (paper) or weighted sum (released scripts).
    check_nonempty: inside jit/pmap, also check for empty responses on the host (a
      per-shard callback). Costs a device-to-host copy of B ints per call and keeps
      the program out of JAX's persistent compilation cache; large runs whose loader
      already guarantees non-empty answers turn it off (`ddpo.check_empty_responses`).
      Concrete (eager) inputs are always checked.

  Returns:
    [B] scores (float32, or float64 for float64 inputs).

  Raises:
    ValueError: if a response is empty. Checked eagerly on concrete inputs, and inside
      jit/pmap through a host callback when `check_nonempty` (the step then fails with
      this message instead of training on NaN). Unchecked, an empty response scores NaN
      in both normalizations, which the train step's non-finite guard skips and counts.
  """
  loss_mask = loss_mask.astype(bool)
  corrected = jnp.logical_and(corrected_mask.astype(bool), loss_mask)
  dtype = logps.at_least_f32(token_logps.dtype)
  weights = loss_mask.astype(dtype) + (gamma - 1.0) * corrected.astype(dtype)
  weighted_sum = jnp.sum(weights * token_logps.astype(dtype), axis=-1)

  counts = jnp.sum(loss_mask, axis=-1)
  if not isinstance(counts, jax.core.Tracer):
    _raise_if_empty(counts)
  elif check_nonempty:
    # partitioned: each shard checks its own rows, no gather onto one device.
    jax.debug.callback(_raise_if_empty, counts, partitioned=True)

  score = weighted_sum / jnp.sum(weights, axis=-1) if normalize else weighted_sum
  return jnp.where(counts > 0, score, jnp.nan)


def preference_loss(policy_chosen: jax.Array, policy_rejected: jax.Array,
                    ref_chosen: jax.Array, ref_rejected: jax.Array, beta: float,
                    loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0) -> tuple[jax.Array, Metrics]:
  r"""Per-example preference loss on sequence scores.

  With h = (policy_chosen − ref_chosen) − (policy_rejected − ref_rejected) and ε the
  label smoothing (the probability that a preference label is flipped):

    sigmoid (DPO; with ε > 0, conservative DPO):  −(1−ε) log σ(βh) − ε log σ(−βh)
    robust  (rDPO, unbiased under label noise):   (−(1−ε) log σ(βh) + ε log σ(−βh)) / (1−2ε)
    ipo     (IPO, τ = β):                          (h − 1/(2β))²
    hinge   (SLiC):                                max(0, 1 − βh)

  Args:
    policy_chosen, policy_rejected, ref_chosen, ref_rejected: [B] sequence scores.
    beta: β > 0, the strength of the KL regularisation towards the reference.
    loss_type: one of LOSS_TYPES.
    label_smoothing: ε in [0, 0.5); only for "sigmoid" and "robust".

  Returns:
    (loss [B], metrics) where every metric is a [B] array: rewards/{chosen, rejected,
    margin, accuracy} with reward = β(score_π − score_ref), and logps/{policy_chosen,
    policy_rejected, ref_chosen, ref_rejected}.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type={loss_type!r}; expected one of {LOSS_TYPES}")
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 0.5)")
  if label_smoothing and loss_type not in ("sigmoid", "robust"):
    raise ValueError(f"label_smoothing is only defined for 'sigmoid' and 'robust', not {loss_type!r}")
  if beta <= 0:
    raise ValueError(f"beta={beta} must be > 0")

  chosen_logratio = policy_chosen - ref_chosen
  rejected_logratio = policy_rejected - ref_rejected
  h = chosen_logratio - rejected_logratio
  eps = label_smoothing

  if loss_type == "sigmoid":
    loss = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
  elif loss_type == "robust":
    loss = (-(1 - eps) * jax.nn.log_sigmoid(beta * h)
            + eps * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
  elif loss_type == "ipo":
    loss = (h - 1 / (2 * beta)) ** 2
  else:  # hinge
    loss = jax.nn.relu(1 - beta * h)

  chosen_reward = beta * jax.lax.stop_gradient(chosen_logratio)
  rejected_reward = beta * jax.lax.stop_gradient(rejected_logratio)
  metrics = {
      "rewards/chosen": chosen_reward,
      "rewards/rejected": rejected_reward,
      "rewards/margin": chosen_reward - rejected_reward,
      "rewards/accuracy": (chosen_reward > rejected_reward).astype(jnp.float32),
      "logps/policy_chosen": jax.lax.stop_gradient(policy_chosen),
      "logps/policy_rejected": jax.lax.stop_gradient(policy_rejected),
      "logps/ref_chosen": jax.lax.stop_gradient(ref_chosen),
      "logps/ref_rejected": jax.lax.stop_gradient(ref_rejected),
  }
  return loss, metrics


def make_ddpo_loss(apply_fn: ApplyFn, config: Any, *,
                   reduce: bool = True) -> Callable[..., tuple[jax.Array, Metrics]]:
  """Builds `ddpo_loss(policy_params, ref_params, batch) -> (loss, metrics)`.

  Chosen and rejected answers go through the model in ONE forward pass of 2B sequences
  that share each example's image (`sequences_per_image=2`, the image is encoded once).
  The reference model runs under `stop_gradient`, unless the batch carries cached
  reference log-probs (`batch.chosen.ref_token_logps`), in which case `ref_params` is
  not used and may be None.

  Args:
    apply_fn: the model call, see `ApplyFn`.
    config: a `DDPOConfig`, or a mapping / ConfigDict of its fields (the run config's
      ``ddpo`` section); missing fields take the paper's defaults.
    reduce: False returns the per-example loss [B] and metrics [B] instead (evaluation
      masks padded examples with them).

  Returns:
    A pure function; `loss` is the batch mean and every metric a batch-mean scalar.
  """
  cfg = DDPOConfig.from_config(config)
  gamma, beta, normalize = cfg.gamma, cfg.beta, cfg.normalize
  loss_type, label_smoothing = cfg.loss_type, cfg.label_smoothing
  check_nonempty = cfg.check_empty_responses

  def score(lps: jax.Array, tokens: TokenSequences) -> jax.Array:
    return sequence_logps(lps, tokens.loss_mask, tokens.corrected_mask, gamma, normalize,
                          check_nonempty)

  def ddpo_loss(policy_params: Any, ref_params: Any,
                batch: PreferenceBatch) -> tuple[jax.Array, Metrics]:
    if (batch.chosen.ref_token_logps is None) != (batch.rejected.ref_token_logps is None):
      raise ValueError("ddpo_loss: cached reference log-probs (ref_token_logps) must be given "
                       "for both answers or for neither; got them only for the "
                       f"{'chosen' if batch.rejected.ref_token_logps is None else 'rejected'}")
    if batch.chosen.ref_token_logps is not None:
      ref_lps = (batch.chosen.ref_token_logps, batch.rejected.ref_token_logps)
    elif ref_params is None:
      raise ValueError("ddpo_loss: ref_params is None and the batch carries no cached "
                       "reference log-probs (batch.chosen.ref_token_logps)")
    else:
      ref_lps = logps.answer_token_logps(apply_fn, ref_params, batch)
    policy_lps = logps.answer_token_logps(apply_fn, policy_params, batch)

    policy_chosen, policy_rejected = (score(lp, t) for lp, t in
                                      zip(policy_lps, (batch.chosen, batch.rejected)))
    ref_chosen, ref_rejected = (score(jax.lax.stop_gradient(lp), t) for lp, t in
                                zip(ref_lps, (batch.chosen, batch.rejected)))
    losses, metrics = preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                      beta, loss_type, label_smoothing)
    if not reduce:
      return losses, dict(metrics, loss=losses)
    loss = jnp.mean(losses)
    metrics = {k: jnp.mean(v) for k, v in metrics.items()}
    metrics["loss"] = loss
    return loss, metrics

  return ddpo_loss


def make_sft_loss(apply_fn: ApplyFn, *,
                  reduce: bool = True) -> Callable[..., tuple[jax.Array, Metrics]]:
  """Builds `sft_loss(params, batch: SFTBatch) -> (loss, metrics)`: answer-token NLL.

  The loss is the mean negative log-likelihood over all answer tokens of the batch
  (token-weighted, as in LLaVA's SFT). Under pmap each device averages its own shard.
  With `reduce=False` every value is per example [B] (each example's own token mean and
  `num_tokens`, so weighting by `num_tokens` gives back the batch's token mean).
  """

  def sft_loss(params: Any, batch: SFTBatch) -> tuple[jax.Array, Metrics]:
    tokens = batch.tokens
    lps, predicted = logps.sequence_token_logps(apply_fn, params, tokens, batch.pixel_values)
    mask = tokens.loss_mask.astype(jnp.float32)
    axes = None if reduce else -1  # the whole batch, or each example
    num_tokens = jnp.sum(mask, axis=axes)
    denominator = jnp.maximum(num_tokens, 1.0)
    loss = -jnp.sum(jnp.where(tokens.loss_mask, lps, 0.0), axis=axes) / denominator
    start = logps.scored_from(apply_fn)  # where the predictions begin
    correct = (predicted == tokens.targets[:, start:]).astype(jnp.float32)
    correct = jnp.pad(correct, ((0, 0), (start, 0)))
    metrics = {
        "loss": loss,
        "token_accuracy": jnp.sum(correct * mask, axis=axes) / denominator,
        "num_tokens": num_tokens,
    }
    return loss, metrics

  return sft_loss
