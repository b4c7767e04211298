"""End-to-end training of the default pair: stage 0 -> AR SFT -> AV SFT -> GRPO RL -> held-out eval.

    python -m nla_repro.training.train --family smollm2 --out OUT [--state STATE] [--smoke]
        [--stages data,ar_sft,av_sft,eval_sft,rl,eval_rl,polish,eval_polish] [--deadline-s 560] [--gguf PATH]
        [--tokenizer DIR] [--init-deltas DELTAS_DIR] [--gpu-mem-fraction F] [--eval-reserve-s S] [--set k=v]

Writes to OUT: ``<stage>_av.safetensors`` (AV LoRA A/B, bf16), ``<stage>_ar.safetensors`` (AR LoRA A/B +
``value_head.weight``, bf16), ``metrics.json``, ``samples.jsonl`` and ``train.log``.  STATE keeps fp32
weights + stage-0 data so a later call can resume (device files outside the repo survive while warm).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..metrics import mse_nrm, variance_baseline
from . import lora as L
from .base import gguf_path, load_base, spec_of
from .config import LORA_TARGETS, TrainConfig, smoke_config
from .data import Stage0, doc_bucket, extract, load_docs
from .models import (ARModel, ar_ids, ar_predict, av_target_ids, build_av_prompt, end_of_turn_id, generate,
                     mse_nrm_torch, pad_right, autocast, token_logprobs)

T0 = time.time()
LOG = None
EXTRA_STOP: tuple[str, ...] = ()  # set from the family spec in main()
END_ID: int = -1                  # id ending an AV answer, set from the family spec in main()


def log(*a):
    s = f"[{time.time() - T0:7.1f}s] " + " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG is not None:
        with open(LOG, "a") as f:
            f.write(s + "\n")


def nice_scale(mean_norm: float) -> float:
    """A round number a bit above the mean raw norm (recipe §2.4)."""
    target = 1.05 * mean_norm
    e = 10 ** math.floor(math.log10(target))
    for k in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if k * e >= target:
            return float(k * e)
    return float(10 * e)


def parse_override(name: str, text: str, current):
    """``--set name=value`` typed like the field's default; bools take true/false/1/0 (bool("False") is True)."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {name}={text}: expected true/false/1/0")
        return low in ("true", "1")
    return type(current)(text)


def lr_at(step: int, total: int, peak: float, warm: int) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def set_lr(opt, lr_by_group):
    for g, lr in zip(opt.param_groups, lr_by_group):
        g["lr"] = lr


# ------------------------------------------------------------------------------------------ stages
def stage_data(cfg: TrainConfig, spec, base, tok, device, smoke: bool) -> dict:
    n_docs = int(math.ceil(cfg.max_train_vectors / cfg.positions_per_doc * 1.6))
    if smoke:
        tr_docs = load_docs("train", limit=12)
        ev_docs = load_docs("eval", limit=6)
    else:
        tr_docs = load_docs("train", limit=n_docs)
        ev_docs = load_docs("eval")
    log(f"docs: train {len(tr_docs)} eval {len(ev_docs)}")
    ext_model = base
    if device.startswith("cuda"):
        import copy

        ext_model = copy.deepcopy(base).to(torch.bfloat16)  # recipe: bf16 model, bf16 capture -> fp32
    kw = dict(layer=spec.layer, positions_per_doc=cfg.positions_per_doc, max_length=cfg.max_length,
              seed=cfg.position_seed, min_position=cfg.min_position, device=device,
              batch_size=64 if device.startswith("cuda") else 4)
    train = extract(ext_model, tok, tr_docs, max_vectors=cfg.max_train_vectors, **kw)
    ev_kw = dict(kw, positions_per_doc=min(2, cfg.positions_per_doc))
    evs = extract(ext_model, tok, ev_docs, max_vectors=cfg.max_eval_vectors, **ev_kw)
    del ext_model
    V = variance_baseline(train.vectors, max_rows=cfg.rawvar_rows)
    norms = np.linalg.norm(train.vectors, axis=1)
    scale = nice_scale(float(norms.mean()))
    log(f"stage0: train {len(train)} vectors, eval {len(evs)}; V(rawvar)={V:.5f}; norm mean {norms.mean():.2f} "
        f"median {np.median(norms):.2f} p99 {np.percentile(norms, 99):.2f}; injection_scale {scale}")
    return {"train": train, "eval": evs, "V": V, "injection_scale": scale,
            "norm_stats": {"mean": float(norms.mean()), "median": float(np.median(norms)),
                           "p99": float(np.percentile(norms, 99))}}


