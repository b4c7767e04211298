"""vLLM backend: AV decoding with `prompt_embeds` against a live vLLM OpenAI-compatible server.

The launch flags, the request payload and the reading of the server's metrics are pure functions, tested
without a server. `VLLMBackend` is the client: it speaks HTTP only (the `vllm` package is not imported
here; `pip install 'nla-repro[vllm]'` installs it to run the server), and needs a server launched with
`launch_args(AV_DIR)` whose URL is in `$NLA_REPRO_VLLM_URL`; without one it raises `BackendUnavailable`.

vLLM conventions (targeted: vLLM >= 0.11, the V1 engine; not run against a live server here), from
- docs/features/prompt_embeds.md and examples/online_serving/prompt_embed_inference_with_openai_client.py
  (docs.vllm.ai, v0.11.0 and stable): `/v1/completions` takes `prompt_embeds`, base64 of the
  `torch.save` bytes of one [T, hidden_size] tensor, when the server runs with `--enable-prompt-embeds`;
  a `prompt` sent alongside is decoded as a further choice;
- the server's loader `safe_load_prompt_embeds`: `torch.load(weights_only=True)`, floating point only,
  a leading batch dim of 1 squeezed, hidden size checked, recent versions cast to the served dtype;
- `vllm/entrypoints/openai/completion/protocol.py` (`CompletionRequest`) and PR vllm-project/vllm#22587:
  `stop_token_ids`, `skip_special_tokens`, `repetition_penalty`, `top_k` (0 = off), and
  `return_token_ids`, which puts the generated ids in each choice's `token_ids` (a server without it
  ignores the field and its reply is refused here). Sampling fields left out of a request take the
  checkpoint's generation_config defaults (`--generation-config auto`), so every one is sent;
- prefix caching (on by default in V1): an embeds request's token ids are placeholders, so its cache
  identity rests on a per-block sha256 of the embeds (`_gen_prompt_embeds_extra_hash_keys`, added in
  PR vllm-project/vllm#27219, Oct 2025); keying gaps have been found since (#56655, mixed embeds).
  `--no-enable-prefix-caching` is required as SGLang's radix cache is (trap #7): if the identity misses
  the injected row, different vectors decode identically; and a hit makes one decode depend on an earlier
  request. The client reads the setting from `/metrics` (`vllm:cache_config_info`) and refuses otherwise.

Client conventions, as SGLang's: one request per vector carrying that row's injected embeds exactly as
the HF path builds them (left padding removed; sent as fp32, lossless for a bf16/fp16 AV), the AV's stop
ids as `stop_token_ids`, the reply's `token_ids` cut at the first stop id and detokenised here with the
AV tokenizer (the HF path's convention, not the server's detokeniser). Greedy only, no banned tokens:
vLLM's `seed` and `logit_bias` are not wired, and an unseeded sampled decode must not be cached under a
seeded key. Version = the server's `/version`. Not confirmed: Gemma's multimodal wrapper with
`prompt_embeds` (vLLM does not test embeds on multimodal models; trap #9 is flagged by the sanity checks).
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import torch

from ..decoding import Decoding
from ..verbalize import Verbalization, _eos_ids
from .server import ServerBackend, server_url, unpadded_rows, verbalization_from_ids

REQUIRED_FLAGS = ("--enable-prompt-embeds", "--no-enable-prefix-caching")
WHY_REQUIRED = {
    "--enable-prompt-embeds": "without it the server answers every prompt_embeds request with HTTP 400",
    "--no-enable-prefix-caching": "with prefix caching on, a cache identity that misses the injected row "
                                  "makes different vectors decode identically (trap #7)",
}


def launch_args(model_path: str, *, gpu_memory_utilization: float = 0.85) -> list[str]:
    """Server flags: prompt embeds on, prefix caching off (see the module docstring for why)."""
    return ["vllm", "serve", model_path, "--enable-prompt-embeds", "--no-enable-prefix-caching",
            "--gpu-memory-utilization", str(gpu_memory_utilization), "--trust-remote-code"]


def check_launch_args(args: list[str]) -> None:
    missing = [f for f in REQUIRED_FLAGS if f not in args]
    if missing:
        raise ValueError(f"vLLM launch is missing {missing}: "
                         + "; ".join(f"{f}: {WHY_REQUIRED[f]}" for f in missing))


def encode_prompt_embeds(inputs_embeds) -> str:
    """base64 of `torch.save` of one fp32 [T, d] tensor (vLLM's wire format for `prompt_embeds`)."""
    t = (inputs_embeds.detach().to("cpu", torch.float32) if isinstance(inputs_embeds, torch.Tensor)
         else torch.from_numpy(np.asarray(inputs_embeds, dtype=np.float32)))
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"vLLM takes one unbatched, non-empty [T, d] prompt_embeds tensor per request, "
                         f"got shape {tuple(t.shape)}")
    buf = io.BytesIO()
    torch.save(t.contiguous().clone(), buf)  # clone: torch.save writes a view's whole storage
    return base64.b64encode(buf.getvalue()).decode("ascii")


