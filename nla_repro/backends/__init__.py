"""Decoding engines behind one small interface. `hf` (transformers) is the reference; serving engines
are optional extras, and a test that needs one is skipped with a reason when it is not available.

A backend decodes AV explanations: `decode(av, vectors, decoding, *, batch_size, banned_token_ids)`
returns one `nla_repro.verbalize.Verbalization` per vector, with the same conventions as the HF path
(text up to and excluding EOS, `truncated` when the token budget ran out). Its `name`, `version` and
the sha256 of its module's source (with the modules of its base classes) go into every experiment's cache
key and provenance (`identity()`), so a number decoded by one engine (or one client version) is never
served for another.

`get_backend(name)` builds the backend or raises `BackendUnavailable` (engine package missing, server
not configured); it never substitutes another engine. This module imports no engine (it is loaded by
the pytest plugin at start-up).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from pathlib import Path
from typing import Protocol

#: name -> "module:class" of each backend, imported only when asked for
BACKENDS = {
    "hf": "nla_repro.backends.hf:HFBackend",
    "sglang": "nla_repro.backends.sglang:SGLangBackend",
    "vllm": "nla_repro.backends.vllm:VLLMBackend",
}
DEFAULT_BACKEND = "hf"


class BackendUnavailable(RuntimeError):
    """A decoding engine cannot be used here; the message names what is missing and how to install it."""


class Backend(Protocol):
    name: str
    version: str

    def decode(self, av, vectors, decoding, *, batch_size: int = 16, banned_token_ids=None) -> list:
        """One Verbalization per row of `vectors` [n, d]."""


def get_backend(name: str = DEFAULT_BACKEND) -> Backend:
    """The backend called `name`; `BackendUnavailable` when its engine is missing, never a fallback."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: expected one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def code_digest(cls: type) -> str:
    """sha256[:16] of the source of the module defining `cls`, followed by that of each further module
    defining one of its base classes (for the live-server clients: `backends.server`)."""
    h = hashlib.sha256()
    for f in dict.fromkeys(inspect.getsourcefile(c) for c in cls.__mro__ if c.__module__ != "builtins"):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def identity(name: str) -> dict:
    """`{"name", "version", "code"}` of backend `name` (cache-key and provenance field; code = `code_digest`
    of the backend's class); raises `BackendUnavailable` if the engine is missing."""
    b = get_backend(name)
    return {"name": b.name, "version": b.version, "code": code_digest(type(b))}
