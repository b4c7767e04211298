"""The figure vocabulary: which figure keys each experiment emits, declared as patterns.

A claim names an ``experiment`` and a ``figure``; the figure must be one the experiment emits
(:data:`FIGURES`), a cross-pair figure derived from emitted ones (:mod:`nla_repro.claims.aggregate`), or
a figure no experiment measures yet (:data:`UNMEASURED`, each with the reason).  The registry test checks
every testable claim against these, and the experiment tests check each declaration against a real run on
the tiny fixture pairs (every emitted key declared, every declared alternative emitted).

Pattern syntax (matched against the whole key): ``*`` = one or more characters other than ``.`` (a pair's
short name, a layer ``L<K>``, an N); ``{a|b|c}`` = one of the alternatives; everything else literal.
Pair segments in cross-pair keys are the short names of :func:`nla_repro.experiments.cross_family.short`.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
from typing import Iterable

__all__ = ["FIGURES", "UNMEASURED", "matches", "emits", "undeclared", "unexercised"]

_Q = "{nmse|cos|fve|frac_fve_lt0|n}"  # quote_ban.put / score_texts summary keys

FIGURES: dict[str, tuple[str, ...]] = {
    "corroboration": (
        "fve_nrm.{train|own|meannorm|per_vector|reward_charge_2|client_raw|train_ci95}",
        "fve_nrm.{frac_gt_0.5|frac_gt_0.8|frac_lt_0}", "nmse.{mean|median}", "cos.{mean|mean_by_condition}",
        "explanation.{tag_failure_rate|failure_rate_scored_convention|n_scored}",
        "null.{shuffled|predict_mean|gaussian}.fve_own", "null.gaussian.tag_failure_rate",
        "var_nrm.{own|train|identity}", "meannorm.own", "metric.identity_2_1_cos",
    ),
    "variance_baseline": (
        "var_nrm.{own|train|own_minus_train}", "meannorm.{own|identity|identity_abs_error}",
        "norm.{raw_mean|raw_median}",
    ),
    "greedy_reproducibility": (
        "greedy.{nmse_runs|nmse|nmse_hex|bits_equal|token_ids_equal|needle_token_ids_equal|needle_index}",
        "greedy.{control_sampled_differ|control_n_rows_differing}",
    ),
    "best_of_n": (
        "best_of_n", "best_of_n.{fve|nmse|cos|n_dropped}.*", "best_of_n.{fve|nmse}.{greedy|mean*}",
        "best_of_n.{fve_sequence|n_grid|gain_per_doubling|per_doubling|total_gain|residual}",
        "best_of_n.{sample_vs_greedy|tag_failure_rate}",
    ),
    "adjacent_layers": (
        "adjacent.L*.{cos|offset|nmse|fve|nmse_vs_K|bound}",
        "adjacent.{offset|bound_ratio|within_additive_bound|raw_norms|layers}",
    ),
    "recipe_constants": (
        "recipe.{d_model|layer_index|av_layer_index|ar_num_hidden_layers|ar_layers_eq_K_plus_1}",
        "recipe.{base_layers|gold_hidden_states_index|depth_pct}",
        "recipe.{injection_scale|bf16_resolution|mse_scale|mse_scale_eq_sqrt_d|embed_scale|value_head_shape}",
        "recipe.{injection_token|injection_token_id|left_neighbor_id|right_neighbor_id|critic_suffix_ids}",
        "recipe.sidecars_agree", "sidecar.drift",
        "recipe.{min_position|positions_per_doc|ar_prompt_cap|max_new_tokens|bf16_threshold|baseline_rows}",
        "recipe.step0_tol",
    ),
    "cross_family": (
        "cross_family.{fve|ci|null|real_minus_null|n_scored}.*.*", "cross_family.ratio.*.*",
        "cross_family.{null|ratio|real_minus_null|alignment_error}", "cross_family.alignment_error.*",
        "cross_family.tag_failure_rate.*", "transfer_matrix",
        "matrix.fve.*.*", "matrix.frac.*.*", "matrix.frac.into_*", "matrix.row_mean.*",
        "matrix.{frac|null|ci_halfwidth|tag_failure_rate}", "matrix.fve.off_diagonal_min",
        "matrix.left_context.{min|n_below_50}", "matrix.left_context.{min|n_below_50}.*",
        "matrix.items.{best|typical|lost|digits}.*.*", "matrix.items.selected",
    ),
    "ridge_baseline": (
        "ridge.{fve|gain_per_doubling|gain_per_doubling_first|gain_per_doubling_last}.*.*",
        "ridge.{text_route|crossover|crossover_clipped|alpha}.*.*",
        "ridge.{n_grid|n_pairs|text_minus_ridge}", "ridge_scaling",
    ),
    "quote_ban": (
        "quote_ban.{train_denominator|leaks|retention|quoting_worth}", "fve_by_condition",
        "quote_ban.{baseline|dq|both}." + _Q,
        "quote_ban.{baseline|dq|both}.{n_failed|n_banned|vocab_size|frac_banned|n_fragment_tokens|leaks}",
        "quote_ban.{baseline|dq|both}.{banned_token_emissions|frac_single_quote|frac_double_quote|frac_hatch}",
        "quote_ban.{baseline|dq|both}.frac_hatch.{corner|emdash|italic|paren}",
        "quote_ban.both.{hatch_free|hatch_using}." + _Q,
    ),
    "verbatim": (
        "verbatim.{quote_using|hatch_free}.{median|p90|max|ge6|ge3|n|frac_with_quote_spans}",
        "verbatim.{quote_using|hatch_free}.null.{median|p90|max|ge6|ge3|n}",
        "verbatim.{median_run|p90_run|max_run|frac_ge6|frac_ge6.null}.{quote_using|hatch_free}",
        "verbatim.{median_run|p90_run|max_run|frac_ge6.null}", "verbatim.n_failed.{quote_using|both_ban}",
    ),
    "redaction": (
        "redaction.{full|prose_only|empty|ellipsis|redacted|spans_marks|spans_bare}." + _Q,
        "redaction.{full|prose_only|empty|ellipsis|redacted|spans_marks|spans_bare}.n_empty",
        "redaction.{train_denominator|n_failed|spans_per_decode|span_char_frac|frac_decodes_with_spans}",
        "redaction.{quote_marks_worth|prose_glue|filler_sequence}", "redaction.span_char_frac.mean_per_decode",
        "fve_by_variant",
    ),
    "paragraph_ablation": (
        "paragraphs.{n_failed|n_scored|n_eligible|frac_three|frac_multi|n_median|final_token}",
        "paragraphs.structured_opener.{chat|pretraining}", "paragraphs.structured_opener.{chat|pretraining}.n",
        "paragraphs.structured_opener.ratio",
        "paragraphs.{baseline|drop_p1p2|drop_p3|replace_p1p2|replace_p3}." + _Q,
        "paragraphs.{ablation|ablation_ratio|replace_vs_remove}", "paragraphs.ablation_ratio.value",
        "fve_by_variant",
    ),
    "token_type_buckets": (
        "token_types.{n_failed|nmse|fve|by_bucket|bucket_composition|whitespace_over_word|punct_over_word}",
        "token_types.{nmse|fve|n}.{whitespace|punctuation|digits|word|mixed}",
    ),
    "two_tier_controls": (
        "two_tier.{fve|fve_train|fve_literal|cos|recall|recall_ge1}.{by_category|overall|spread}",
        "two_tier.{n.by_category|n_samples|n_failed|train_denominator|recall.ratio|identity_2cos}",
        "two_tier.{within_prompt_sd|cross_prompt_sd|sd_ratio|norm.mean|norm.by_category}",
        "two_tier.perm.{real|within|cross|gap_cross|gap_within|chat_ratio}",
        "two_tier.perm.by_category.{real|within|cross|gap}",
        "two_tier.random.{n|n_failed|fve|cos|recall|attractor|diversity}",
        "two_tier.direction.{hits|top|alignment|negation|cross_axis|n_failed}",
    ),
    "worked_examples": (
        "examples.{fve|mse|mse_range|cos|counts|n_positions|n_tokens|exclude_first|n_failed|table}",
        "examples.{pos0|pos0_fve|bos|bos_fve}",
        "examples.sampling.pos*.{greedy|samples|sampled|spread|spread_max|texts}",
        "examples.sampling.{spread|spread_max|position}",
        "norms.{all|range|bos|template_newline|template_newline_position}",
    ),
}

#: Figures claims name that no experiment emits yet: {figure: why}. Such a claim ERRORs with this reason.
#: (Empty since worked_examples measures the recipe §7.1 worked-example, BOS and template-newline figures.)
UNMEASURED: dict[str, str] = {}


@lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    for m in re.finditer(r"\*|\{[^{}]*\}", pattern):
        out.append(re.escape(pattern[i:m.start()]))
        tok = m.group(0)
        out.append(r"[^.]+" if tok == "*" else "(?:" + "|".join(_regex(a).pattern for a in tok[1:-1].split("|")) + ")")
        i = m.end()
    out.append(re.escape(pattern[i:]))
    return re.compile("".join(out))


def matches(pattern: str, key: str) -> bool:
    """Whether ``key`` is one of the keys ``pattern`` declares (see the module docstring)."""
    return _regex(pattern).fullmatch(key) is not None


def emits(experiment: str, key: str) -> bool:
    """Whether ``experiment`` declares figure ``key`` (KeyError for an experiment with no declaration)."""
    return any(matches(p, key) for p in FIGURES[experiment])


def undeclared(experiment: str, keys: Iterable[str]) -> list[str]:
    """Keys of a real run that no declared pattern covers."""
    return sorted(k for k in keys if not emits(experiment, k))


def _alternatives(pattern: str) -> list[str]:
    groups = re.findall(r"\{[^{}]*\}", pattern)
    parts = re.split(r"\{[^{}]*\}", pattern)
    out = []
    for choice in itertools.product(*(g[1:-1].split("|") for g in groups)):
        out.append("".join(p + c for p, c in zip(parts, choice + ("",))))
    return out


def unexercised(experiment: str, keys: Iterable[str]) -> list[str]:
    """Declared alternatives (``{a|b}`` expanded) that no key of a real run matches."""
    keys = list(keys)
    return [a for p in FIGURES[experiment] for a in _alternatives(p) if not any(matches(a, k) for k in keys)]
