"""The nla_meta.yaml contract: parsing, every-field validation, and checks against a live tokenizer."""

import math

import pytest

from nla_repro.prompts import (PromptError, ar_prompt_ids, av_prompt_ids, chat_ids,
                               check_sidecar_against_tokenizer, find_injection_position)
from nla_repro.sidecar import (SidecarError, load_sidecar, parse_sidecar, render_ar_prompt,
                               render_av_message, write_sidecar)

AV_T = ("You are a meticulous AI researcher.\n\nAnswer inside <explanation> tags.\n\n"
        "Here is the vector:\n<concept><INJECT></concept>\n\nPlease provide an explanation.")
AR_T = "Summary of the following text: <text>{explanation}</text> <summary>"


def released_like(role_="av", **over):
    role = role_
    """A sidecar shaped like the released Qwen one (recipe §0 / §1.2 values)."""
    raw = {
        "kind": "nla_model", "schema_version": 2, "role": role, "stage": "rl",
        "base_checkpoint": "Qwen/Qwen2.5-7B-Instruct", "d_model": 3584, "extraction_layer_index": 20,
        "extraction": {"injection_scale": 150.0 if role == "av" else None, "mse_scale": 59.86652},
        "tokens": {"injection_char": "㈎", "injection_token_id": 149705, "injection_left_neighbor_id": 29,
                   "injection_right_neighbor_id": 522,
                   "critic_suffix_ids": None if role == "av" else [1318, 29, 366, 1708, 29]},
        "prompt_templates": {"av": AV_T, "ar": AR_T},
    }
    if role == "ar":
        raw["critic"] = {"extraction_layer_index": 20}
    for dotted, value in over.items():
        d = raw
        *head, last = dotted.split("__")
        for k in head:
            d = d.setdefault(k, {})
        if value is KeyError:
            d.pop(last, None)
        else:
            d[last] = value
    return raw


def test_released_shaped_sidecars_parse():
    av = parse_sidecar(released_like("av"))
    ar = parse_sidecar(released_like("ar"))
    assert av.role == "av" and av.injection_scale == 150.0 and av.d_model == 3584
    assert ar.role == "ar" and ar.injection_scale is None and ar.critic_suffix_ids == (1318, 29, 366, 1708, 29)
    assert ar.extraction_layer_index == 20


@pytest.mark.parametrize("spelling", [
    {"extraction_layer_index": 20},
    {"critic": {"extraction_layer_index": 20}},
    {"critic": {"num_hidden_layers": 20}},
    {"ar": {"num_hidden_layers": 20}},
])
def test_every_spelling_of_the_ar_layer_key(spelling):
    raw = released_like("ar")
    raw.pop("extraction_layer_index")
    raw.pop("critic")
    raw.update(spelling)
    assert parse_sidecar(raw).extraction_layer_index == 20


def test_disagreeing_layer_keys_are_an_error():
    raw = released_like("ar")
    raw["critic"]["extraction_layer_index"] = 21
    with pytest.raises(SidecarError, match="disagree"):
        parse_sidecar(raw)


def test_legacy_actor_critic_spellings():
    raw = released_like("ar")
    raw["role"] = "critic"
    raw["prompt_templates"] = {"actor": AV_T, "critic": AR_T}
    sc = parse_sidecar(raw)
    assert sc.role == "ar" and sc.ar_template == AR_T and sc.av_template == AV_T


@pytest.mark.parametrize("field,value,match", [
    ("kind", KeyError, "kind"),
    ("kind", "nla_dataset", "dataset sidecar"),
    ("role", "judge", "role"),
    ("d_model", KeyError, "d_model"),
    ("d_model", "3584", "d_model"),
    ("d_model", -1, "d_model"),
    ("extraction__injection_scale", KeyError, "injection_scale"),
    ("extraction__injection_scale", None, "injection_scale"),
    ("extraction__injection_scale", "lots", "injection_scale"),
    ("extraction__injection_scale", -5.0, "injection_scale"),
    ("tokens__injection_char", "ab", "injection_char"),
    ("tokens__injection_char", KeyError, "injection_char"),
    ("tokens__injection_token_id", KeyError, "injection_token_id"),
    ("tokens__injection_token_id", True, "injection_token_id"),
    ("tokens__injection_left_neighbor_id", KeyError, "injection_left_neighbor_id"),
    ("tokens__injection_right_neighbor_id", "522", "injection_right_neighbor_id"),
    ("prompt_templates__av", KeyError, "prompt_templates.av"),
    ("prompt_templates__av", "no marker here", "placeholder"),
    ("metrics__train_rawvar", 1.7, "train_rawvar"),
])
def test_bad_av_fields_name_the_field(field, value, match):
    with pytest.raises(SidecarError, match=match) as ei:
        parse_sidecar(released_like("av", **{field: value}), "ckpt/nla_meta.yaml")
    assert "ckpt/nla_meta.yaml" in str(ei.value)


@pytest.mark.parametrize("field,value,match", [
    ("extraction__mse_scale", None, "mse_scale"),
    ("prompt_templates__ar", "Summary: <text></text>", "placeholder"),
    ("tokens__critic_suffix_ids", [], "critic_suffix_ids"),
    ("tokens__critic_suffix_ids", ["a"], "critic_suffix_ids"),
])
def test_bad_ar_fields_name_the_field(field, value, match):
    with pytest.raises(SidecarError, match=match):
        parse_sidecar(released_like("ar", **{field: value}))


