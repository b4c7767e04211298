"""Post-RL polish: fit the AR on the AV's own greedy decodes of *training* activations (no held-out data).

Why: the shipped metric is greedy, but RL trains the AR on T=1 samples.  Here the AV greedy-decodes
``polish_vectors`` training vectors and the AR is fine-tuned on the valid (explanation -> vector) pairs, i.e.
on the distribution it is scored on; failed decodes (no tag / truncated) are left out, as in training.
A validation slice of ``polish_val_vectors`` further training vectors guards the fit: if its mse_nrm does
not fall, the AR weights from before the fit are restored.

Tried and removed (SmolLM2, H200, after 176 RL steps; commit 2c8ab43 has the code): also fine-tuning the
AV on the best T=1 sample for vectors whose greedy decode failed.  Held-out failures rose from 3/512 to
7/512, so it was not shipped (``polish_trials`` in the pair's training_metrics.json).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..metrics import mse_nrm
from .data import Stage0
from .models import ar_predict, generate


def _valid(samples) -> list[int]:
    return [i for i, s in enumerate(samples) if s.explanation is not None and not s.truncated]


def ar_val_mse(ar, tok, texts: list[str], gold: np.ndarray, device) -> float:
    return float(mse_nrm(ar_predict(ar, tok, texts, device=device, batch=512), gold).mean())


def _ar_trainable_state(ar) -> dict:
    return {k: v.detach().clone() for k, v in ar.state_dict().items() if "lora_" in k or k.startswith("value_head")}


def polish(cfg, av, ar, tok, prompt, data: Stage0, device, scale, V, *, extra_stop, stop_at, log) -> dict:
    """Greedy decodes -> AR fit -> validation guard; returns the facts for metrics.json."""
    from .train import fit_ar  # lazy: train imports this module

    t0 = time.time()
    rng = np.random.default_rng(cfg.seed + 41)
    pick = rng.choice(len(data), size=min(cfg.polish_vectors, len(data)), replace=False)
    n_val = min(cfg.polish_val_vectors, len(pick) // 5)
    val_idx, fit_idx = [int(i) for i in pick[:n_val]], [int(i) for i in pick[n_val:]]

    def decode(idx):
        smp = generate(av, tok, prompt, torch.from_numpy(data.vectors[idx]), scale, device=device, greedy=True,
                       max_new_tokens=cfg.eval_max_new_tokens, batch=cfg.polish_batch, extra_stop=extra_stop)
        ok = _valid(smp)
        return [smp[k].explanation for k in ok], data.vectors[[idx[k] for k in ok]], 1 - len(ok) / max(1, len(smp))

    texts, gold, fail_rate = decode(fit_idx)
    log(f"polish: greedy on {len(fit_idx)} training vectors, failure rate {fail_rate:.4f} in {time.time() - t0:.0f}s")
    out = {"n_fit": len(fit_idx), "n_val": len(val_idx), "greedy_failure_rate_train": fail_rate}
    val_texts, val_gold, val_fail = decode(val_idx)
    out["val_failure_rate"] = val_fail
    if not val_texts or not texts:  # nothing to fit or nothing to check a fit against: leave the AR as it is
        log("polish: no valid greedy decode to fit or to validate on; AR fit skipped")
        return {**out, "ar_fit_skipped": "no valid greedy decode on the fit set or the validation slice",
                "seconds": time.time() - t0}
    before = ar_val_mse(ar, tok, val_texts, val_gold, device)
    saved = _ar_trainable_state(ar)
    h = fit_ar(ar, tok, texts, gold, device, lr=cfg.polish_ar_lr, vh_lr=cfg.polish_ar_vh_lr,
               epochs=cfg.polish_ar_epochs, batch=cfg.ar_sft_batch, warmup=cfg.warmup_steps,
               grad_clip=cfg.grad_clip, seed=cfg.seed + 37, tag="polish ar", stop_at=stop_at, V=V)
    after = ar_val_mse(ar, tok, val_texts, val_gold, device)
    kept = after < before
    if not kept:
        ar.load_state_dict(saved, strict=False)
    out.update(ar_fit_texts=len(texts), ar_fit_steps=len(h), val_fve_before=1 - before / V,
               val_fve_after=1 - after / V, ar_fit_kept=kept, seconds=time.time() - t0)
    log(f"polish: AR val fve {1 - before / V:.4f} -> {1 - after / V:.4f} ({'kept' if kept else 'reverted'})")
    return out
