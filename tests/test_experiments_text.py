"""Text experiments: textops units on hand-written explanations, and end-to-end mechanics of every text
experiment on a tiny random fixture pair (numbers are meaningless there; only the plumbing is tested)."""

from __future__ import annotations

import math

import pytest

from nla_repro.experiments import textops as T

# --------------------------------------------------------------------------- quote spans

EXPL = ('Encyclopedic article: about the “Roman baths” and heating.\n\n'
        'The text "hot water flowed" is mid-sentence, and don\'t forget the users\' \'hypocaust\' floors.\n\n'
        'Final token “floors” is a word.')


def test_quote_spans_found_and_apostrophes_ignored():
    spans = T.find_quote_spans(EXPL)
    assert [s.content(EXPL) for s in spans] == ["Roman baths", "hot water flowed", "hypocaust", "floors"]
    assert [s.family for s in spans] == ["double", "double", "single", "double"]
    assert [s.with_marks(EXPL) for s in spans][0] == "“Roman baths”"
    assert [s.content(EXPL) for s in T.find_quote_spans(EXPL, ("single",))] == ["hypocaust"]
    assert T.find_quote_spans("it's the users' car, isn't it") == []
    assert T.find_quote_spans('an "unclosed quote') == []
    assert [s.content(x) for x in ['He said "a \'b\' c" then.'] for s in T.find_quote_spans(x)] == ["a 'b' c"]


def test_redaction_variants_exact():
    text = 'Opening “alpha beta” then “gamma”, end.'
    v = T.redaction_variants(text)
    assert v == {
        "full": text,
        "prose_only": "Opening then, end.",
        "empty": "Opening “” then “”, end.",
        "ellipsis": "Opening “…” then “…”, end.",
        "redacted": "Opening “REDACTED” then “REDACTED”, end.",
        "spans_marks": "“alpha beta” “gamma”",
        "spans_bare": "alpha beta gamma",
    }
    assert set(v) == set(T.REDACTION_VARIANTS)
    none = T.redaction_variants("no quotes here.")
    assert none["prose_only"] == "no quotes here." and none["spans_marks"] == "" and none["spans_bare"] == ""


def test_hatches():
    assert T.find_hatches("「x」 and *it* (p) — q") == {"corner": 1, "italic": 1, "paren": 1, "emdash": 1}
    assert not T.uses_hatch("plain prose, nothing else.")
    assert T.find_hatches("2*3*4")["italic"] == 0


# --------------------------------------------------------------------------- n-grams, paragraphs, types, keywords

def test_longest_shared_run():
    ctx = "The quick brown fox jumps over the lazy dog near the river bank."
    assert T.longest_shared_run("a quick brown fox jumps high", ctx) == 4
    assert T.longest_shared_run("nothing shared at all", ctx) == 0
    assert T.longest_shared_run("Over THE lazy, dog!", ctx) == 4
    assert T.longest_shared_run("", ctx) == 0
    assert T.words("Don’t STOP-now 42") == ["don't", "stop", "now", "42"]
    assert T.word_ngrams(["a", "b", "c"], 2) == {("a", "b"), ("b", "c")}


def test_roll_by_document_never_same_doc():
    docs = ["a", "a", "b", "c", "c", "c"]
    roll = T.roll_by_document(docs)
    assert all(docs[j] != docs[i] for i, j in enumerate(roll))
    assert roll == [2, 2, 3, 0, 1, 0]
    with pytest.raises(ValueError):
        T.roll_by_document(["a", "a"])


def test_paragraphs():
    assert T.split_sentences('One. Two! "Three?" four\nfive') == ["One.", "Two!", '"Three?"', "four", "five"]
    assert T.split_paragraphs("P1 text.\n\nP2 text.\n \nP3.") == ["P1 text.", "P2 text.", "P3."]
    assert T.split_paragraphs("one\ntwo") == ["one", "two"]
    assert T.split_paragraphs("  ") == []


