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


def test_experiment_command_refuses_bad_requests_before_loading_anything(capsys):
    """`nla-repro experiment`: unknown experiment, unknown family, or a pair-comparing experiment on one pair
    are errors (exit 2) that name what is wrong; none of them materializes a model."""
    from nla_repro.cli import main

    assert main(["experiment", "no_such_experiment"]) == 2
    assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err
    assert main(["experiment", "ridge_baseline", "--families", "smollm2,qwen"]) == 2
    assert "unknown or empty family list ['qwen']" in capsys.readouterr().err
    assert main(["experiment", "cross_family", "--families", "smollm2"]) == 2
    assert "give at least two families" in capsys.readouterr().err
