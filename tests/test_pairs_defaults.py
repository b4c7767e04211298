"""Which embedded default pairs a session evaluates (`--default-pairs`), without loading any model."""
from __future__ import annotations

import pytest

from nla_repro.pairs import DEFAULT_PAIRS, PairRegistry, PairUnavailable, default_pair_name
from nla_repro.plugin import parse_default_pairs


def test_default_pairs_option_parses_and_refuses_unknown_families():
    assert parse_default_pairs("smollm2") == ("smollm2",)
    assert parse_default_pairs(" smollm2, gemma3 ,smollm2") == ("smollm2", "gemma3")
    for bad in ("", "llama", "smollm2,qwen"):
        with pytest.raises(pytest.UsageError, match="--default-pairs"):
            parse_default_pairs(bad)


def test_registry_names_follow_the_selected_defaults_and_user_pairs_replace_them():
    assert PairRegistry().names == ["default-smollm2"]
    assert PairRegistry(defaults=("smollm2", "gemma3")).names == ["default-smollm2", "default-gemma3"]
    assert PairRegistry(dirs={"mine": ("a", "b")}, defaults=("gemma3",)).names == ["mine"]
    assert {default_pair_name(f) for f, _ in DEFAULT_PAIRS.values()} == set(DEFAULT_PAIRS)
    with pytest.raises(PairUnavailable, match="no embedded default pair"):
        default_pair_name("qwen2")
    with pytest.raises(PairUnavailable, match="was not provided"):
        PairRegistry(dirs={"mine": ("a", "b")}).get("default-gemma3")  # a user pair set excludes the defaults
