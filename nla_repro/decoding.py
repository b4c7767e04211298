"""Decoding settings, named. Greedy and sampled decodes are different estimators (trap #18)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Decoding:
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0          # 0 = off (the release's -1)
    max_new_tokens: int = 150
    context_cap: int | None = 300   # RL: max_new_tokens = min(150, 300 - prompt_len); None = no cap
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"Decoding.max_new_tokens must be positive, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"Decoding.temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Decoding.top_p must be in (0, 1], got {self.top_p}")

    @property
    def name(self) -> str:
        if self.greedy:
            return f"greedy(max_new={self.max_new_tokens})"
        return (f"sampled(T={self.temperature}, top_p={self.top_p}, top_k={self.top_k or 'off'}, "
                f"max_new={self.max_new_tokens}, seed={self.seed})")

    def budget(self, prompt_len: int) -> int:
        if self.context_cap is None:
            return self.max_new_tokens
        n = min(self.max_new_tokens, self.context_cap - prompt_len)
        if n <= 0:
            raise ValueError(f"AV prompt of {prompt_len} tokens leaves no room under context_cap "
                             f"{self.context_cap}")
        return n

    def as_key(self) -> dict:
        return asdict(self)


GREEDY = Decoding()
RL_SAMPLING = Decoding(greedy=False, temperature=1.0, top_p=1.0, top_k=0)
