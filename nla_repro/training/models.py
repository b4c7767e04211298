"""AR / AV modules for training: truncation, value head, prompts, injection, losses, sampling."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..explanation import extract_explanation
from ..reconstruct import pad_right
from .config import AR_TEMPLATE, AV_TEMPLATE

def autocast(device: str, enabled: bool = True):
    if device.startswith("cuda") and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ----------------------------------------------------------------------------------------------- AR
class ARModel(nn.Module):
    """Base LM truncated to K+1 blocks, final norm = Identity, no lm_head; value head Linear(d, d)."""

    def __init__(self, base_causal_lm, layer: int):
        super().__init__()
        dec = copy.deepcopy(base_causal_lm.model)
        dec.layers = nn.ModuleList(list(dec.layers)[: layer + 1])
        dec.config = copy.deepcopy(dec.config)
        dec.config.num_hidden_layers = layer + 1
        for key in ("layer_types",):
            v = getattr(dec.config, key, None)
            if isinstance(v, list):
                setattr(dec.config, key, v[: layer + 1])
        dec.norm = nn.Identity()
        self.backbone = dec
        d = dec.config.hidden_size
        self.value_head = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.value_head.weight.copy_(torch.eye(d))
        self.value_head.to(next(dec.parameters()).device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        # right-most real token (argmax of cumsum of the mask), robust to either padding side
        last = torch.argmax(torch.cumsum(mask, dim=1) * mask, dim=1)
        hl = h[torch.arange(h.shape[0], device=h.device), last]
        return self.value_head(hl.to(self.value_head.weight.dtype)).float()


def ar_prompt(explanation: str) -> str:
    return AR_TEMPLATE.format(explanation=explanation.strip())


def ar_ids(tok, explanation: str) -> list[int]:
    return list(tok(ar_prompt(explanation), add_special_tokens=True)["input_ids"])


def mse_nrm_torch(pred: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """2(1 - cos) per row, fp32 (scale-free training loss)."""
    p = F.normalize(pred.float(), dim=-1, eps=1e-12)
    g = F.normalize(gold.float(), dim=-1, eps=1e-12)
    return ((p - g) ** 2).sum(-1)


@torch.no_grad()
def ar_predict(ar: ARModel, tok, explanations: list[str], *, device: str, batch: int = 256) -> np.ndarray:
    ar.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    outs = []
    for b in range(0, len(explanations), batch):
        ids, mask = pad_right([ar_ids(tok, e) for e in explanations[b:b + batch]], pad)
        with autocast(device):
            outs.append(ar(ids.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, ar.value_head.weight.shape[0]), np.float32)


# ----------------------------------------------------------------------------------------------- AV
@dataclass(frozen=True)
class AVPrompt:
    ids: list[int]
    inject_pos: int
    marker_id: int
    left_id: int
    right_id: int
    message: str


def av_message(marker: str) -> str:
    return AV_TEMPLATE.replace("<INJECT>", marker)


def build_av_prompt(tok, marker: str) -> AVPrompt:
    msg = av_message(marker)
    out = tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=True,
                                  add_generation_prompt=True, return_dict=False)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    ids = [int(i) for i in (out[0] if out and isinstance(out[0], list) else out)]
    mk = tok.encode(marker, add_special_tokens=False)
    if len(mk) != 1:
        raise ValueError(f"marker {marker!r} is not a single token: {mk}")
    hits = [p for p, t in enumerate(ids) if t == mk[0]]
    if len(hits) != 1 or hits[0] in (0, len(ids) - 1):
        raise ValueError(f"marker {marker!r} must occur once, inside the AV prompt; found at {hits}")
    p = hits[0]
    return AVPrompt(ids, p, mk[0], ids[p - 1], ids[p + 1], msg)


def normalize_to_scale(v: torch.Tensor, scale: float) -> torch.Tensor:
    """Recipe §2.4: fp32 L2 norm, clamp 1e-12, one division v / (norm / s)."""
    v = v.float()
    n = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v / (n / scale)


def av_embeds(model, prompt: AVPrompt, ids: torch.Tensor, vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """Input embeddings with the marker row replaced by the normalised vector (neighbour-checked)."""
    p = prompt.inject_pos
    if not (bool((ids[:, p] == prompt.marker_id).all()) and bool((ids[:, p - 1] == prompt.left_id).all())
            and bool((ids[:, p + 1] == prompt.right_id).all())):
        raise ValueError("injection site does not hold the marker between its neighbours")
    emb = model.get_input_embeddings()(ids)
    emb = emb.clone()
    emb[:, p] = normalize_to_scale(vectors, scale).to(emb.dtype)
    return emb


def end_of_turn_id(tok, end_of_turn: str | None) -> int:
    """Id that ends an AV answer: the family's end-of-turn token, or the tokenizer's EOS."""
    if end_of_turn is None:
        return int(tok.eos_token_id)
    i = tok.convert_tokens_to_ids(end_of_turn)
    if i is None or i == tok.unk_token_id:
        raise ValueError(f"end-of-turn token {end_of_turn!r} is not in the tokenizer")
    return int(i)


def av_target_ids(tok, explanation: str, end_id: int) -> list[int]:
    """SFT target: the wrapped explanation (no special tokens added) followed by ``end_id``."""
    from .warmstart import wrap

    return list(tok(wrap(explanation), add_special_tokens=False)["input_ids"]) + [int(end_id)]


def token_logprobs(model, prompt: AVPrompt, seqs: list[list[int]], vectors: torch.Tensor, scale: float,
                   *, device: str, n_prompt: int) -> list[torch.Tensor]:
    """Log-probs of every non-prompt token of each full sequence (prompt + continuation)."""
    pad = 0
    ids, mask = pad_right(seqs, pad)
    ids, mask = ids.to(device), mask.to(device)
    with autocast(device):
        emb = av_embeds(model, prompt, ids, vectors.to(device), scale)
        h = model.model(inputs_embeds=emb, attention_mask=mask, use_cache=False).last_hidden_state
    out = []
    lens = mask.sum(1).tolist()
    # gather the predicting positions [n_prompt-1, len-2] for all rows, one lm_head call
    rows, cols, tgt = [], [], []
    for i, L in enumerate(lens):
        r = torch.arange(n_prompt - 1, L - 1, device=device)
        rows.append(torch.full_like(r, i))
        cols.append(r)
        tgt.append(ids[i, n_prompt:L])
    rows, cols, tgt = torch.cat(rows), torch.cat(cols), torch.cat(tgt)
    with autocast(device):
        logits = model.lm_head(h[rows, cols])
    lp = torch.log_softmax(logits.float(), dim=-1).gather(1, tgt[:, None])[:, 0]
    off = 0
    for L in lens:
        n = L - n_prompt
        out.append(lp[off:off + n])
        off += n
    return out


@dataclass
class Sample:
    new_ids: list[int]      # generated ids up to and including EOS (or max_new_tokens ids)
    text: str               # decoded (special tokens kept)
    explanation: str | None
    truncated: bool


def stop_ids(tok, extra: tuple[str, ...] = ()) -> list[int]:
    ids = [int(tok.eos_token_id)]
    for t in extra:
        i = tok.convert_tokens_to_ids(t)
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


@torch.no_grad()
def generate(model, tok, prompt: AVPrompt, vectors: torch.Tensor, scale: float, *, device: str,
             greedy: bool, max_new_tokens: int, batch: int = 256, seed: int | None = None,
             extra_stop: tuple[str, ...] = ()) -> list[Sample]:
    """Batched AV decoding; stops on tokenizer EOS and on ``extra_stop`` tokens.  NOTE: the device run
    that produced the shipped deltas stopped on EOS only (extra_stop was added afterwards, see
    FamilySpec.extra_stop_tokens)."""
    model.eval()
    stops = stop_ids(tok, extra_stop)
    eos = stops[0]
    res = []
    if seed is not None:
        torch.manual_seed(seed)
    base = torch.tensor(prompt.ids, dtype=torch.long)
    for b in range(0, vectors.shape[0], batch):
        v = vectors[b:b + batch].to(device)
        ids = base[None].repeat(v.shape[0], 1).to(device)
        with autocast(device):
            emb = av_embeds(model, prompt, ids, v, scale)
            kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
            out = model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=eos, **kw)
        out = out.cpu().tolist()
        for row in out:
            if len(row) > max_new_tokens:  # some versions return prompt placeholders too
                row = row[len(prompt.ids):]
            stop = next((j for j, t in enumerate(row) if t in stops), None)
            if stop is not None:
                row = row[: stop + 1]
                trunc = False
            else:
                trunc = True
            text = tok.decode(row[:-1] if stop is not None else row, skip_special_tokens=False)
            res.append(Sample(row, text, extract_explanation(text), trunc))
    return res
