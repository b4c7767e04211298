"""CPU check of the materialized default pair through the harness's own code path (nla_repro.pair).

    python -m nla_repro.training.cpu_eval [--n 64] [--repeat 2] [--out FILE]

Gold = fp32 CPU extraction (same eval documents and keyed positions as the device evaluation, first n),
greedy decodes with ``Decoding()`` (max_new_tokens 150), training denominator from the sidecar,
TRAINING_DROP convention (no tag or truncated -> excluded, rate reported).  With ``--repeat 2`` the
greedy decodes are run twice in one process and compared token by token.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="smollm2")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from nla_repro.decoding import Decoding
    from nla_repro.default_pair.materialize import materialize
    from nla_repro.pair import NLAPair

    from .base import load_base, spec_of
    from .data import extract, load_docs
    from ..explanation import extract_explanation
    from ..metrics import mse_nrm
    from .warmstart import WarmStartInput, explain

    t0 = time.time()
    dirs = materialize(a.family)
    spec = spec_of(a.family)
    tok, base = load_base(a.family)
    evs = extract(base, tok, load_docs("eval"), layer=spec.layer, positions_per_doc=2, max_length=512,
                  max_vectors=a.n, batch_size=8)
    del base
    pair = NLAPair.from_dirs(dirs.av, dirs.ar)
    V = pair.train_denominator
    gold = evs.vectors
    t1 = time.time()
    runs = [pair.verbalize(gold, Decoding()) for _ in range(a.repeat)]
    t_dec = (time.time() - t1) / a.repeat
    verbs = runs[0]
    identical = all([v.token_ids for v in r] == [v.token_ids for v in verbs] for r in runs[1:]) if a.repeat > 1 else None
    expl = [extract_explanation(v.text) for v in verbs]
    ok = [i for i, v in enumerate(verbs) if expl[i] is not None and not v.truncated]
    t2 = time.time()
    mse = pair.score([expl[i] for i in ok], gold[ok])
    t_score = time.time() - t2
    rolled = mse_nrm(np.roll(pair.reconstruct([expl[i] for i in ok]), 1, axis=0), gold[ok])
    ceil_txt = [explain(WarmStartInput(evs.contexts[i], evs.final_tokens[i], evs.sources[i], evs.next_tokens[i]))
                for i in range(len(evs))]
    ceil = pair.score(ceil_txt, gold)
    g = torch.Generator().manual_seed(1234)
    gauss = torch.randn(gold.shape, generator=g)
    gauss = (gauss / gauss.norm(dim=1, keepdim=True) * torch.from_numpy(gold).norm(dim=1, keepdim=True)).numpy()
    gv = pair.verbalize(gauss.astype(np.float32), Decoding())
    gx = [extract_explanation(v.text) for v in gv]
    gok = [i for i, v in enumerate(gv) if gx[i] is not None and not v.truncated]
    gm = pair.score([gx[i] for i in gok], gauss[gok]) if gok else np.array([np.nan])
    res = {
        "n": len(verbs), "n_valid": len(ok), "failure_rate": 1 - len(ok) / len(verbs), "train_rawvar": V,
        "fve_nrm": float(1 - mse.mean() / V), "fve_nrm_median": float(1 - np.median(mse) / V),
        "mse_nrm_mean": float(mse.mean()),
        "fve_nrm_failures_charged_2": float(1 - np.concatenate([mse, np.full(len(verbs) - len(ok), 2.0)]).mean() / V),
        "shuffled_null_fve": float(1 - rolled.mean() / V),
        "random_gaussian_fve": float(1 - gm.mean() / V), "random_gaussian_failure_rate": 1 - len(gok) / len(gv),
        "ar_ceiling_fve": float(1 - ceil.mean() / V),
        "greedy_bit_identical_repeats": identical, "repeats": a.repeat,
        "greedy_token_ids_sha256": hashlib.sha256(json.dumps([list(v.token_ids) for v in verbs]).encode()).hexdigest(),
        "gold_sha256": hashlib.sha256(np.ascontiguousarray(gold).tobytes()).hexdigest(),
        "decode_seconds_per_run": t_dec, "score_seconds": t_score, "threads": torch.get_num_threads(),
        "total_seconds": time.time() - t0,
        "examples": [{"context_tail": evs.contexts[i][-120:], "av": verbs[i].text} for i in range(3)],
    }
    print(json.dumps(res, indent=1, ensure_ascii=False))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1, ensure_ascii=False)
    return res


if __name__ == "__main__":
    main()