def test_paragraph_ablation_texts_exact():
    from nla_repro.experiments.paragraph_ablation import ablation_texts, mentions_final_token

    units = [["Kind: recipe.", "The text “stir” is mid-sentence.", "Final token “stir” is a word."]]
    donor = ["D1.", "D2.", "D3."]
    assert ablation_texts(units, donor) == {
        "drop_p3": ["Kind: recipe.\n\nThe text “stir” is mid-sentence."],
        "drop_p1p2": ["Final token “stir” is a word."],
        "replace_p3": ["Kind: recipe.\n\nThe text “stir” is mid-sentence.\n\nD3."],
        "replace_p1p2": ["D1.\n\nD2.\n\nFinal token “stir” is a word."],
    }
    with pytest.raises(ValueError):
        ablation_texts([["only one"]], donor)
    assert mentions_final_token("Final token “Stir” is a word.", " stir")
    assert mentions_final_token("Final token “\\n” is a line break.", "\n")
    assert not mentions_final_token("Final token “a” is a word.", " stir")


@pytest.mark.parametrize("tok,cls", [(" ", "whitespace"), ("\n\n", "whitespace"), ("", "whitespace"),
                                     (",", "punctuation"), (" ...", "punctuation"), ("2024", "digits"),
                                     (" rhythmic", "word"), ("ing", "word"), ("'s", "mixed"), ("3rd", "mixed")])
def test_token_types(tok, cls):
    assert T.token_type(tok) == cls


def test_keywords_and_recall():
    assert T.keywords("Why do cats purr when they are being stroked?") == {"cats", "purr", "stroked"}
    assert T.keyword_recall("Why do cats purr?", "Cats purr loudly.") == 1.0
    assert T.keyword_recall("cats purr stroked gently", "purr") == 0.25
    with pytest.raises(ValueError):
        T.keyword_recall("why is it so?", "x")
    assert T.keyword_hits("Python programming function", ("program", "python", "sql")) == 2


def test_prompt_set_is_authored_balanced_and_hashed():
    from nla_repro.experiments.two_tier_controls import CATEGORIES, load_prompts, prompt_text

    rows = load_prompts()
    assert [sum(r["category"] == c for r in rows) for c in CATEGORIES] == [14, 12, 12, 12]
    assert len({r["id"] for r in rows}) == 50 and len({r["content_hash"] for r in rows}) == 50
    assert all(r["provenance"] == "authored for nla-repro" for r in rows)
    assert all(len(T.keywords(prompt_text(r))) >= 2 for r in rows)


# --------------------------------------------------------------------------- banned tokens on a real tokenizer

@pytest.fixture(scope="module")
def smol_tok():
    from nla_repro.fixtures.tokenizers import load_tokenizer

    return load_tokenizer("smollm2")


def test_banned_token_set_exact(smol_tok):
    chars = T.DOUBLE_QUOTE_CHARS
    ids, info = T.banned_token_ids(smol_tok, chars)
    n = len(smol_tok)
    texts = smol_tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
    banned = set(ids)
    assert info["vocab_size"] == n and 0 < len(ids) < n
    assert all(any(c in texts[i] for c in chars) for i in banned)
    assert not any(any(c in texts[i] for c in chars) for i in range(n) if i not in banned)
    quote_id = smol_tok.convert_tokens_to_ids('"')
    assert quote_id in banned
    both, _ = T.banned_token_ids(smol_tok, T.DOUBLE_QUOTE_CHARS | T.SINGLE_QUOTE_CHARS)
    assert banned < set(both)


# --------------------------------------------------------------------------- end-to-end mechanics

