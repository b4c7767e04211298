"""Stage 0: documents, keyed position sampling, activations at layer K, warm-start explanations."""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..activations import sample_positions
from .warmstart import WarmStartInput, explain

MIN_POSITION = 50


@dataclass(frozen=True)
class Doc:
    id: str
    source: str
    text: str


def load_docs(split: str, limit: int | None = None) -> list[Doc]:
    """Documents of the project corpus (``nla_repro.corpora``), read from the committed exports.

    Falls back to reading ``nla_repro/corpora/data/<split>.jsonl.gz`` directly (same rows) if the corpora
    package cannot be imported (e.g. an older copy on the device)."""
    try:
        from nla_repro.corpora import load_documents

        docs = [Doc(d.id, d.source, d.text) for d in load_documents(split)]
    except Exception as e:  # noqa: BLE001 - report and fall back to the raw export
        p = Path(__file__).resolve().parents[1] / "corpora" / "data" / f"{split}.jsonl.gz"
        if not p.is_file():
            raise FileNotFoundError(f"no corpus for split {split!r}: load_documents failed ({e}) and {p} is missing")
        docs = []
        for line in gzip.decompress(p.read_bytes()).decode("utf-8").splitlines():
            o = json.loads(line)
            docs.append(Doc(o["id"], o["source"], o["text"]))
    return docs[:limit] if limit is not None else docs


@dataclass
class Stage0:
    doc_ids: list[str]
    sources: list[str]
    positions: list[int]
    vectors: np.ndarray          # [N, d] float32 (bf16-exact values when extracted in bf16)
    contexts: list[str]
    final_tokens: list[str]
    next_tokens: list[tuple[str, ...]]
    explanations: list[str]

    def __len__(self):
        return len(self.doc_ids)

    def subset(self, idx) -> "Stage0":
        idx = list(idx)
        return Stage0([self.doc_ids[i] for i in idx], [self.sources[i] for i in idx],
                      [self.positions[i] for i in idx], self.vectors[idx],
                      [self.contexts[i] for i in idx], [self.final_tokens[i] for i in idx],
                      [self.next_tokens[i] for i in idx], [self.explanations[i] for i in idx])


def _decoder(model):
    return model.model


@torch.no_grad()
def extract(model, tok, docs: list[Doc], *, layer: int, positions_per_doc: int, max_length: int,
            max_vectors: int, seed: int = 42, min_position: int = MIN_POSITION, batch_size: int = 32,
            device: str = "cpu", dtype=torch.float32, n_next: int = 2) -> Stage0:
    """Gold = output of block ``layer`` (HF hidden_states[layer+1]); context tokenised with
    add_special_tokens=True, right truncation at ``max_length``; forward in ``dtype``; vectors -> fp32."""
    special = set(int(i) for i in tok.all_special_ids)
    todo = []  # (doc, ids, positions)
    total = 0
    for d in docs:
        ids = tok(d.text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        pos = sample_positions(ids, d.id, seed=seed, n=positions_per_doc, min_position=min_position,
                               special_ids=special)
        if not pos:
            continue
        todo.append((d, ids, pos))
        total += len(pos)
        if total >= max_vectors:
            break
    dec = _decoder(model)
    captured = {}

    def hook(_m, _i, out):
        captured["h"] = out[0] if isinstance(out, (tuple, list)) else out

    h = dec.layers[layer].register_forward_hook(hook)
    out = {k: [] for k in ("doc_ids", "sources", "positions", "vectors", "contexts", "final", "next")}
    try:
        order = sorted(range(len(todo)), key=lambda i: len(todo[i][1]))
        for b in range(0, len(order), batch_size):
            chunk = [todo[i] for i in order[b:b + batch_size]]
            L = max(len(c[1]) for c in chunk)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            ids = torch.full((len(chunk), L), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for r, (_, x, _) in enumerate(chunk):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            ids, mask = ids.to(device), mask.to(device)
            res = dec(input_ids=ids, attention_mask=mask, use_cache=False)
            last = res.last_hidden_state  # after the final norm
            hk = captured["h"]
            for r, (d, x, pos) in enumerate(chunk):
                p = torch.tensor(pos, device=device)
                vec = hk[r, p].float().cpu().numpy().astype(np.float32)
                logits = model.lm_head(last[r, p]).float()
                top = torch.topk(logits, n_next, dim=-1).indices.cpu().tolist()
                for j, pp in enumerate(pos):
                    out["doc_ids"].append(d.id)
                    out["sources"].append(d.source)
                    out["positions"].append(int(pp))
                    out["vectors"].append(vec[j])
                    out["contexts"].append(tok.decode(x[: pp + 1], skip_special_tokens=True))
                    out["final"].append(tok.decode([x[pp]]))
                    out["next"].append(tuple(tok.decode([t]) for t in top[j]))
    finally:
        h.remove()
    # restore document order (then position sample order) so results do not depend on batching
    key = {d.id: i for i, (d, _, _) in enumerate(todo)}
    perm = sorted(range(len(out["doc_ids"])), key=lambda i: (key[out["doc_ids"][i]],
                                                               todo[key[out["doc_ids"][i]]][2].index(out["positions"][i])))
    perm = perm[:max_vectors]
    expl = [explain(WarmStartInput(out["contexts"][i], out["final"][i], out["sources"][i], out["next"][i]))
            for i in perm]
    return Stage0([out["doc_ids"][i] for i in perm], [out["sources"][i] for i in perm],
                  [out["positions"][i] for i in perm],
                  np.stack([out["vectors"][i] for i in perm]).astype(np.float32),
                  [out["contexts"][i] for i in perm], [out["final"][i] for i in perm],
                  [out["next"][i] for i in perm], expl)


def doc_bucket(doc_id: str, salt: str = "default-pair-v1") -> float:
    """Deterministic value in [0, 1) per document (used to split train docs between stages)."""
    return int(hashlib.sha256(f"{salt}|{doc_id}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
