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
  """

  pixel_values: jax.Array
  chosen: TokenSequences
  rejected: TokenSequences


@flax.struct.dataclass
class SFTBatch:
  """One supervised (VQA / caption) batch: teacher-forced next-token prediction.

  Attributes:
    pixel_values: [B, H, W, 3] float32 images.
    tokens: the prompt + answer sequences; `loss_mask` covers the answer.
  """

  pixel_values: jax.Array
  tokens: TokenSequences
