"""The reference backend: transformers `generate(inputs_embeds=...)` in this process (`nla_repro.verbalize`)."""

from __future__ import annotations

import transformers

from ..decoding import Decoding
from ..verbalize import verbalize


class HFBackend:
    """Decodes with the AV's own HF model; version = the transformers version."""

    name = "hf"
    version = transformers.__version__

    def decode(self, av, vectors, decoding: Decoding = Decoding(), *, batch_size: int = 16,
               banned_token_ids=None) -> list:
        return verbalize(av, vectors, decoding, batch_size=batch_size, banned_token_ids=banned_token_ids)
