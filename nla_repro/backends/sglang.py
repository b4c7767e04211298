"""SGLang backend: AV decoding with `input_embeds` against a live SGLang server (recipe §6.1).

The launch flags and the request payload are pure functions, so the traps they guard (#7 radix cache,
#8 `input_ids` alongside embeds) are tested without a server. `SGLangBackend` is the client: it needs
the `sglang` package (`pip install 'nla-repro[sglang]'`) and a server launched with `launch_args(AV_DIR)`
whose URL is in `$NLA_REPRO_SGLANG_URL`; without either it raises `BackendUnavailable`.

Client conventions: one `/generate` request per vector carrying that row's injected embeds exactly as
the HF path builds them (left padding removed), the AV's stop ids sent as `stop_token_ids`, the reply's
`output_ids` cut at the first stop id and detokenised here with the AV tokenizer (so the text follows
the HF path's convention, not the server's detokeniser). Greedy only, no banned tokens: SGLang's
sampling seed and logit-bias parameters are not wired, and an unseeded sampled decode must not be
cached under a seeded key. Version = the server's reported version.
"""

from __future__ import annotations

import numpy as np

from . import BackendUnavailable
from ..decoding import Decoding
from ..verbalize import Verbalization, _eos_ids
from .server import ServerBackend, server_url, unpadded_rows, verbalization_from_ids

REQUIRED_FLAGS = ("--disable-radix-cache",)


def launch_args(model_path: str, *, gemma: bool = False, mem_fraction: float = 0.85) -> list[str]:
    """Server flags. Radix cache off is required: it keys on token ids and aliases embeds requests
    (trap #7). Gemma needs fa3 (flashinfer OOMs at head_dim 256) and the gemma3_mm bypass patch."""
    args = ["python", "-m", "sglang.launch_server", "--model-path", model_path, "--disable-radix-cache",
            "--mem-fraction-static", str(mem_fraction), "--trust-remote-code"]
    if gemma:
        args += ["--attention-backend", "fa3", "--context-length", "512"]
    return args


def check_launch_args(args: list[str]) -> None:
    missing = [f for f in REQUIRED_FLAGS if f not in args]
    if missing:
        raise ValueError(f"SGLang launch is missing {missing}: with the radix cache on, different vectors "
                         "share cached prefixes and decode identically (trap #7)")


def generate_payload(inputs_embeds, decoding: Decoding, max_new_tokens: int) -> dict:
    """One `/generate` request: embeds only, never `input_ids` alongside (trap #8: logprob misalignment)."""
    e = np.asarray(inputs_embeds, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError(f"SGLang takes one unbatched [T, d] embeds array per request, got {e.shape}")
    params = {"max_new_tokens": int(max_new_tokens), "skip_special_tokens": False,
              "temperature": 0.0 if decoding.greedy else decoding.temperature,
              "top_p": 1.0 if decoding.greedy else decoding.top_p,
              "top_k": -1 if (decoding.greedy or not decoding.top_k) else decoding.top_k}
    return {"input_embeds": e.tolist(), "sampling_params": params}


def check_payload(payload: dict) -> None:
    if "input_ids" in payload or "text" in payload:
        raise ValueError("SGLang payload carries input_ids/text together with input_embeds (trap #8)")
    if "input_embeds" not in payload:
        raise ValueError("SGLang payload has no input_embeds")

# The release's rollout sends bf16-base64 embeds only when injection_scale < 1000 (Qwen 150, Llama 30):
# at Gemma's 60000-80000 the bf16 resolution of the injected row would be ~256 (nla_generate.py:54-59).
# This client always sends fp32 (generate_payload), so the threshold is only a recorded recipe constant
# (checked by the recipe_constants experiment), never a transport switch.
BF16_TRANSPORT_MAX_INJECTION_SCALE = 1000.0


# ---------------------------------------------------------------------------------------------- client

SERVER_URL_ENV = "NLA_REPRO_SGLANG_URL"
INSTALL_HINT = ("install it with `pip install 'nla-repro[sglang]'` (a CUDA machine), launch the AV with "
                f"`{' '.join(launch_args('AV_DIR'))}` and set {SERVER_URL_ENV}=http://HOST:PORT")


def row_payloads(av, vectors, decoding: Decoding) -> list[dict]:
    """One checked `/generate` request per vector: the row's injected embeds [T, d] with the left padding
    of the HF batch removed, budget min(max_new_tokens, context_cap - T), the AV's stop ids."""
    eos = _eos_ids(av)
    out = []
    for embeds in unpadded_rows(av, vectors):
        payload = generate_payload(embeds.float().cpu().numpy(), decoding, decoding.budget(embeds.shape[0]))
        payload["sampling_params"]["stop_token_ids"] = eos
        check_payload(payload)
        out.append(payload)
    return out


def verbalization_from_reply(reply: dict, tokenizer, eos: list[int]) -> Verbalization:
    """A `/generate` reply as a Verbalization in the HF path's convention (text before the first stop id)."""
    reason = reply["meta_info"]["finish_reason"]
    return verbalization_from_ids(reply["output_ids"], reason["type"], tokenizer, eos, engine="SGLang",
                                  reason=reason)


class SGLangBackend(ServerBackend):
    """Client of a live SGLang server (see the module docstring for what it does and does not do)."""

    name = "sglang"
    engine = "SGLang"
    hint = INSTALL_HINT
    generate_path = "/generate"

    def __init__(self, url: str | None = None):
        try:
            import sglang  # noqa: F401  (the engine this backend names; the server runs from it)
        except ImportError as e:
            raise BackendUnavailable(f"the SGLang engine is not installed (`import sglang` failed: {e}); "
                                     f"{INSTALL_HINT}") from e
        self.url = server_url(url, SERVER_URL_ENV, self.engine, INSTALL_HINT)
        self.server = self._request("/get_server_info", timeout=30.0)
        if not self.server.get("disable_radix_cache"):
            raise ValueError(f"SGLang server {self.url} runs with the radix cache on: different vectors share "
                             "cached prefixes and decode identically (trap #7); relaunch with launch_args()")
        self.version = str(self.server["version"])
        self.model_path = str(self.server.get("model_path", ""))

    def payloads(self, av, vectors, decoding: Decoding) -> list[dict]:
        return row_payloads(av, vectors, decoding)

    def parse_reply(self, reply: dict, tokenizer, eos: list[int]) -> Verbalization:
        return verbalization_from_reply(reply, tokenizer, eos)
