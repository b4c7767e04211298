"""The `nla_meta.yaml` contract: parse, validate, and check against the live tokenizer.

Everything NLA-specific (marker, neighbours, scales, templates, layer) comes from here; nothing
is hard-coded elsewhere (trap #20). Field spellings follow the released files and the training
code (recipe §1.2); where docs and code disagree, every spelling seen is accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SIDECAR_NAME = "nla_meta.yaml"
INJECT_PLACEHOLDERS = ("<INJECT>", "{injection_char}")
EXPLANATION_PLACEHOLDER = "{explanation}"
KNOWN_KINDS = ("nla_model", "nla_dataset")
ROLE_ALIASES = {"av": "av", "actor": "av", "ar": "ar", "critic": "ar"}

# Keys that may carry the extraction layer K (recipe §1.2 "Doc/code disagreements").
LAYER_KEYS = (
    ("extraction_layer_index",),
    ("critic", "extraction_layer_index"),
    ("critic", "num_hidden_layers"),
    ("ar", "num_hidden_layers"),
    ("extraction", "layer_index"),
)


class SidecarError(ValueError):
    """A sidecar field is missing, malformed, or disagrees with the checkpoint it describes."""

    def __init__(self, path: Path | str, field_name: str, problem: str,
                 expected: Any = None, found: Any = None):
        self.path, self.field, self.problem = str(path), field_name, problem
        self.expected, self.found = expected, found
        msg = f"{path}: field '{field_name}': {problem}"
        if expected is not None or found is not None:
            msg += f" (expected {expected!r}, found {found!r})"
        super().__init__(msg)


@dataclass(frozen=True)
class Sidecar:
    path: Path
    kind: str
    role: str  # "av" or "ar" (released spelling; actor/critic accepted on input)
    d_model: int
    injection_scale: float | None
    mse_scale: float | None
    injection_char: str
    injection_token_id: int
    left_neighbor_id: int
    right_neighbor_id: int
    critic_suffix_ids: tuple[int, ...] | None
    av_template: str | None
    ar_template: str | None
    extraction_layer_index: int | None
    train_denominator: float | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def layer_convention(self) -> str:
        return "layer K = output of decoder block K = HF hidden_states[K+1]"


def _get(d: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _require(raw: dict, path: Path, keys: tuple[str, ...], typ: type | tuple) -> Any:
    name = ".".join(keys)
    val = _get(raw, keys)
    if val is None:
        raise SidecarError(path, name, "required field is missing")
    if typ is int and isinstance(val, bool):
        raise SidecarError(path, name, "wrong type", expected="int", found=type(val).__name__)
    if not isinstance(val, typ):
        raise SidecarError(path, name, "wrong type",
                           expected=getattr(typ, "__name__", str(typ)), found=type(val).__name__)
    return val


def _resolve_scale(raw_value: Any, d_model: int, path: Path, name: str) -> float | None:
    """Mirror of the release's resolver: null/"raw"/"none" -> None, "sqrt_d_model" -> sqrt(d)."""
    if raw_value is None:
        return None
    if isinstance(raw_value, str):
        s = raw_value.strip().lower()
        if s in ("raw", "none", "null"):
            return None
        if s == "sqrt_d_model":
            return math.sqrt(d_model)
        try:
            raw_value = float(s)
        except ValueError:
            raise SidecarError(path, name, "not a number or known keyword",
                               expected="float | 'sqrt_d_model' | null", found=raw_value) from None
    if isinstance(raw_value, bool) or not isinstance(raw_value, (int, float)):
        raise SidecarError(path, name, "wrong type", expected="float", found=type(raw_value).__name__)
    val = float(raw_value)
    if not math.isfinite(val) or val <= 0:
        raise SidecarError(path, name, "must be a positive finite number", found=raw_value)
    return val


def _layer_index(raw: dict, path: Path) -> int | None:
    """Accept every spelling of K; if several are present they must agree."""
    found = {".".join(k): _get(raw, k) for k in LAYER_KEYS if _get(raw, k) is not None}
    if not found:
        return None
    values = {}
    for name, v in found.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SidecarError(path, name, "must be a non-negative int", found=v)
        # `num_hidden_layers` spellings (schema v1 / inference.md) count layers of the AR; the
        # recipe doc shows `ar: num_hidden_layers: 20` for K=20, i.e. they store K, not K+1.
        values[name] = v
    distinct = set(values.values())
    if len(distinct) > 1:
        raise SidecarError(path, "extraction_layer_index", "layer keys disagree", found=values)
    return distinct.pop()