def split_train(train: Stage0):
    b = [doc_bucket(d) for d in train.doc_ids]
    ar = [i for i, x in enumerate(b) if x < 0.4]
    av = [i for i, x in enumerate(b) if 0.4 <= x < 0.8]
    rl = [i for i, x in enumerate(b) if x >= 0.8]
    return ar, av, rl


def fit_ar(ar, tok, texts: list[str], gold: np.ndarray, device, *, lr: float, vh_lr: float, epochs: float,
           batch: int, warmup: int, grad_clip: float, seed: int, tag: str, stop_at=float('inf'),
           V: float | None = None) -> list:
    """Supervised AR pass on mse_nrm over (explanation text, gold vector) pairs: LoRA + value head, AdamW,
    linear warm-up then cosine to 10 %.  Used by AR SFT (warm-start text) and the polish (greedy decodes)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rng = random.Random(seed)
    lora_p = [p for n, p in ar.named_parameters() if "lora_" in n]
    vh_p = list(ar.value_head.parameters())
    opt = torch.optim.AdamW([{"params": lora_p, "lr": lr}, {"params": vh_p, "lr": vh_lr}],
                            weight_decay=0.0, betas=(0.9, 0.99))
    steps = max(1, int(len(texts) * epochs) // batch)
    hist = []
    order = []
    ar.train()
    for step in range(steps):
        if time.time() > stop_at:
            log(f"{tag}: time budget reached at step {step}/{steps}")
            break
        if len(order) < batch:
            o = list(range(len(texts)))
            rng.shuffle(o)
            order += o
        b, order = order[:batch], order[batch:]
        ids, mask = pad_right([ar_ids(tok, texts[i]) for i in b], pad)
        set_lr(opt, [lr_at(step, steps, lr, warmup), lr_at(step, steps, vh_lr, warmup)])
        with autocast(device):
            pred = ar(ids.to(device), mask.to(device))
        loss = mse_nrm_torch(pred, torch.from_numpy(gold[b]).to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_p + vh_p, grad_clip)
        opt.step()
        hist.append(float(loss.detach()))
        if step % max(1, steps // 20) == 0 or step == steps - 1:
            fve = f" fve~{1 - np.mean(hist[-20:]) / V:.3f}" if V else ""
            log(f"{tag} step {step}/{steps} mse_nrm {np.mean(hist[-20:]):.4f}{fve}")
    return hist


def train_ar_sft(cfg, ar, tok, data: Stage0, idx, device, V, stop_at=float('inf')) -> list:
    idx = list(idx)[: cfg.ar_sft_examples]
    return fit_ar(ar, tok, [data.explanations[i] for i in idx], data.vectors[idx], device, lr=cfg.ar_sft_lr,
                  vh_lr=cfg.ar_sft_vh_lr, epochs=cfg.ar_sft_epochs, batch=cfg.ar_sft_batch,
                  warmup=cfg.warmup_steps, grad_clip=cfg.grad_clip, seed=cfg.seed, tag="ar_sft", stop_at=stop_at, V=V)


def train_av_sft(cfg, av, tok, prompt, data: Stage0, idx, device, scale, stop_at=float('inf')) -> list:
    idx = list(idx)[: cfg.av_sft_examples]
    rng = random.Random(cfg.seed + 1)
    params = [p for n, p in av.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=cfg.av_sft_lr, weight_decay=0.0, betas=(0.9, 0.99))
    steps = max(1, int(len(idx) * cfg.av_sft_epochs) // cfg.av_sft_batch)
    n_prompt = len(prompt.ids)
    hist, order = [], []
    av.train()
    for step in range(steps):
        if time.time() > stop_at:
            log(f"av_sft: time budget reached at step {step}/{steps}")
            break
        if len(order) < cfg.av_sft_batch:
            o = list(idx)
            rng.shuffle(o)
            order += o
        bidx, order = order[: cfg.av_sft_batch], order[cfg.av_sft_batch:]
        seqs = [prompt.ids + av_target_ids(tok, data.explanations[i], END_ID) for i in bidx]
        vec = torch.from_numpy(data.vectors[bidx])
        set_lr(opt, [lr_at(step, steps, cfg.av_sft_lr, cfg.warmup_steps)])
        lps = token_logprobs(av, prompt, seqs, vec, scale, device=device, n_prompt=n_prompt)
        ntok = sum(x.numel() for x in lps)
        loss = -torch.cat(lps).sum() / ntok
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        hist.append(float(loss.detach()))
        if step % max(1, steps // 20) == 0 or step == steps - 1:
            log(f"av_sft step {step}/{steps} nll/token {np.mean(hist[-20:]):.4f}")
    return hist


def evaluate(tag, cfg, av, ar, tok, prompt, data: Stage0, device, scale, V, samples_path=None) -> dict:
    """Held-out evaluation: greedy decodes, training denominator V, TRAINING_DROP convention for the
    headline fve (failures = no tag or truncated, excluded; rate reported), plus charged-at-2 variant,
    shuffled-pair null, L2-matched random-Gaussian vectors, and the AR ceiling (warm-start text)."""
    t = time.time()
    vec = torch.from_numpy(data.vectors)
    smp = generate(av, tok, prompt, vec, scale, device=device, greedy=True, max_new_tokens=cfg.eval_max_new_tokens,
                   batch=512, extra_stop=EXTRA_STOP)
    ok = [i for i, s in enumerate(smp) if s.explanation is not None and not s.truncated]
    fail_rate = 1 - len(ok) / len(smp)
    res = {"n": len(smp), "n_valid": len(ok), "failure_rate": fail_rate,
           "mean_new_tokens": float(np.mean([len(s.new_ids) for s in smp]))}
    if ok:
        expl = [smp[i].explanation for i in ok]
        pred = ar_predict(ar, tok, expl, device=device)
        gold = data.vectors[ok]
        mse = mse_nrm(pred, gold)
        res.update(mse_nrm_mean=float(mse.mean()), mse_nrm_median=float(np.median(mse)),
                   fve_nrm=float(1 - mse.mean() / V), fve_nrm_median=float(1 - np.median(mse) / V),
                   frac_fve_gt_0_5=float(np.mean(1 - mse / V > 0.5)), frac_fve_lt_0=float(np.mean(1 - mse / V < 0)))
        charged = np.full(len(smp), 2.0)
        charged[ok] = mse
        res["fve_nrm_failures_charged_2"] = float(1 - charged.mean() / V)
        # shuffled-pair null: explanation of sample i+1 scored against gold i
        rolled = mse_nrm(np.roll(pred, 1, axis=0), gold)
        res["shuffled_null_fve"] = float(1 - rolled.mean() / V)
    # random Gaussian, L2-matched to each gold vector, through the AV then the AR, scored against itself
    g = torch.Generator().manual_seed(1234)
    gauss = torch.randn(vec.shape, generator=g)
    gauss = gauss / gauss.norm(dim=1, keepdim=True) * vec.norm(dim=1, keepdim=True)
    gs = generate(av, tok, prompt, gauss, scale, device=device, greedy=True, max_new_tokens=cfg.eval_max_new_tokens,
                  batch=512, extra_stop=EXTRA_STOP)
    gok = [i for i, s in enumerate(gs) if s.explanation is not None and not s.truncated]
    if gok:
        gp = ar_predict(ar, tok, [gs[i].explanation for i in gok], device=device)
        res["random_gaussian_fve"] = float(1 - mse_nrm(gp, gauss.numpy()[gok]).mean() / V)
        res["random_gaussian_failure_rate"] = 1 - len(gok) / len(gs)
    # AR ceiling: warm-start explanations written from the true context
    cp = ar_predict(ar, tok, data.explanations, device=device)
    res["ar_ceiling_fve"] = float(1 - mse_nrm(cp, data.vectors).mean() / V)
    res["eval_seconds"] = time.time() - t
    log(f"eval[{tag}]: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
    if samples_path:
        with open(samples_path, "a") as f:
            for i in range(min(24, len(smp))):
                f.write(json.dumps({"tag": tag, "doc_id": data.doc_ids[i], "pos": data.positions[i],
                                    "context_tail": data.contexts[i][-160:], "warm_start": data.explanations[i],
                                    "av_greedy": smp[i].text, "truncated": smp[i].truncated}) + "\n")
    return res


def rl_loop(cfg, av, ar, tok, prompt, data: Stage0, idx, device, scale, V, deadline, on_checkpoint=None) -> list:
    """GRPO: per step, rl_prompts vectors x rl_group samples at T=1; reward = -mse_nrm from the current AR
    (failures: no tag or truncated -> failure_reward, excluded from AR updates); group-normalised
    advantages; one on-policy update (ratio = 1, so no clipping is needed) of the AV LoRA; then
    ``rl_ar_updates`` AR updates on the valid samples.  The first ``rl_critic_warmup`` steps update only the
    AR.  ``on_checkpoint(history)`` is called every ``rl_save_every`` steps."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rng = random.Random(cfg.seed + 2)
    av_params = [p for n, p in av.named_parameters() if "lora_" in n]
    ar_params = [p for n, p in ar.named_parameters() if "lora_" in n] + list(ar.value_head.parameters())
    opt_av = torch.optim.AdamW(av_params, lr=cfg.rl_lr, weight_decay=0.0, betas=(0.9, 0.99))
    opt_ar = torch.optim.AdamW(ar_params, lr=cfg.rl_ar_lr, weight_decay=0.0, betas=(0.9, 0.99))
    n_prompt = len(prompt.ids)
    hist = []
    order = []
    step_times = []
    for step in range(cfg.rl_steps):
        if step_times and time.time() + 1.5 * max(step_times) > deadline:
            log(f"rl: stopping at step {step} (deadline)")
            break
        ts = time.time()
        if len(order) < cfg.rl_prompts:
            o = list(idx)
            rng.shuffle(o)
            order += o
        bidx, order = order[: cfg.rl_prompts], order[cfg.rl_prompts:]
        vec = torch.from_numpy(data.vectors[bidx]).repeat_interleave(cfg.rl_group, dim=0)
        gold = data.vectors[bidx].repeat(cfg.rl_group, axis=0)
        smp = generate(av, tok, prompt, vec, scale, device=device, greedy=False,
                       max_new_tokens=cfg.rl_max_new_tokens, batch=1024, seed=cfg.seed * 100003 + step,
                       extra_stop=EXTRA_STOP)
        ok = [i for i, s in enumerate(smp) if s.explanation is not None and not s.truncated]
        rew = np.full(len(smp), cfg.failure_reward, np.float64)
        if ok:
            pred = ar_predict(ar, tok, [smp[i].explanation for i in ok], device=device, batch=512)
            rew[ok] = -mse_nrm(pred, gold[ok])
        # AV policy update
        if step >= cfg.rl_critic_warmup:
            av.train()
            r = rew.reshape(cfg.rl_prompts, cfg.rl_group)
            adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
            adv = adv.reshape(-1)
            seqs = [prompt.ids + s.new_ids for s in smp]
            opt_av.zero_grad(set_to_none=True)
            mb = max(1, cfg.micro_batch_tokens // max(len(s) for s in seqs))
            nz = [i for i in range(len(seqs)) if abs(adv[i]) > 1e-8]
            for b in range(0, len(nz), mb):
                ii = nz[b:b + mb]
                lps = token_logprobs(av, prompt, [seqs[i] for i in ii], vec[ii], scale, device=device,
                                     n_prompt=n_prompt)
                a = torch.tensor(adv[ii], dtype=torch.float32, device=device)
                loss = -(a * torch.stack([x.mean() for x in lps])).sum() / len(seqs)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(av_params, cfg.grad_clip)
            opt_av.step()
        # AR update on the valid samples (weights used for the reward were the pre-update ones)
        if ok:
            ar.train()
            mb = cfg.ar_micro_batch  # gradient accumulation: activation memory of mb sequences, not len(ok)
            ar_batches = [pad_right([ar_ids(tok, smp[i].explanation) for i in ok[b:b + mb]], pad) + (ok[b:b + mb],)
                          for b in range(0, len(ok), mb)]
            for _ in range(cfg.rl_ar_updates):
                opt_ar.zero_grad(set_to_none=True)
                for ids, mask, ii in ar_batches:
                    with autocast(device):
                        p = ar(ids.to(device), mask.to(device))
                    loss = mse_nrm_torch(p, torch.from_numpy(gold[ii]).to(device)).sum() / len(ok)
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(ar_params, cfg.grad_clip)
                opt_ar.step()
        valid_mse = float(-rew[ok].mean()) if ok else float("nan")
        rec = {"step": step, "fail_rate": 1 - len(ok) / max(1, len(smp)), "mse_nrm_valid": valid_mse,
               "fve_nrm_valid": 1 - valid_mse / V, "reward_mean": float(rew.mean()),
               "mean_len": float(np.mean([len(s.new_ids) for s in smp])), "sec": time.time() - ts}
        hist.append(rec)
        step_times.append(rec["sec"])
        log("rl " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}))
        if on_checkpoint is not None and cfg.rl_save_every > 0 and (step + 1) % cfg.rl_save_every == 0:
            on_checkpoint(hist)
    return hist


