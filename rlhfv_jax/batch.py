"""Batch types: the one place the schema between the data pipeline and the loss lives.

Token layout (all arrays right-padded to a fixed length T):

  position t:        0     1     2    ...  T-1
  input_ids[t]:      <s>   USER  ...  <image>*n ... ASSISTANT  y_0 y_1 ... </s>  pad ...
  targets[t]:        input_ids[t + 1]  (the token that logits[:, t] predicts; pad at T-1)
  loss_mask[t]:      True iff targets[t] is a response token (y_* or the closing </s>)
  corrected_mask[t]: True iff targets[t] lies in a corrected segment y_c (subset of loss_mask)
  attention_mask[t]: True iff input_ids[t] is a real (non-pad) token

So `logits[:, t]` from the model lines up with `targets[:, t]`, and every mask that
concerns the loss is aligned with `targets`. Images: `pixel_values[b]` is the image of
example b, NHWC float32 after the image processor (resize + normalize).

Shared prompt prefix (`PreferenceBatch.shared_prefix`): a pair's prompt is the same for
both answers, so it can run once. Then both answers of pair b live in ONE row,

  input_ids:     <s> ... ASSISTANT | y_w ... </s> | y_l ... </s> | pad ...
  chosen.attention_mask:    1 ... 1 | 1 ...... 1 | 0 ...... 0 | 0 ...
  rejected.attention_mask:  1 ... 1 | 0 ...... 0 | 1 ...... 1 | 0 ...

`chosen` and `rejected` hold the same `input_ids`; each answer's `attention_mask` marks
the tokens of its own sequence (prompt + that answer), so `input_ids[attention_mask]` is
exactly the row the unshared layout would hold. The model runs the row with the rejected
answer's RoPE positions restarting where the prompt ends and a mask that lets each answer
see the prompt and itself, never the other answer (`logps.shared_prefix_layout`). Each
answer's `targets` / masks are aligned to the packed row: the prompt's last slot predicts
y_w[0] in `chosen.targets` and y_l[0] in `rejected.targets`, so one logits row serves both.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax


@flax.struct.dataclass
class TokenSequences:
  """A batch of tokenized sequences with their loss-side masks.

  Attributes:
    input_ids: [B, T] int32 token ids fed to the model (image placeholders expanded).
    attention_mask: [B, T] bool, True for real tokens.
    targets: [B, T] int32, next-token targets (`input_ids` shifted left by one).
    loss_mask: [B, T] bool, True where `targets` is a response token that is scored.
    corrected_mask: [B, T] bool, True where `targets` is in a corrected segment
      (always a subset of `loss_mask`; all False for SFT data).
    ref_token_logps: optional [B, T] float32 per-token log-probs of `targets` under the
      frozen reference model (from the reference cache). When present the DDPO loss
      skips the reference forward pass.
  """

  input_ids: jax.Array
  attention_mask: jax.Array
  targets: jax.Array
  loss_mask: jax.Array
  corrected_mask: jax.Array
  ref_token_logps: Optional[jax.Array] = None


@flax.struct.dataclass
class PreferenceBatch:
  """One DDPO batch: an image and prompt with a corrected (chosen) and original answer.

  Attributes:
    pixel_values: [B, H, W, 3] float32 images (one per example, shared by both answers).
    chosen: the labeler-corrected answer y_w.
    rejected: the model's original answer y_l.
    shared_prefix: a static flag: both answers are packed into one row behind a single
      copy of the prompt (module docstring); False: one row per answer.
  """

  pixel_values: jax.Array
  chosen: TokenSequences
  rejected: TokenSequences
  shared_prefix: bool = flax.struct.field(pytree_node=False, default=False)


@flax.struct.dataclass
class SFTBatch:
  """One supervised (VQA / caption) batch: teacher-forced next-token prediction.

  Attributes:
    pixel_values: [B, H, W, 3] float32 images.
    tokens: the prompt + answer sequences; `loss_mask` covers the answer.
  """

  pixel_values: jax.Array
  tokens: TokenSequences
