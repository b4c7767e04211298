"""SGLang request/launch construction for AV decoding with `input_embeds` (recipe §6.1).

Only the payload and launch flags live here; they are pure functions so the traps they guard are
tested without a server. A live server is optional (`pip install nla-repro[sglang]`).
"""

from __future__ import annotations

import numpy as np

from ..decoding import Decoding

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
BF16_TRANSPORT_MAX_INJECTION_SCALE = 1000.0


def bf16_transport_ok(injection_scale: float) -> bool:
    return injection_scale < BF16_TRANSPORT_MAX_INJECTION_SCALE
