"""Post-RL polish on the AV's own greedy decodes of *training* activations (no held-out data is touched).

Why: the shipped metric is greedy, but RL trains the AR on T=1 samples, and greedy decoding of a small AV
falls into repetition loops on a few vectors (the failures: no closing tag within the token budget).
Two short supervised passes, using only the training split:

1. AV repair (opt-in, ``polish_av_repair``): for every training vector whose greedy decode fails, draw
   ``polish_group`` T=1 samples and keep the valid one the current AR scores best (fallback: the warm-start
   text); fine-tune the AV on those targets mixed with ``polish_anchor_ratio`` times as many non-failing
   vectors' own greedy decodes (anchors keep the rest of the greedy behaviour in place).  Measured on the
   SmolLM2 pair (H200, after 176 RL steps): held-out greedy failures rose from 3/512 to 7/512 and training
   greedy failures went from 0.52 % to 0.66 %, so the shipped pair was polished without it.
2. AR fit: fine-tune the AR on (greedy explanation -> vector) pairs, i.e. on the distribution it is scored
   on.  A validation slice of the training vectors guards it: if validation mse_nrm does not improve, the
   AR weights from before the fit are restored.
"""
from __future__ import annotations

import copy
import random
import time

import numpy as np
import torch

from ..explanation import extract_explanation
from ..metrics import mse_nrm
from .data import Stage0
from .models import ar_ids, ar_predict, av_target_ids, generate, mse_nrm_torch, pad_right, autocast, token_logprobs


def _lr(step: int, total: int, peak: float, warm: int) -> float:
    from .train import lr_at  # lazy: train imports this module

    return lr_at(step, total, peak, warm)


def _valid(samples) -> list[int]:
    return [i for i, s in enumerate(samples) if s.explanation is not None and not s.truncated]


def repair_targets(cfg, av, ar, tok, prompt, data: Stage0, fail_idx: list[int], device, scale, end_id,
                   extra_stop) -> tuple[list[list[int]], int]:
    """Continuation ids for each failing vector: best-scoring valid T=1 sample, else the warm-start text.
    Returns the targets and how many fell back to the warm-start text."""
    if not fail_idx:
        return [], 0
    g = cfg.polish_group
    vec = torch.from_numpy(data.vectors[fail_idx]).repeat_interleave(g, dim=0)
    smp = generate(av, tok, prompt, vec, scale, device=device, greedy=False, max_new_tokens=cfg.eval_max_new_tokens,
                   batch=cfg.polish_batch, seed=cfg.seed * 7919 + 17, extra_stop=extra_stop)
    ok = _valid(smp)
    score = np.full(len(smp), np.inf)
    if ok:
        pred = ar_predict(ar, tok, [smp[i].explanation for i in ok], device=device, batch=512)
        gold = data.vectors[fail_idx].repeat(g, axis=0)
        score[ok] = mse_nrm(pred, gold[ok])
    targets, fallback = [], 0
    for k, i in enumerate(fail_idx):
        block = score[k * g:(k + 1) * g]
        j = int(np.argmin(block))
        if np.isfinite(block[j]):
            targets.append(list(smp[k * g + j].new_ids))
        else:
            targets.append(av_target_ids(tok, data.explanations[i], end_id))
            fallback += 1
    return targets, fallback


