"""rlhfv_jax: RLHF-V (dense DPO on fine-grained correctional feedback) in JAX/Flax."""

__version__ = "0.1.0"
