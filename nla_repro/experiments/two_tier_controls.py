"""Two-tier controls (seed 002): category-stratified fidelity vs keyword recall, with three controls.

Protocol (generic over any pair):

- prompts: ``data/prompts_v1.jsonl`` (50 prompts authored for nla-repro: chat 14, code 12, agent 12,
  reasoning 12), verified against their content hashes on load;
- activation: the base model's layer K (= HF ``hidden_states[K+1]``, captured with a hook on block K) at
  the LAST token of the base tokenizer's chat template with ``add_generation_prompt=True`` (template text
  tokenised with ``add_special_tokens=False``, the template supplies any BOS). Source, in order:
  the handle attribute ``two_tier_activation_fn`` (a callable ``(list of messages lists, K) -> [n, d]``;
  an attribute, not an option, because options enter the JSON cache key), else the handle's ``base_spec.load()`` (set by :func:`nla_repro.evalset.make_pair_handle`);
- decodes: ``samples`` (K=3) sampled decodes per prompt, T=1.0, top_p 1, seed ``seed``; failure convention
  TRAINING_DROP (failures are dropped and counted);
- fidelity per category: fve_nrm[per_vector] (seed 002's convention, denominator 1.0 = 2cos-1 mean;
  ``metrics.Denominator.PER_VECTOR``), fve_nrm[train], cos; ``fve_literal``: seed 002's literal
  1 - mse_i/var_d(g_i) per sample, averaged (``identity_2cos`` = |fve_literal - (2cos-1)|);
- keyword recall (:func:`textops.keyword_recall`) per category, share with >= 1 hit, spread (max-min) and
  ratio (max/min) across categories;
- permutation floors: recall of each explanation against another prompt of the SAME category (within) or
  of ANOTHER category (cross), drawn uniformly per explanation, averaged over ``n_perm`` seeded draws;
- random Gaussian: ``n_random`` N(0, I) vectors L2-matched to the mean raw norm of the prompt activations,
  one sampled decode each; fve[per_vector], cos, recall against a random real prompt;
- direction injection: category mean minus overall mean (4), their negations (4), chat-agent and
  agent-chat (2), ``samples`` decodes each; keyword hits per category vocabulary (:data:`CATEGORY_VOCAB`),
  top category; alignment = # positive directions whose top is their own category; negation = #
  negated directions whose top is NOT their own category.

Lists ordered by :data:`CATEGORIES` = [chat, code, agent, reasoning].
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import metrics
from ..activations import extract_layer
from ..decoding import Decoding
from . import textops as T
from .base import experiment
from .quote_ban import decode_condition, train_denominator
from .runner import params

NAME = "two_tier_controls"
CATEGORIES = ("chat", "code", "agent", "reasoning")
PROMPTS_PATH = Path(__file__).with_name("data") / "prompts_v1.jsonl"
DEFAULTS = {"samples": 3, "seed": 42, "temperature": 1.0, "max_new_tokens": 150, "batch_size": 16,
            "n_perm": 20, "n_random": 30, "failure_convention": "training_drop", "ar_max_tokens": 300,
            "prompt_limit": None}
#: Category vocabularies for direction-injection keyword hits (authored for nla-repro; prefix match).
CATEGORY_VOCAB = {
    "chat": ("article", "wiki", "encyclop", "history", "histor", "fact", "question", "answer", "conversation",
             "chat", "animal", "nature", "travel", "food", "recipe", "story", "culture", "science"),
    "code": ("code", "python", "function", "program", "script", "javascript", "java", "sql", "query",
             "class", "variable", "syntax", "snippet", "compile", "algorithm", "regex", "library"),
    "agent": ("file", "repositor", "directory", "path", "commit", "test", "bug", "patch", "config", "deploy",
              "module", "refactor", "terminal", "command", "pytest", "docker", "git", "ci"),
    "reasoning": ("math", "proof", "prove", "equation", "number", "integer", "logic", "puzzle", "probabil",
                  "calculat", "solve", "theorem", "arithmetic", "geometry", "angle", "remainder", "sum"),
}


def load_prompts(path: Path = PROMPTS_PATH) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        canon = json.dumps({"category": r["category"], "messages": r["messages"]}, sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
        h = hashlib.sha256(canon.encode("utf-8")).hexdigest()
        if h != r["content_hash"]:
            raise ValueError(f"{path}: prompt {r['id']!r}: content_hash expected {h}, found {r['content_hash']}")
        if r["category"] not in CATEGORIES:
            raise ValueError(f"{path}: prompt {r['id']!r}: category expected one of {CATEGORIES}, found {r['category']!r}")
    return rows


def prompt_text(row: dict) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")


def chat_template_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def last_token_activations(model, tokenizer, messages_list, layer_index: int) -> np.ndarray:
    """[n, d] fp32: output of block K at the last chat-template token of each prompt (one forward each)."""
    import torch

    dev = next(model.parameters()).device
    out = []
    for msgs in messages_list:
        ids = torch.tensor([chat_template_ids(tokenizer, msgs)], device=dev)
        h = extract_layer(model, ids, torch.ones_like(ids), layer_index)
        out.append(h[0, -1].cpu().numpy())
    return np.stack(out).astype(np.float32)


def _activation_fn(ctx, pair_name, p):
    fn = getattr(ctx.pairs[pair_name], "two_tier_activation_fn", None)
    if fn is not None:
        return fn
    spec = getattr(ctx.pairs[pair_name], "base_spec", None)
    if spec is None:
        raise ValueError(f"two_tier_controls on {pair_name!r}: needs the base model's activations at the last "
                         f"chat-template token: expected a PairHandle attribute two_tier_activation_fn or a "
                         f"PairHandle.base_spec (nla_repro.evalset.make_pair_handle sets it); found neither")

    def fn(messages_list, layer_index):
        model, tok = spec.load()
        return last_token_activations(model, tok, messages_list, layer_index)

    return fn


def _spread(xs) -> float:
    xs = [x for x in xs if np.isfinite(x)]
    return float(max(xs) - min(xs)) if xs else float("nan")


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def top_category(hits: dict) -> str:
    return max(CATEGORIES, key=lambda c: (hits[c], -CATEGORIES.index(c)))


@experiment(NAME, default_n=150, decoding="sampled(T=1.0, top_p=1.0, K=3 per prompt)", denominator="per_vector",
            failure_convention="training_drop")
def two_tier_controls(ctx, pair_name: str) -> dict:
    p = params(ctx, NAME, DEFAULTS)
    pair = ctx.pairs[pair_name].load()
    prompts = load_prompts()
    if p["prompt_limit"]:  # mechanics tests: the first `prompt_limit` prompts of each category
        lim = int(p["prompt_limit"])
        prompts = [r for c in CATEGORIES for r in [x for x in prompts if x["category"] == c][:lim]]
    K = int(p["samples"])
    V = train_denominator(ctx, pair_name, pair)
    acts = np.asarray(_activation_fn(ctx, pair_name, p)([r["messages"] for r in prompts], pair.layer_index),
                      dtype=np.float32)
    if acts.shape != (len(prompts), pair.d_model):
        raise ValueError(f"activation_fn: expected [{len(prompts)}, {pair.d_model}], found {acts.shape}")
    cats = np.array([r["category"] for r in prompts])
    texts = [prompt_text(r) for r in prompts]
    dcd = Decoding(greedy=False, temperature=float(p["temperature"]), top_p=1.0, top_k=0,
                   max_new_tokens=int(p["max_new_tokens"]), seed=int(p["seed"]))
    dec_kw = dict(convention=p["failure_convention"], batch_size=int(p["batch_size"]), ar_max_tokens=p["ar_max_tokens"])
    rep = np.repeat(np.arange(len(prompts)), K)           # sample -> prompt
    gold = acts[rep]
    dec = decode_condition(pair, None, dcd, vectors=gold, key_extra=f"two_tier:{pair_name}:prompts", **dec_kw)
    ok = np.array(dec.scored_idx, dtype=int)
    exps = [dec.explanations[i] for i in ok]
    rec = pair.reconstruct(exps, allow_empty=True)
    mse = np.asarray(metrics.mse_nrm(rec, gold[ok]), dtype=np.float64)
    cos_i = np.asarray(metrics.cos(rec, gold[ok]), dtype=np.float64)
    lit = 1.0 - mse / metrics.per_vector_variance(gold[ok])
    pr = rep[ok]
    recall = np.array([T.keyword_recall(texts[j], e) for j, e in zip(pr, exps)])
    figs: dict = {"two_tier.n_samples": int(len(rep)), "two_tier.n_failed": dec.n_failed,
                  "two_tier.train_denominator": V}
    by = {k: [] for k in ("fve", "fve_train", "fve_literal", "cos", "recall", "recall_ge1", "n")}
    for c in CATEGORIES:
        m = cats[pr] == c
        by["fve"].append(metrics.fve_nrm(mse[m], metrics.PER_VECTOR_DENOMINATOR) if m.any() else float("nan"))
        by["fve_train"].append(metrics.fve_nrm(mse[m], V) if m.any() else float("nan"))
        by["fve_literal"].append(_mean(lit[m]))
        by["cos"].append(_mean(cos_i[m]))
        by["recall"].append(_mean(recall[m]))
        by["recall_ge1"].append(_mean(recall[m] > 0))
        by["n"].append(int(m.sum()))
    overall = {"fve": metrics.fve_nrm(mse, metrics.PER_VECTOR_DENOMINATOR), "fve_train": metrics.fve_nrm(mse, V),
               "fve_literal": _mean(lit), "cos": _mean(cos_i), "recall": _mean(recall),
               "recall_ge1": _mean(recall > 0)}
    for k in ("fve", "fve_train", "fve_literal", "cos", "recall", "recall_ge1"):
        figs[f"two_tier.{k}.by_category"] = by[k]
        figs[f"two_tier.{k}.overall"] = overall[k]
        figs[f"two_tier.{k}.spread"] = _spread(by[k])
    figs["two_tier.n.by_category"] = by["n"]
    rc = [x for x in by["recall"] if np.isfinite(x)]
    figs["two_tier.recall.ratio"] = float(max(rc) / min(rc)) if rc and min(rc) > 0 else float("nan")
    figs["two_tier.identity_2cos"] = abs(overall["fve_literal"] - (2 * overall["cos"] - 1))
    # within-prompt vs cross-prompt sd of per-sample fve[per_vector]
    fve_i = 1.0 - mse
    within, cross = [], []
    for j in range(len(prompts)):
        v = fve_i[pr == j]
        if v.size >= 2:
            within.append(float(np.std(v, ddof=1)))
    for c in CATEGORIES:
        means = [fve_i[pr == j].mean() for j in range(len(prompts)) if cats[j] == c and (pr == j).any()]
        if len(means) >= 2:
            cross.append(float(np.std(means, ddof=1)))
    figs["two_tier.within_prompt_sd"] = _mean(within)
    figs["two_tier.cross_prompt_sd"] = _mean(cross)
    figs["two_tier.sd_ratio"] = [figs["two_tier.cross_prompt_sd"], figs["two_tier.within_prompt_sd"]]
    norms = np.linalg.norm(acts.astype(np.float64), axis=1)
    figs["two_tier.norm.mean"] = float(norms.mean())
    figs["two_tier.norm.by_category"] = [float(norms[cats == c].mean()) for c in CATEGORIES]

    # ---- permutation floors
    rng = np.random.default_rng(int(p["seed"]))
    n_perm = int(p["n_perm"])
    within_r, cross_r = np.zeros((n_perm, len(exps))), np.zeros((n_perm, len(exps)))
    idx_by_cat = {c: np.flatnonzero(cats == c) for c in CATEGORIES}
    for b in range(n_perm):
        for s, (j, e) in enumerate(zip(pr, exps)):
            same = idx_by_cat[cats[j]][idx_by_cat[cats[j]] != j]
            other = np.flatnonzero(cats != cats[j])
            within_r[b, s] = T.keyword_recall(texts[int(rng.choice(same))], e) if same.size else np.nan
            cross_r[b, s] = T.keyword_recall(texts[int(rng.choice(other))], e)
    w_s, c_s = np.nanmean(within_r, axis=0), cross_r.mean(axis=0)
    figs["two_tier.perm.real"] = overall["recall"]
    figs["two_tier.perm.within"] = float(np.nanmean(w_s))
    figs["two_tier.perm.cross"] = float(c_s.mean())
    figs["two_tier.perm.gap_cross"] = overall["recall"] - figs["two_tier.perm.cross"]
    figs["two_tier.perm.gap_within"] = overall["recall"] - figs["two_tier.perm.within"]
    pw = [_mean(w_s[cats[pr] == c]) for c in CATEGORIES]
    figs["two_tier.perm.by_category.real"] = by["recall"]
    figs["two_tier.perm.by_category.within"] = pw
    figs["two_tier.perm.by_category.cross"] = [_mean(c_s[cats[pr] == c]) for c in CATEGORIES]
    figs["two_tier.perm.by_category.gap"] = [a - b for a, b in zip(by["recall"], pw)]
    figs["two_tier.perm.chat_ratio"] = [by["recall"][0], pw[0]]

    # ---- random Gaussian
    n_rand = int(p["n_random"])
    g = np.random.default_rng(int(p["seed"]) + 1).standard_normal((n_rand, pair.d_model))
    g = (g / np.linalg.norm(g, axis=1, keepdims=True) * norms.mean()).astype(np.float32)
    rdec = decode_condition(pair, None, dcd, vectors=g, key_extra=f"two_tier:{pair_name}:random", **dec_kw)
    rok = rdec.scored_idx
    figs["two_tier.random.n"] = len(rok)
    figs["two_tier.random.n_failed"] = rdec.n_failed
    if rok:
        rexp = [rdec.explanations[i] for i in rok]
        rrec = pair.reconstruct(rexp, allow_empty=True)
        rmse = np.asarray(metrics.mse_nrm(rrec, g[rok]), dtype=np.float64)
        figs["two_tier.random.fve"] = metrics.fve_nrm(rmse, metrics.PER_VECTOR_DENOMINATOR)
        figs["two_tier.random.cos"] = float(np.mean(metrics.cos(rrec, g[rok])))
        partner = np.random.default_rng(int(p["seed"]) + 2).integers(len(prompts), size=len(rexp))
        figs["two_tier.random.recall"] = _mean([T.keyword_recall(texts[int(j)], e) for j, e in zip(partner, rexp)])
        heads = [e.split(":", 1)[0].lower() if ":" in e[:80] else e[:80].lower() for e in rexp]
        figs["two_tier.random.attractor"] = _mean([("article" in h and ("format" in h or "structure" in h))
                                                   for h in heads])
        openers = [" ".join(T.words(e)[:3]) for e in rexp]
        figs["two_tier.random.diversity"] = len(set(openers)) / len(openers)
    else:
        for k in ("fve", "cos", "recall", "attractor", "diversity"):
            figs[f"two_tier.random.{k}"] = float("nan")

    # ---- direction injection
    mean_all = acts.mean(axis=0)
    cat_mean = {c: acts[cats == c].mean(axis=0) for c in CATEGORIES}
    directions = {}
    for c in CATEGORIES:
        directions[f"{c}_vs_other"] = cat_mean[c] - mean_all
    for c in CATEGORIES:
        directions[f"NEG_{c}_vs_other"] = -(cat_mean[c] - mean_all)
    directions["chat_minus_agent"] = cat_mean["chat"] - cat_mean["agent"]
    directions["agent_minus_chat"] = cat_mean["agent"] - cat_mean["chat"]
    names = list(directions)
    dvec = np.repeat(np.stack([directions[n] for n in names]).astype(np.float32), K, axis=0)
    ddec = decode_condition(pair, None, dcd, vectors=dvec, key_extra=f"two_tier:{pair_name}:directions", **dec_kw)
    hits, tops = {}, {}
    for k, nme in enumerate(names):
        rows = range(k * K, (k + 1) * K)
        ex = [ddec.explanations[i] if ddec.explanations[i] is not None else ddec.raw[i] for i in rows]
        h = {c: _mean([T.keyword_hits(e, CATEGORY_VOCAB[c]) for e in ex]) for c in CATEGORIES}
        hits[nme] = [h[c] for c in CATEGORIES]
        tops[nme] = top_category(h)
    figs["two_tier.direction.hits"] = hits
    figs["two_tier.direction.top"] = tops
    figs["two_tier.direction.alignment"] = sum(tops[f"{c}_vs_other"] == c for c in CATEGORIES)
    figs["two_tier.direction.negation"] = sum(tops[f"NEG_{c}_vs_other"] != c for c in CATEGORIES)
    figs["two_tier.direction.cross_axis"] = {n: tops[n] for n in ("chat_minus_agent", "agent_minus_chat")}
    figs["two_tier.direction.n_failed"] = ddec.n_failed
    figs["_n"] = int(len(ok))
    figs["_conventions"] = {"decoding": dcd.name + f", {K} per prompt", "failure_convention": str(p["failure_convention"]),
                            "denominator": "per_vector (1.0; fve = 2cos-1 mean) and train (fve_train.*)"}
    figs["_protocol"] = {"prompts": f"{PROMPTS_PATH.name} ({len(prompts)} prompts)", "categories": list(CATEGORIES),
                         "position": "last chat-template token, add_generation_prompt=True",
                         "recall": "keywords = lower-cased alphanumeric runs >= 4 chars minus textops.STOPWORDS",
                         "permutation": f"uniform other prompt per explanation, {n_perm} draws",
                         "direction_hits": "distinct CATEGORY_VOCAB prefixes per explanation; failed decodes "
                                           "read from raw text"}
    return figs
