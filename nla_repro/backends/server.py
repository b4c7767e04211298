"""What the live-server clients (`sglang`, `vllm`) share: the server URL, the HTTP helper, the rows each
request carries, the reading of a reply's generated ids in the HF path's convention, and `decode`.

`ServerBackend` is their base class, so this module's source is part of their `identity()` code digest
(`nla_repro.backends.identity` hashes every module in the backend class's MRO).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import BackendUnavailable
from ..decoding import Decoding
from ..verbalize import Verbalization, _eos_ids, build_av_inputs


def server_url(url: str | None, env: str, engine: str, hint: str) -> str:
    """`url`, else `$env`, without a trailing slash; `BackendUnavailable` when neither is set."""
    url = url or os.environ.get(env)
    if not url:
        raise BackendUnavailable(f"no {engine} server configured (${env} is unset); {hint}")
    return url.rstrip("/")


def request(url: str, payload: dict | None = None, timeout: float = 600.0, *, engine: str, hint: str,
            as_json: bool = True):
    """GET (no payload) or POST JSON; the reply as JSON, or as text when `as_json` is false. An HTTP error
    is the server's answer (`RuntimeError`); no answer at all is a missing engine (`BackendUnavailable`)."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:  # the server answered: a real error, not a missing engine
        raise RuntimeError(f"{engine} server {url}: HTTP {e.code}: {e.read()[:500]!r}") from e
    except urllib.error.URLError as e:
        raise BackendUnavailable(f"{engine} server {url} is not reachable ({e.reason}); {hint}") from e
    return json.loads(body) if as_json else body.decode("utf-8", "replace")


def unpadded_rows(av, vectors) -> list:
    """Each vector's injected embeds [T, d] exactly as the HF path builds them, its row's left padding
    removed (so T is that row's own prompt length)."""
    inputs = build_av_inputs(av, vectors)
    return [inputs.inputs_embeds[b][inputs.attention_mask[b].bool()] for b in range(inputs.input_ids.shape[0])]


def verbalization_from_ids(ids, finish: str, tokenizer, eos: list[int], *, engine: str,
                           reason=None) -> Verbalization:
    """A reply's generated ids as a Verbalization in the HF path's convention: ids and text before the first
    stop id (decoded here with the AV tokenizer, not the server's detokeniser), `n_new_tokens` counting the
    stop id, `truncated` when the budget ran out. `finish` must be "stop" or "length"; otherwise a
    `RuntimeError` shows `reason` (default: `finish`)."""
    if finish not in ("stop", "length"):
        raise RuntimeError(f"{engine} request finished with {finish if reason is None else reason!r}")
    ids = [int(t) for t in ids]
    stop = next((i for i, t in enumerate(ids) if t in eos), None)
    toks = ids if stop is None else ids[:stop]
    truncated = finish == "length"
    return Verbalization(text=tokenizer.decode(toks, skip_special_tokens=False), token_ids=tuple(toks),
                         truncated=truncated, n_new_tokens=len(toks) + (0 if truncated else 1))


class ServerBackend:
    """Base of the live-server clients. A subclass sets `name`, `engine` (its name in messages), `hint`
    (how to install and launch it), `generate_path`, and in `__init__` `url` and `model_path` (the
    checkpoint the server serves); it implements `payloads` and `parse_reply`."""

    name: str
    engine: str
    hint: str
    generate_path: str
    url: str
    model_path: str

    def _request(self, path: str, payload: dict | None = None, timeout: float = 600.0, *, as_json: bool = True):
        return request(f"{self.url}{path}", payload, timeout, engine=self.engine, hint=self.hint, as_json=as_json)

    def payloads(self, av, vectors, decoding: Decoding) -> list[dict]:
        """One checked request per vector."""
        raise NotImplementedError

    def parse_reply(self, reply: dict, tokenizer, eos: list[int]) -> Verbalization:
        raise NotImplementedError

    def decode(self, av, vectors, decoding: Decoding = Decoding(), *, batch_size: int = 16,
               banned_token_ids=None) -> list[Verbalization]:
        """Greedy only, no banned tokens: the engines' sampling seed and logit bias are not wired, and an
        unseeded sampled decode must not be cached under a seeded key. `batch_size` requests in flight."""
        if not decoding.greedy or banned_token_ids:
            raise NotImplementedError(f"the {self.engine} backend decodes greedily without banned tokens only "
                                      "(sampling seed and logit bias are not wired); use --backend hf")
        served = Path(self.model_path).expanduser().resolve()
        if served != Path(av.path).resolve():
            raise ValueError(f"{self.engine} server {self.url} serves {served}, not the AV {av.path}: results "
                             "would be cached under the wrong checkpoint's hash")
        payloads = self.payloads(av, vectors, decoding)
        with ThreadPoolExecutor(max_workers=batch_size) as pool:
            replies = list(pool.map(lambda p: self._request(self.generate_path, p), payloads))
        eos = _eos_ids(av)
        return [self.parse_reply(r, av.tokenizer, eos) for r in replies]