# ------------------------------------------------------------------------------------------ save/load
def save_deltas(out: Path, tag: str, av, ar):
    out.mkdir(parents=True, exist_ok=True)
    av_sd = L.lora_state_dict(av)
    ar_sd = L.lora_state_dict(ar.backbone)
    ar_sd["value_head.weight"] = ar.value_head.weight.detach().to("cpu", torch.bfloat16).contiguous()
    meta = {"format": "nla-repro-lora-v1"}
    save_file(av_sd, str(out / f"{tag}_av.safetensors"), metadata=meta)
    save_file(ar_sd, str(out / f"{tag}_ar.safetensors"), metadata=meta)


def save_state(state: Path, name: str, av, ar):
    state.mkdir(parents=True, exist_ok=True)
    torch.save({"av": L.lora_state_dict(av, torch.float32), "ar": L.lora_state_dict(ar.backbone, torch.float32),
                "vh": ar.value_head.weight.detach().cpu().float()}, state / f"{name}.pt")


def load_state(state: Path, name: str, av, ar) -> bool:
    p = state / f"{name}.pt"
    if not p.is_file():
        return False
    sd = torch.load(p, map_location="cpu")
    L.load_lora_state(av, sd["av"])
    L.load_lora_state(ar.backbone, sd["ar"])
    with torch.no_grad():
        ar.value_head.weight.copy_(sd["vh"].to(ar.value_head.weight.device))
    return True


