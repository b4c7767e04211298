"""Extracting the explanation from an AV generation, and the three failure conventions.

- TRAINING_DROP (the logged training fve_nrm): a sample fails if the `<explanation>` regex misses,
  the generation was cut by the length limit, or the AR prompt exceeds `ar_max_tokens`; failures are
  dropped from the mean and counted separately.
- REWARD_CHARGE_2 (the RL reward): failures are charged mse_nrm = 2.0 (orthogonal-equivalent).
- CLIENT_RAW (the inference client): on a regex miss the whole raw generation is scored by the AR.
Each convention gives a different number (trap #14); every result names the one it used.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np

EXPLANATION_RE = re.compile(r"<explanation>(.*?)</explanation>", re.DOTALL)
FAILED_MSE = 2.0
AR_PROMPT_MAX_TOKENS = 300  # RL rollouts fail samples whose AR prompt is longer (rl.sh; default 512)


class FailureConvention(str, enum.Enum):
    TRAINING_DROP = "training_drop"
    REWARD_CHARGE_2 = "reward_charge_2"
    CLIENT_RAW = "client_raw"


def extract_explanation(text: str) -> str | None:
    """First `<explanation>...</explanation>` match, stripped (AR-SFT saw stripped text)."""
    m = EXPLANATION_RE.search(text)
    return m.group(1).strip() if m else None


@dataclass(frozen=True)
class Parsed:
    text_for_ar: str | None   # what the AR scores (None = nothing is scored)
    failed: bool
    reason: str | None        # "no_tag" | "truncated" | "ar_prompt_too_long" | None


def parse(raw_text: str, truncated: bool, convention: FailureConvention) -> Parsed:
    exp = extract_explanation(raw_text)
    if convention is FailureConvention.CLIENT_RAW:
        return Parsed(exp if exp is not None else raw_text.strip(), exp is None,
                      None if exp is not None else "no_tag")
    if exp is None:
        return Parsed(None, True, "no_tag")
    if truncated:
        return Parsed(None, True, "truncated")
    return Parsed(exp, False, None)


@dataclass(frozen=True)
class Accounted:
    mse: np.ndarray           # per-sample mse_nrm, NaN where dropped
    n_total: int
    n_failed: int
    reasons: dict
    convention: FailureConvention

    @property
    def scored(self) -> np.ndarray:
        return self.mse[~np.isnan(self.mse)]

    @property
    def failure_rate(self) -> float:
        return self.n_failed / self.n_total if self.n_total else 0.0


def account(mse_of_scored: np.ndarray, parsed: list[Parsed], convention: FailureConvention) -> Accounted:
    """Combine AR scores (for samples that had text to score) with the failure convention.

    `mse_of_scored[i]` is NaN where `parsed[i].text_for_ar is None`.
    """
    mse = np.array(mse_of_scored, dtype=np.float64).copy()
    reasons: dict[str, int] = {}
    for i, p in enumerate(parsed):
        if p.failed:
            reasons[p.reason] = reasons.get(p.reason, 0) + 1
            if convention is FailureConvention.REWARD_CHARGE_2:
                mse[i] = FAILED_MSE
            elif convention is FailureConvention.TRAINING_DROP:
                mse[i] = np.nan
    return Accounted(mse=mse, n_total=len(parsed), n_failed=sum(reasons.values()), reasons=reasons,
                     convention=convention)