FIGURE_KEYS = {  # registry figure keys (claims/data/s00*.yaml) each experiment must emit, per-pair ones only
    "quote_ban": ["quote_ban.baseline.cos", "quote_ban.dq.n_banned", "quote_ban.dq.nmse", "quote_ban.dq.cos",
                  "quote_ban.dq.fve", "quote_ban.both.n_banned", "quote_ban.both.nmse", "quote_ban.both.cos",
                  "quote_ban.both.fve", "quote_ban.both.hatch_free.fve", "quote_ban.both.hatch_free.nmse",
                  "quote_ban.both.hatch_free.n", "quote_ban.both.hatch_using.fve",
                  "quote_ban.both.hatch_using.nmse", "quote_ban.dq.frac_single_quote", "quote_ban.both.frac_hatch",
                  "quote_ban.leaks", "quote_ban.retention", "quote_ban.quoting_worth", "fve_by_condition"],
    "verbatim": ["verbatim.median_run", "verbatim.p90_run", "verbatim.frac_ge6.quote_using",
                 "verbatim.frac_ge6.hatch_free", "verbatim.frac_ge6.null", "verbatim.max_run",
                 "verbatim.median_run.hatch_free", "verbatim.p90_run.hatch_free"],
    "redaction": ["redaction.spans_per_decode", "redaction.span_char_frac", "redaction.quote_marks_worth",
                  "redaction.prose_glue", "redaction.filler_sequence", "fve_by_variant"]
                 + [f"redaction.{v}.{m}" for v in T.REDACTION_VARIANTS for m in ("nmse", "cos", "fve", "frac_fve_lt0")],
    "paragraph_ablation": ["paragraphs.frac_three", "paragraphs.structured_opener.chat",
                           "paragraphs.structured_opener.pretraining", "paragraphs.structured_opener.ratio",
                           "paragraphs.final_token", "paragraphs.n_median", "paragraphs.ablation",
                           "paragraphs.ablation_ratio", "paragraphs.replace_vs_remove"],
    "token_type_buckets": ["token_types.whitespace_over_word", "token_types.punct_over_word",
                           "token_types.bucket_composition"],
    "two_tier_controls": [f"two_tier.{k}" for k in (
        "fve.overall", "fve.by_category", "fve.spread", "cos.overall", "cos.by_category", "cos.spread",
        "recall.overall", "recall.by_category", "recall.spread", "recall.ratio", "recall_ge1.overall",
        "recall_ge1.by_category", "recall_ge1.spread", "within_prompt_sd", "sd_ratio", "norm.mean",
        "norm.by_category", "identity_2cos", "perm.real", "perm.within", "perm.cross", "perm.gap_cross",
        "perm.gap_within", "perm.by_category.real", "perm.by_category.within", "perm.by_category.gap",
        "perm.chat_ratio", "random.fve", "random.cos", "random.recall", "random.attractor",
        "random.diversity", "direction.alignment", "direction.negation", "direction.hits",
        "direction.cross_axis")],
}
# Keys that are legitimately NaN when their subset is empty on a random fixture pair (count key -> keys)
MAY_BE_EMPTY = {"quote_ban.both.hatch_free.n": ["quote_ban.both.hatch_free.", "quote_ban.retention",
                                                "quote_ban.quoting_worth", "verbatim.frac_ge6.hatch_free",
                                                "verbatim.max_run", "verbatim.median_run.hatch_free",
                                                "verbatim.p90_run.hatch_free", "both_hatch_free"],
                "quote_ban.both.hatch_using.n": ["quote_ban.both.hatch_using.", "both_hatch_using"],
                "paragraphs.structured_opener.chat.n": ["paragraphs.structured_opener."],
                "token_types.n.whitespace": ["token_types.whitespace_over_word"],
                "token_types.n.punctuation": ["token_types.punct_over_word"],
                "two_tier.random.n": ["two_tier.random."]}


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(_finite(v) for v in x)
    if isinstance(x, str):
        return True
    return math.isfinite(float(x))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from nla_repro.evalset import make_pair_handle
    from nla_repro.experiments.base import ExperimentContext
    from nla_repro.fixtures.factory import make_pair
    from nla_repro.metrics import variance_baseline

    d = make_pair("llama", tmp_path_factory.mktemp("text-exp"))
    h = make_pair_handle("tiny", d.av, d.ar, base="fixture", n_docs=6, adjacent=False)
    # mechanics only: a stand-in for the training rawvar of an untrained random pair
    h.train_denominator = variance_baseline(h.eval_set(None).vectors)
    # random weights: greedy output is degenerate (all "\n"), so mechanics use sampled decodes scored raw
    common = {"max_new_tokens": 24, "batch_size": 32, "failure_convention": "client_raw",
              "decoding": {"greedy": False, "temperature": 1.0, "seed": 0}}
    opts = {name: dict(common) for name in FIGURE_KEYS}
    opts["two_tier_controls"].update(samples=2, prompt_limit=2, n_perm=3, n_random=3, max_new_tokens=16)
    return ExperimentContext(pairs={"tiny": h}, eval_size=12, options=opts)