def adopt_delta_shapes(folder: Path, cfg: TrainConfig) -> None:
    """LoRA ranks and alphas come from the shipped deltas' manifest when training continues from them."""
    man = json.loads((folder / "manifest.json").read_text())
    for role, prefix in (("av_lora", "av"), ("ar_lora", "ar")):
        setattr(cfg, f"{prefix}_rank", int(man["files"][role]["rank"]))
        setattr(cfg, f"{prefix}_alpha", float(man["files"][role]["alpha"]))


def load_deltas(folder: Path, av, ar) -> None:
    """Load shipped deltas (``av_lora`` / ``ar_lora`` / ``value_head`` safetensors, bf16) into the live LoRA
    modules (shapes from :func:`adopt_delta_shapes`)."""
    from safetensors.torch import load_file

    man = json.loads((folder / "manifest.json").read_text())
    L.load_lora_state(av, load_file(str(folder / man["files"]["av_lora"]["file"])))
    ar_sd = load_file(str(folder / man["files"]["ar_lora"]["file"]))
    L.load_lora_state(ar.backbone, ar_sd)
    # a training checkpoint (rl_ar.safetensors) carries its value head; shipped deltas keep it separate
    vh = ar_sd.get("value_head.weight")
    if vh is None:
        vh = load_file(str(folder / man["files"]["value_head"]["file"]))["weight"]
    with torch.no_grad():
        ar.value_head.weight.copy_(vh.to(ar.value_head.weight.device, ar.value_head.weight.dtype))