def train_av_on_targets(cfg, av, prompt, vectors: np.ndarray, targets: list[list[int]], device, scale,
                        log) -> list[float]:
    """Supervised AV pass (mean NLL per continuation token) over (vector, continuation ids) pairs."""
    params = [p for n, p in av.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=cfg.polish_av_lr, weight_decay=0.0, betas=(0.9, 0.99))
    n = len(targets)
    bs = cfg.av_sft_batch
    steps = max(1, int(n * cfg.polish_av_epochs) // bs)
    rng = random.Random(cfg.seed + 31)
    order, hist = [], []
    n_prompt = len(prompt.ids)
    av.train()
    for step in range(steps):
        if len(order) < bs:
            o = list(range(n))
            rng.shuffle(o)
            order += o
        b, order = order[:bs], order[bs:]
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, cfg.polish_av_lr, min(4, steps))
        lps = token_logprobs(av, prompt, [prompt.ids + targets[i] for i in b], torch.from_numpy(vectors[b]),
                             scale, device=device, n_prompt=n_prompt)
        loss = -torch.cat(lps).sum() / sum(x.numel() for x in lps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        hist.append(float(loss.detach()))
    log(f"polish av: {steps} steps over {n} targets, nll/token first {np.mean(hist[:5]):.4f} "
        f"last {np.mean(hist[-5:]):.4f}")
    return hist


def ar_val_mse(ar, tok, texts: list[str], gold: np.ndarray, device) -> float:
    return float(mse_nrm(ar_predict(ar, tok, texts, device=device, batch=512), gold).mean())


def train_ar_on_texts(cfg, ar, tok, texts: list[str], gold: np.ndarray, device, stop_at, log) -> list[float]:
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    lora_p = [p for n, p in ar.named_parameters() if "lora_" in n]
    vh_p = list(ar.value_head.parameters())
    opt = torch.optim.AdamW([{"params": lora_p, "lr": cfg.polish_ar_lr}, {"params": vh_p, "lr": cfg.polish_ar_vh_lr}],
                            weight_decay=0.0, betas=(0.9, 0.99))
    bs = cfg.ar_sft_batch
    steps = max(1, int(len(texts) * cfg.polish_ar_epochs) // bs)
    rng = random.Random(cfg.seed + 37)
    order, hist = [], []
    ar.train()
    for step in range(steps):
        if time.time() > stop_at:
            log(f"polish ar: time budget reached at step {step}/{steps}")
            break
        if len(order) < bs:
            o = list(range(len(texts)))
            rng.shuffle(o)
            order += o
        b, order = order[:bs], order[bs:]
        ids, mask = pad_right([ar_ids(tok, texts[i]) for i in b], pad)
        for g, peak in zip(opt.param_groups, (cfg.polish_ar_lr, cfg.polish_ar_vh_lr)):
            g["lr"] = _lr(step, steps, peak, cfg.warmup_steps)
        with autocast(device):
            pred = ar(ids.to(device), mask.to(device))
        loss = mse_nrm_torch(pred, torch.from_numpy(gold[b]).to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_p + vh_p, cfg.grad_clip)
        opt.step()
        hist.append(float(loss.detach()))
    log(f"polish ar: {len(hist)} steps over {len(texts)} texts, mse_nrm first {np.mean(hist[:20]):.4f} "
        f"last {np.mean(hist[-20:]):.4f}")
    return hist


def polish(cfg, av, ar, tok, prompt, data: Stage0, device, scale, V, *, end_id, extra_stop, stop_at, log) -> dict:
    """Run both passes; returns the facts for metrics.json (counts, losses, validation mse before/after)."""
    t0 = time.time()
    rng = np.random.default_rng(cfg.seed + 41)
    pick = rng.choice(len(data), size=min(cfg.polish_vectors, len(data)), replace=False)
    n_val = min(cfg.polish_val_vectors, len(pick) // 5)
    val_idx, fit_idx = [int(i) for i in pick[:n_val]], [int(i) for i in pick[n_val:]]
    smp = generate(av, tok, prompt, torch.from_numpy(data.vectors[fit_idx]), scale, device=device, greedy=True,
                   max_new_tokens=cfg.eval_max_new_tokens, batch=cfg.polish_batch, extra_stop=extra_stop)
    ok = _valid(smp)
    ok_set = set(ok)
    fail_local = [k for k in range(len(smp)) if k not in ok_set]
    log(f"polish: greedy on {len(smp)} training vectors, {len(fail_local)} failures "
        f"({len(fail_local) / max(1, len(smp)):.4f}) in {time.time() - t0:.0f}s")
    out = {"n_fit": len(fit_idx), "n_val": len(val_idx), "greedy_failure_rate_train": len(fail_local) / max(1, len(smp))}

    fail_idx = [fit_idx[k] for k in fail_local]
    targets: list[list[int]] = []
    if cfg.polish_av_repair:  # 1. AV repair (opt-in: see the module docstring for its measured effect)
        targets, fallback = repair_targets(cfg, av, ar, tok, prompt, data, fail_idx, device, scale, end_id,
                                           extra_stop)
        anchors = (rng.choice(ok, size=min(len(ok), cfg.polish_anchor_ratio * len(fail_idx)), replace=False)
                   if ok else [])
        a_idx = [fit_idx[k] for k in anchors]
        av_tg = targets + [list(smp[k].new_ids) for k in anchors]
        out.update(av_repair_failures=len(fail_idx), av_repair_warmstart_fallback=fallback,
                   av_repair_anchors=len(a_idx))
        if av_tg:
            h = train_av_on_targets(cfg, av, prompt, data.vectors[fail_idx + a_idx], av_tg, device, scale, log)
            out["av_nll_first5"], out["av_nll_last5"] = float(np.mean(h[:5])), float(np.mean(h[-5:]))

    # 2. AR fit on the valid greedy texts (+ the repair targets standing in for failing vectors' decodes)
    texts = [smp[k].explanation for k in ok]
    gold = data.vectors[[fit_idx[k] for k in ok]]
    extra = [(extract_explanation(tok.decode(t[:-1], skip_special_tokens=False)), i)
             for t, i in zip(targets, fail_idx)]
    extra = [(s, i) for s, i in extra if s is not None]
    if extra:
        texts += [s for s, _ in extra]
        gold = np.concatenate([gold, data.vectors[[i for _, i in extra]]])
    val = generate(av, tok, prompt, torch.from_numpy(data.vectors[val_idx]), scale, device=device, greedy=True,
                   max_new_tokens=cfg.eval_max_new_tokens, batch=cfg.polish_batch, extra_stop=extra_stop)
    vok = _valid(val)
    if not vok:  # nothing to check a fit against: leave the AR as it is
        log("polish: no valid greedy decode on the validation slice; AR fit skipped")
        return {**out, "ar_fit_skipped": "no valid greedy decode on the validation slice", "seconds": time.time() - t0}
    val_texts, val_gold = [val[k].explanation for k in vok], data.vectors[[val_idx[k] for k in vok]]
    before = ar_val_mse(ar, tok, val_texts, val_gold, device)
    saved = copy.deepcopy({k: v.detach().clone() for k, v in ar.state_dict().items()
                           if "lora_" in k or k.startswith("value_head")})
    h = train_ar_on_texts(cfg, ar, tok, texts, gold, device, stop_at, log)
    after = ar_val_mse(ar, tok, val_texts, val_gold, device)
    kept = after < before
    if not kept:
        ar.load_state_dict(saved, strict=False)
    out.update(ar_fit_texts=len(texts), ar_fit_steps=len(h), val_failure_rate=1 - len(vok) / max(1, len(val)),
               val_fve_before=1 - before / V, val_fve_after=1 - after / V, ar_fit_kept=kept,
               seconds=time.time() - t0)
    log(f"polish: AR val fve {1 - before / V:.4f} -> {1 - after / V:.4f} ({'kept' if kept else 'reverted'})")
    return out