@pytest.mark.parametrize("name", list(FIGURE_KEYS))
def test_experiment_mechanics(ctx, name):
    from nla_repro.experiments.runner import run_experiment

    if name == "paragraph_ablation":
        # A random AV writes run-on word salad (no line breaks), so no decode has the >= 2 paragraphs the
        # ablation needs: the experiment must say so, not return empty numbers. (Variant texts are
        # covered exactly by test_paragraph_ablation_texts_exact; scoring is shared with redaction.)
        with pytest.raises(ValueError, match=r"scored decodes have >= 2 paragraphs \(of 12 scored\)"):
            run_experiment(name, ctx, "tiny")
        return
    res = run_experiment(name, ctx, "tiny")
    figs = res.figures
    missing = [k for k in FIGURE_KEYS[name] if k not in figs]
    assert not missing, missing
    _assert_declared(name, figs)
    allowed_nan = [pre for cnt, pres in MAY_BE_EMPTY.items() if figs.get(cnt, 1) == 0 for pre in pres]
    bad = [k for k in FIGURE_KEYS[name] if not _finite(figs[k]) and not any(k.startswith(p) or p in str(figs[k])
                                                                             for p in allowed_nan)]
    if name == "two_tier_controls" and min(figs["two_tier.recall.by_category"]) == 0:
        bad = [k for k in bad if k != "two_tier.recall.ratio"]  # max/min undefined when a category has 0
    assert not bad, {k: figs[k] for k in bad}
    assert res.conventions["failure_convention"] == "client_raw"
    if name == "quote_ban":
        assert figs["quote_ban.leaks"] == 0 and figs["quote_ban.dq.banned_token_emissions"] == 0
        assert figs["quote_ban.dq.n_banned"] < figs["quote_ban.both.n_banned"] < figs["quote_ban.dq.vocab_size"]
        assert figs["quote_ban.baseline.n_banned"] == 0
    if name == "redaction":
        assert figs["redaction.full.nmse"] == pytest.approx(2 * (1 - figs["redaction.full.cos"]), abs=1e-6)


def _assert_declared(name, figs):
    """nla_repro.claims.figures.FIGURES[name] matches the run: every key declared, every alternative emitted
    (the registry test checks claims against the declaration)."""
    from nla_repro.claims.figures import undeclared, unexercised

    assert not undeclared(name, figs), undeclared(name, figs)
    assert not unexercised(name, figs), unexercised(name, figs)


def test_paragraph_ablation_sentence_units_and_declaration(ctx):
    """With sentence units and longer decodes the random AV yields >= 2 units often enough to run every
    ablation variant, so the emitted figures can be checked against the declaration."""
    from nla_repro.experiments.base import ExperimentContext
    from nla_repro.experiments.runner import run_experiment

    opts = {"paragraph_ablation": {**ctx.options["paragraph_ablation"], "unit": "sentence", "max_new_tokens": 48}}
    res = run_experiment("paragraph_ablation", ExperimentContext(pairs=ctx.pairs, eval_size=12, options=opts), "tiny")
    _assert_declared("paragraph_ablation", res.figures)
    assert res.figures["paragraphs.n_eligible"] >= 2