def round_all(av, ar):
    L.round_to_storage(av)
    L.round_to_storage(ar.backbone)
    with torch.no_grad():
        ar.value_head.weight.copy_(ar.value_head.weight.to(torch.bfloat16).float())


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    global LOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="smollm2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--state", default=None)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--stages", default="data,ar_sft,av_sft,eval_sft,rl,eval_rl")
    ap.add_argument("--deadline-s", type=float, default=560.0)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--set", action="append", default=[], help="override a TrainConfig field: name=value")
    ap.add_argument("--tokenizer", default=None,
                    help="load the tokenizer from this save_pretrained folder instead of converting the GGUF's")
    ap.add_argument("--init-deltas", default=None,
                    help="start from shipped deltas (a deltas/<family> folder: av_lora, ar_lora, value_head)")
    ap.add_argument("--gpu-mem-fraction", type=float, default=None,
                    help="cap this process's share of GPU memory (two trainings sharing one card)")
    ap.add_argument("--eval-reserve-s", type=float, default=60.0,
                    help="seconds kept free before the deadline for the final evaluation")
    args = ap.parse_args(argv)
    deadline = T0 + args.deadline_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG = str(out / "train.log")
    state = Path(args.state) if args.state else out / "state"
    cfg = smoke_config() if args.smoke else TrainConfig()
    cfg.family = args.family
    if not args.smoke:
        for k, v in spec_of(args.family).train_overrides:
            setattr(cfg, k, v)
    for kv in args.set:
        k, v = kv.split("=", 1)
        setattr(cfg, k, parse_override(k, v, getattr(cfg, k)))
    if args.init_deltas:
        adopt_delta_shapes(Path(args.init_deltas), cfg)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.gpu_mem_fraction and device.startswith("cuda"):
        torch.cuda.set_per_process_memory_fraction(args.gpu_mem_fraction)
    torch.manual_seed(cfg.seed)
    spec = spec_of(args.family)
    global EXTRA_STOP, END_ID
    EXTRA_STOP = spec.extra_stop_tokens
    stages = args.stages.split(",")
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    prev = state / "metrics.json"
    if prev.exists():
        metrics = {**json.loads(prev.read_text()), **metrics}
    metrics["config"] = asdict(cfg)
    metrics["device"] = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    metrics["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}

    def dump():
        metrics_path.write_text(json.dumps(metrics, indent=1, default=float))
        state.mkdir(parents=True, exist_ok=True)
        (state / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))

    gp = gguf_path(args.family, args.gguf)
    tok, base = load_base(args.family, gp, tokenizer_dir=args.tokenizer)
    base.to(device)
    log(f"base loaded on {device}: {type(base).__name__}, {sum(p.numel() for p in base.parameters())} params")
    END_ID = end_of_turn_id(tok, spec.end_of_turn)
    prompt = build_av_prompt(tok, spec.injection_char)
    log(f"AV prompt: {len(prompt.ids)} tokens, marker {prompt.marker_id} at {prompt.inject_pos} "
        f"neighbours ({prompt.left_id}, {prompt.right_id})")

    data_p = state / "data.pt"
    if "data" in stages or not data_p.exists():
        d = stage_data(cfg, spec, base, tok, device, args.smoke)
        state.mkdir(parents=True, exist_ok=True)
        torch.save(d, data_p)
    else:
        d = torch.load(data_p, weights_only=False)
        log(f"stage0 data loaded from {data_p}")
    train, evs, V, scale = d["train"], d["eval"], d["V"], d["injection_scale"]
    metrics["stage0"] = {"n_train_vectors": len(train), "n_eval_vectors": len(evs), "train_rawvar": V,
                         "injection_scale": scale, "norm_stats": d["norm_stats"],
                         "n_eval_docs": len(set(evs.doc_ids)), "n_train_docs": len(set(train.doc_ids)),
                         "sources_train": {s: train.sources.count(s) for s in sorted(set(train.sources))},
                         "sources_eval": {s: evs.sources.count(s) for s in sorted(set(evs.sources))}}
    dump()
    ar_idx, av_idx, rl_idx = split_train(train)
    if args.smoke:  # a dozen documents may leave a split empty: use all vectors for every stage
        ar_idx = av_idx = rl_idx = list(range(len(train)))
    log(f"split: ar_sft {len(ar_idx)} av_sft {len(av_idx)} rl {len(rl_idx)}")

    ar = ARModel(base, spec.layer).to(device)
    L.apply_lora(ar.backbone, LORA_TARGETS, cfg.ar_rank, cfg.ar_alpha, generator_seed=cfg.seed + 10)
    for p in ar.value_head.parameters():
        p.requires_grad_(True)
    av = base
    L.apply_lora(av, LORA_TARGETS, cfg.av_rank, cfg.av_alpha, generator_seed=cfg.seed + 11)
    av.to(device)
    ar.to(device)
    samples_path = str(out / "samples.jsonl")

    resumed = None
    if args.init_deltas:
        load_deltas(Path(args.init_deltas), av, ar)
        resumed = f"deltas:{args.init_deltas}"
        log(f"initialised from shipped deltas in {args.init_deltas}")
    else:
        for name in ("rl", "sft"):
            if load_state(state, name, av, ar):
                resumed = name
                log(f"resumed weights from state/{name}.pt")
                break

    if "ar_sft" in stages:
        h = train_ar_sft(cfg, ar, tok, train, ar_idx, device, V, stop_at=T0 + 0.30 * args.deadline_s)
        metrics["ar_sft"] = {"steps": len(h), "first20": float(np.mean(h[:20])), "last20": float(np.mean(h[-20:]))}
        dump()
    if "av_sft" in stages:
        h = train_av_sft(cfg, av, tok, prompt, train, av_idx, device, scale, stop_at=T0 + 0.62 * args.deadline_s)
        metrics["av_sft"] = {"steps": len(h), "first20": float(np.mean(h[:20])), "last20": float(np.mean(h[-20:]))}
        save_state(state, "sft", av, ar)
        dump()
    if "ar_sft" in stages or "av_sft" in stages:
        round_all(av, ar)
        save_deltas(out, "sft", av, ar)
    def evaluate_stage(tag):  # held-out eval of the weights as shipped (bf16-rounded deltas)
        round_all(av, ar)
        metrics[f"eval_{tag}"] = evaluate(tag, cfg, av, ar, tok, prompt, evs, device, scale, V, samples_path)
        dump()

    if "eval_sft" in stages:
        evaluate_stage("sft")
    if "rl" in stages:
        prior = list(metrics.get("rl_history", []))

        def checkpoint(h):  # bf16 deltas of the live weights (not rounded in place) + history so far
            save_deltas(out, "rl", av, ar)
            metrics["rl_history"] = prior + h
            metrics["rl_steps_total"] = len(metrics["rl_history"])
            dump()
            log(f"checkpoint: rl deltas after {len(h)} steps this run")

        h = rl_loop(cfg, av, ar, tok, prompt, train, rl_idx, device, scale, V,
                    deadline - args.eval_reserve_s if not args.smoke else deadline, on_checkpoint=checkpoint)
        metrics["rl_history"] = prior + h
        metrics["rl_steps_total"] = len(metrics["rl_history"])
        save_state(state, "rl", av, ar)
        round_all(av, ar)
        save_deltas(out, "rl", av, ar)
        dump()
    if "eval_rl" in stages:
        evaluate_stage("rl")
    if "polish" in stages:
        from .polish import polish

        metrics["polish"] = polish(cfg, av, ar, tok, prompt, train, device, scale, V, extra_stop=EXTRA_STOP,
                                   stop_at=deadline - 45, log=log)
        round_all(av, ar)
        save_deltas(out, "polish", av, ar)
        dump()
    if "eval_polish" in stages:
        evaluate_stage("polish")
    metrics["meta"] = {"family": args.family, "layer": spec.layer, "injection_char": spec.injection_char,
                       "injection_token_id": prompt.marker_id, "left": prompt.left_id, "right": prompt.right_id,
                       "av_rank": cfg.av_rank, "av_alpha": cfg.av_alpha, "ar_rank": cfg.ar_rank,
                       "ar_alpha": cfg.ar_alpha, "wall_s": time.time() - T0, "resumed_from": resumed}
    dump()
    log("done")


if __name__ == "__main__":
    main()
