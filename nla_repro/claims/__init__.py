"""Published-claims registry: every quantitative claim in the five seed documents and the
recipe's published numbers, as validated data plus comparators.

>>> from nla_repro.claims import load_claims, judge
>>> claims = load_claims()
>>> v = judge(next(c for c in claims if c.id == "s000-gemma27-var-eval-vs-train"), 0.0575)
"""

from .judge import MeasurementShapeError, Verdict, judge
from .schema import (
    COMPARATORS,
    DATA_DIR,
    EXPERIMENTS,
    RELEASED_PAIRS,
    Claim,
    ClaimRegistryError,
    Form,
    claims_for,
    counts_per_experiment,
    counts_per_seed,
    load_claim_file,
    load_claims,
)


def get_claim(claim_id: str) -> Claim:
    """Look up one claim by id in the packaged registry."""
    for c in load_claims():
        if c.id == claim_id:
            return c
    raise KeyError(f"no claim with id {claim_id!r} in {DATA_DIR}")


__all__ = [
    "COMPARATORS",
    "DATA_DIR",
    "EXPERIMENTS",
    "RELEASED_PAIRS",
    "Claim",
    "ClaimRegistryError",
    "Form",
    "MeasurementShapeError",
    "Verdict",
    "claims_for",
    "counts_per_experiment",
    "counts_per_seed",
    "get_claim",
    "judge",
    "load_claim_file",
    "load_claims",
]
