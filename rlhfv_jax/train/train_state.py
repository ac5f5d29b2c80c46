"""The training state: everything a resumed run needs besides the data-iterator state."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Parameters, optimizer state and counters of a run (a pytree of arrays).

  Attributes:
    step: int32 scalar, number of optimizer steps taken so far (skipped ones included,
      so that the learning-rate schedule and the data stay in lock-step).
    params: the trainable model's parameters (frozen sub-trees included, unchanged).
    opt_state: the optax state.
    rng: raw uint32[2] PRNG key of the run; step s uses `fold_in(rng, s)`, so a resumed
      run draws exactly the random numbers an uninterrupted one would.
    nonfinite_total: int32 scalar, updates skipped because loss or gradients were not
      finite, over the whole run.
    nonfinite_consecutive: int32 scalar, such skips in a row up to now (0 after a good
      step).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_total: jax.Array
  nonfinite_consecutive: jax.Array

  @classmethod
  def create(cls, params: Any, optimizer: optax.GradientTransformation,
             rng: jax.Array) -> "TrainState":
    """A fresh state at step 0 for `params`."""
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jnp.asarray(rng, jnp.uint32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        nonfinite_consecutive=jnp.zeros((), jnp.int32),
    )