def test_ar_without_any_layer_key_is_refused():
    raw = released_like("ar")
    raw.pop("extraction_layer_index")
    raw.pop("critic")
    with pytest.raises(SidecarError, match="must state K"):
        parse_sidecar(raw)


def test_scale_keywords_resolve_like_the_release():
    sc = parse_sidecar(released_like("ar", extraction__mse_scale="sqrt_d_model"))
    assert sc.mse_scale == pytest.approx(math.sqrt(3584))
    # absent injection_scale has NO default (code wins over docs/design.md:31)
    with pytest.raises(SidecarError, match="no default"):
        parse_sidecar(released_like("av", extraction__injection_scale=KeyError))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SidecarError, match="not found"):
        load_sidecar(tmp_path)
    (tmp_path / "nla_meta.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(SidecarError, match="not valid YAML"):
        load_sidecar(tmp_path)
    (tmp_path / "nla_meta.yaml").write_text("- a list\n")
    with pytest.raises(SidecarError, match="mapping"):
        load_sidecar(tmp_path)


def test_write_refuses_invalid_and_round_trips(tmp_path):
    with pytest.raises(SidecarError):
        write_sidecar(released_like("av", d_model=KeyError), tmp_path)
    write_sidecar(released_like("ar"), tmp_path)
    assert load_sidecar(tmp_path).critic_suffix_ids == (1318, 29, 366, 1708, 29)


def test_templates_render_marker_and_strip_explanation():
    sc = parse_sidecar(released_like("ar"))
    assert "<concept>㈎</concept>" in render_av_message(sc)
    # trap #13: AR-SFT saw stripped explanations
    assert render_ar_prompt(sc, "\n  foo bar \n") == "Summary of the following text: <text>foo bar</text> <summary>"


# ---------------------------------------------------------------- against a live tokenizer

@pytest.fixture(scope="module")
def smol():
    from nla_repro.fixtures.tokenizers import load_tokenizer
    return load_tokenizer("smollm2")


def smol_sidecar(tok, role="ar", **over):
    char = "→"
    ids = chat_ids(tok, AV_T.replace("<INJECT>", char))
    tid = tok.encode(char, add_special_tokens=False)[0]
    p = ids.index(tid)
    suffix = tok("</text> <summary>", add_special_tokens=False)["input_ids"][1:]
    raw = released_like(role, d_model=576, tokens__injection_char=char, tokens__injection_token_id=tid,
                        tokens__injection_left_neighbor_id=ids[p - 1],
                        tokens__injection_right_neighbor_id=ids[p + 1],
                        tokens__critic_suffix_ids=suffix if role == "ar" else None)
    for k, v in over.items():
        d = raw
        *head, last = k.split("__")
        for h in head:
            d = d[h]
        d[last] = v
    return parse_sidecar(raw, "smol/nla_meta.yaml")


def test_live_tokenizer_checks_pass(smol):
    sc = smol_sidecar(smol)
    check_sidecar_against_tokenizer(sc, smol)
    ids, pos = av_prompt_ids(smol, sc)
    assert ids[pos] == sc.injection_token_id
    assert ar_prompt_ids(smol, sc, "hello")[-len(sc.critic_suffix_ids):] == list(sc.critic_suffix_ids)


@pytest.mark.parametrize("field,delta,match", [
    ("tokens__injection_token_id", 1, "single id"),
    ("tokens__injection_left_neighbor_id", 1, "left_neighbor"),
    ("tokens__injection_right_neighbor_id", 1, "right_neighbor"),
])
def test_live_tokenizer_checks_catch_wrong_ids(smol, field, delta, match):
    good = smol_sidecar(smol)
    cur = {"tokens__injection_token_id": good.injection_token_id,
           "tokens__injection_left_neighbor_id": good.left_neighbor_id,
           "tokens__injection_right_neighbor_id": good.right_neighbor_id}[field]
    bad = smol_sidecar(smol, **{field: cur + delta})
    with pytest.raises(SidecarError, match=match) as ei:
        check_sidecar_against_tokenizer(bad, smol)
    assert "expected" in str(ei.value) and "found" in str(ei.value)


def test_marker_absent_or_doubled_in_template(smol):
    sc = smol_sidecar(smol)
    doubled = smol_sidecar(smol, prompt_templates__av=AV_T + "\n<INJECT>")
    with pytest.raises(SidecarError, match="exactly once"):
        check_sidecar_against_tokenizer(doubled, smol)
    ids, _ = av_prompt_ids(smol, sc)
    with pytest.raises(PromptError, match="exactly one marker"):
        find_injection_position([t for t in ids if t != sc.injection_token_id], sc)


def test_suffix_ids_checked(smol):
    sc = smol_sidecar(smol)
    bad = smol_sidecar(smol, tokens__critic_suffix_ids=list(sc.critic_suffix_ids[:-1]) + [5])
    with pytest.raises(SidecarError, match="critic_suffix_ids"):
        check_sidecar_against_tokenizer(bad, smol)


def test_hard_coded_foreign_marker_is_caught(smol):
    """Trap #20: the released Qwen marker (㈎) is three byte tokens in this tokenizer."""
    raw = released_like("av", d_model=576)
    sc = parse_sidecar(raw)
    with pytest.raises(SidecarError, match="single id"):
        check_sidecar_against_tokenizer(sc, smol)