def parse_sidecar(raw: Any, path: Path | str = "<memory>") -> Sidecar:
    path = Path(path)
    if not isinstance(raw, dict):
        raise SidecarError(path, "<root>", "sidecar must be a YAML mapping", found=type(raw).__name__)
    kind = _require(raw, path, ("kind",), str)
    if kind not in KNOWN_KINDS:
        raise SidecarError(path, "kind", "unknown kind", expected=KNOWN_KINDS, found=kind)
    if kind == "nla_dataset":
        raise SidecarError(path, "kind", "this is a dataset sidecar; a model sidecar is required",
                           expected="nla_model", found=kind)
    role_raw = _require(raw, path, ("role",), str)
    if role_raw not in ROLE_ALIASES:
        raise SidecarError(path, "role", "unknown role", expected=sorted(ROLE_ALIASES), found=role_raw)
    role = ROLE_ALIASES[role_raw]
    d_model = _require(raw, path, ("d_model",), int)
    if d_model <= 0:
        raise SidecarError(path, "d_model", "must be positive", found=d_model)

    extraction = raw.get("extraction") or {}
    if "injection_scale" not in extraction and role == "av":
        # Code wins over docs: the release gives no default for an absent injection_scale.
        raise SidecarError(path, "extraction.injection_scale", "required for an AV sidecar (no default)")
    inj_scale = _resolve_scale(extraction.get("injection_scale"), d_model, path,
                               "extraction.injection_scale")
    if role == "av" and inj_scale is None:
        raise SidecarError(path, "extraction.injection_scale",
                           "an AV needs a numeric injection_scale; raw-magnitude injection is out of "
                           "distribution", found=extraction.get("injection_scale"))
    mse_scale = _resolve_scale(extraction.get("mse_scale", "sqrt_d_model"), d_model, path,
                               "extraction.mse_scale")
    if role == "ar" and mse_scale is None:
        raise SidecarError(path, "extraction.mse_scale", "an AR needs a non-null mse_scale")

    char = _require(raw, path, ("tokens", "injection_char"), str)
    if len(char) != 1:
        raise SidecarError(path, "tokens.injection_char", "must be exactly one code point",
                           found=char)
    tok_id = _require(raw, path, ("tokens", "injection_token_id"), int)
    left = _require(raw, path, ("tokens", "injection_left_neighbor_id"), int)
    right = _require(raw, path, ("tokens", "injection_right_neighbor_id"), int)
    suffix = _get(raw, ("tokens", "critic_suffix_ids"))
    if suffix is not None:
        if not isinstance(suffix, list) or not suffix or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in suffix):
            raise SidecarError(path, "tokens.critic_suffix_ids", "must be a non-empty list of ints",
                               found=suffix)
        suffix = tuple(suffix)

    templates = raw.get("prompt_templates") or {}
    av_t = templates.get("av", templates.get("actor"))
    ar_t = templates.get("ar", templates.get("critic"))
    if role == "av":
        if not isinstance(av_t, str):
            raise SidecarError(path, "prompt_templates.av", "required for an AV sidecar")
        if not any(p in av_t for p in INJECT_PLACEHOLDERS):
            raise SidecarError(path, "prompt_templates.av", "template has no injection placeholder",
                               expected=INJECT_PLACEHOLDERS)
    if role == "ar":
        if not isinstance(ar_t, str):
            raise SidecarError(path, "prompt_templates.ar", "required for an AR sidecar")
        if ar_t.count(EXPLANATION_PLACEHOLDER) != 1:
            raise SidecarError(path, "prompt_templates.ar", "template needs exactly one placeholder",
                               expected=EXPLANATION_PLACEHOLDER, found=ar_t)

    layer = _layer_index(raw, path)
    if role == "ar" and layer is None:
        raise SidecarError(path, "extraction_layer_index",
                           "an AR sidecar must state K (any of: " +
                           ", ".join(".".join(k) for k in LAYER_KEYS) + ")")

    denom = _get(raw, ("metrics", "train_rawvar"))
    if denom is not None:
        if isinstance(denom, bool) or not isinstance(denom, (int, float)) or not 0 < denom <= 1:
            raise SidecarError(path, "metrics.train_rawvar", "must be a number in (0, 1]", found=denom)
        denom = float(denom)

    return Sidecar(path=path, kind=kind, role=role, d_model=d_model, injection_scale=inj_scale,
                   mse_scale=mse_scale, injection_char=char, injection_token_id=tok_id,
                   left_neighbor_id=left, right_neighbor_id=right, critic_suffix_ids=suffix,
                   av_template=av_t, ar_template=ar_t, extraction_layer_index=layer,
                   train_denominator=denom, raw=raw)


def load_sidecar(path_or_dir: Path | str) -> Sidecar:
    """Load `nla_meta.yaml` from a checkpoint directory or an explicit file path."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / SIDECAR_NAME
    if not p.exists():
        raise SidecarError(p, "<file>", "sidecar file not found; every NLA checkpoint ships one")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SidecarError(p, "<file>", f"not valid YAML: {e}") from None
    return parse_sidecar(raw, p)


def write_sidecar(raw: dict, path: Path | str) -> Path:
    """Validate then write; refuses to write a sidecar this module could not read back."""
    p = Path(path)
    if p.is_dir():
        p = p / SIDECAR_NAME
    parse_sidecar(raw, p)
    p.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return p


# --------------------------------------------------------------------------- templates

def render_av_message(sc: Sidecar) -> str:
    """The AV user message with the marker character substituted for the placeholder."""
    if sc.av_template is None:
        raise SidecarError(sc.path, "prompt_templates.av", "no AV template in this sidecar")
    text = sc.av_template
    for ph in INJECT_PLACEHOLDERS:
        text = text.replace(ph, sc.injection_char)
    return text


def render_ar_prompt(sc: Sidecar, explanation: str) -> str:
    """AR input text. The explanation is stripped first, as in AR-SFT (trap #13)."""
    if sc.ar_template is None:
        raise SidecarError(sc.path, "prompt_templates.ar", "no AR template in this sidecar")
    return sc.ar_template.replace(EXPLANATION_PLACEHOLDER, explanation.strip())


def check_pair_sidecars(av: Sidecar, ar: Sidecar) -> None:
    """The two halves of a pair must describe the same space."""
    if av.d_model != ar.d_model:
        raise SidecarError(ar.path, "d_model", "AV and AR disagree", expected=av.d_model, found=ar.d_model)
    if av.extraction_layer_index is not None and ar.extraction_layer_index is not None \
            and av.extraction_layer_index != ar.extraction_layer_index:
        raise SidecarError(ar.path, "extraction_layer_index", "AV and AR disagree",
                           expected=av.extraction_layer_index, found=ar.extraction_layer_index)
