"""AR forward: batched, right-padded, read out at the right-most real token.

The readout index is `argmax(cumsum(mask))`, robust to either padding side; `mask.sum()-1` is only
right for right padding and picked the wrong position for 31/32 samples under left padding in the
release's history (trap #12).
"""

from __future__ import annotations

import numpy as np
import torch


def readout_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Right-most position whose mask is 1, per row."""
    if (attention_mask.sum(-1) == 0).any():
        raise ValueError("an AR input row has no real tokens")
    return attention_mask.long().cumsum(-1).argmax(-1)


def pad_right(id_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in id_lists)
    ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for i, x in enumerate(id_lists):
        ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return ids, mask


@torch.no_grad()
def predict_batched(ar, id_lists: list[list[int]], batch_size: int = 32) -> np.ndarray:
    """Raw AR predictions, float32 [n, d], in input order. Batches are formed in input order so a
    result depends only on the batch it was computed in (documented in the cache key)."""
    if not id_lists:
        raise ValueError("no AR inputs")
    if any(len(x) == 0 for x in id_lists):
        raise ValueError("an AR input is empty")
    pad = ar.tokenizer.pad_token_id
    if pad is None:
        pad = ar.tokenizer.eos_token_id if ar.tokenizer.eos_token_id is not None else 0
    out = []
    for start in range(0, len(id_lists), batch_size):
        chunk = id_lists[start:start + batch_size]
        ids, mask = pad_right(chunk, pad)
        ids, mask = ids.to(ar.device), mask.to(ar.device)
        hidden = ar.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(chunk), device=ar.device), readout_index(mask)]
        out.append(ar.value_head(last).float().cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.float32)


# Release tolerances for reward-path vs training-path parity (train_actor.py:89; rl_preflight.py:197).
STEP0_RATIO_TOLERANCE = 0.10
PREFLIGHT_TOLERANCE = 1e-3