def completions_payload(inputs_embeds, decoding: Decoding, max_new_tokens: int, model_name: str) -> dict:
    """One `/v1/completions` request: embeds only, never a text `prompt` alongside (it would be decoded as
    a second choice). Every sampling field is explicit so the server's generation_config defaults never
    apply; penalties are neutral here (row_payloads sets the AV's own repetition penalty)."""
    return {"model": model_name, "prompt_embeds": encode_prompt_embeds(inputs_embeds),
            "max_tokens": int(max_new_tokens), "n": 1, "stream": False,
            "temperature": 0.0 if decoding.greedy else decoding.temperature,
            "top_p": 1.0 if decoding.greedy else decoding.top_p,
            "top_k": 0 if decoding.greedy else decoding.top_k,
            "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "skip_special_tokens": False, "return_token_ids": True}


def check_payload(payload: dict) -> None:
    if "prompt" in payload:
        raise ValueError("vLLM payload carries a text prompt together with prompt_embeds: the server would "
                         "decode it as a further choice")
    if not isinstance(payload.get("prompt_embeds"), str):
        raise ValueError("vLLM payload has no prompt_embeds (a base64 string)")


_CACHE_CONFIG_LINE = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.MULTILINE)


def prefix_caching_from_metrics(metrics_text: str) -> bool | None:
    """`enable_prefix_caching` as the server's Prometheus `vllm:cache_config_info` labels report it; None
    when the metric or the label is absent (e.g. a server started with --disable-log-stats)."""
    m = _CACHE_CONFIG_LINE.search(metrics_text)
    label = m and re.search(r'enable_prefix_caching="(\w+)"', m.group("labels"))
    return None if not label else label.group(1) == "True"


# ---------------------------------------------------------------------------------------------- client

SERVER_URL_ENV = "NLA_REPRO_VLLM_URL"
INSTALL_HINT = ("on a CUDA machine, `pip install 'nla-repro[vllm]'` (or any vllm>=0.11), launch the AV with "
                f"`{' '.join(launch_args('AV_DIR'))}` and set {SERVER_URL_ENV}=http://HOST:PORT")


def hf_repetition_penalty(av) -> float:
    """The penalty HF `generate` applies from the AV's generation_config (1.0 when unset)."""
    return float(getattr(av.model.generation_config, "repetition_penalty", None) or 1.0)


def row_payloads(av, vectors, decoding: Decoding, model_name: str) -> list[dict]:
    """One checked request per vector: the row's injected embeds [T, d] with the left padding of the HF
    batch removed, budget min(max_new_tokens, context_cap - T), the AV's stop ids and repetition penalty."""
    eos = _eos_ids(av)
    out = []
    for embeds in unpadded_rows(av, vectors):
        payload = completions_payload(embeds, decoding, decoding.budget(embeds.shape[0]), model_name)
        payload.update(stop_token_ids=eos, repetition_penalty=hf_repetition_penalty(av))
        check_payload(payload)
        out.append(payload)
    return out


def verbalization_from_reply(reply: dict, tokenizer, eos: list[int]) -> Verbalization:
    """A `/v1/completions` reply as a Verbalization in the HF path's convention (text before the first
    stop id, decoded here from the returned ids)."""
    if len(reply.get("choices") or []) != 1:
        raise RuntimeError(f"vLLM reply has {len(reply.get('choices') or [])} choices, expected one")
    choice = reply["choices"][0]
    if choice.get("token_ids") is None:
        raise RuntimeError("vLLM reply carries no token_ids: the server does not support return_token_ids "
                           "(vllm-project/vllm#22587); upgrade it")
    return verbalization_from_ids(choice["token_ids"], choice.get("finish_reason"), tokenizer, eos,
                                  engine="vLLM")


class VLLMBackend(ServerBackend):
    """Client of a live vLLM server (see the module docstring for what it does and does not do)."""

    name = "vllm"
    engine = "vLLM"
    hint = INSTALL_HINT
    generate_path = "/v1/completions"

    def __init__(self, url: str | None = None):
        self.url = server_url(url, SERVER_URL_ENV, self.engine, INSTALL_HINT)
        self.version = str(self._request("/version", timeout=30.0)["version"])
        model = self._request("/v1/models", timeout=30.0)["data"][0]  # the base model is listed first
        self.model_name, self.model_path = model["id"], str(model.get("root") or model["id"])
        prefix_caching = prefix_caching_from_metrics(self._request("/metrics", timeout=30.0, as_json=False))
        if prefix_caching is not False:
            state = "runs with prefix caching on" if prefix_caching else "does not report its prefix caching"
            raise ValueError(f"vLLM server {self.url} {state} (vllm:cache_config_info in /metrics): "
                             f"{WHY_REQUIRED['--no-enable-prefix-caching']}; relaunch with launch_args() "
                             "and without --disable-log-stats")

    def payloads(self, av, vectors, decoding: Decoding) -> list[dict]:
        return row_payloads(av, vectors, decoding, self.model_name)

    def parse_reply(self, reply: dict, tokenizer, eos: list[int]) -> Verbalization:
        return verbalization_from_reply(reply, tokenizer, eos)
