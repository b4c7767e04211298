"""Materialize the default NLA pair in the released directory layout, offline, from
(PyPI GGUF base model) + (LoRA deltas and value head shipped under ``deltas/<family>/``).

``materialize(family="smollm2", out_dir=None) -> PairDirs(av, ar)``

* The base GGUF is located without importing its package and checked against its pinned sha256; each
  delta file is checked against ``deltas/<family>/manifest.json``.
* LoRA deltas are merged exactly: ``W' = W + (alpha/r) * B @ A`` in fp32 (bf16-stored A and B upcast);
  the merged checkpoints are saved in fp32 so nothing is rounded after the merge.
* AV dir: ``config.json``, ``model.safetensors``, tokenizer files incl. ``chat_template.jinja``,
  ``nla_meta.yaml``.  AR dir: ``config.json`` with ``num_hidden_layers = K+1``, ``model.safetensors``
  (blocks 0..K + embeddings; no final norm / lm_head), ``value_head.safetensors`` (key ``weight``, bf16
  [d, d]), tokenizer files with ``padding_side: right``, ``nla_meta.yaml`` (``critic_suffix_ids`` from the
  tokenizer: the template suffix ``</text> <summary>`` tokenised, first token dropped).
* Idempotent and cached by content hash: ``$NLA_REPRO_CACHE/default_pairs/<family>-<key16>/{av,ar}``
  (default cache ``~/.cache/nla-repro``); a complete entry is returned without touching the base model.
  Written into a temporary directory and renamed into place, so a killed run leaves no half entry.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..assets import sha256_file

DELTAS_DIR = Path(__file__).resolve().parent / "deltas"
#: families whose trained deltas are in the repo (a ``deltas/<family>/manifest.json``)
FAMILIES_SHIPPED = tuple(sorted(p.parent.name for p in DELTAS_DIR.glob("*/manifest.json")))
MATERIALIZE_VERSION = "3"   # bump when the written layout changes (part of the cache key)
AR_SUFFIX_TEXT = "</text> <summary>"


class MaterializeError(RuntimeError):
    """Deltas or base model missing / not matching their checksums, or an inconsistent manifest."""


@dataclass(frozen=True)
class PairDirs:
    av: Path
    ar: Path


def cache_root() -> Path:
    base = os.environ.get("NLA_REPRO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nla-repro")
    return Path(base) / "default_pairs"


def load_manifest(family: str) -> dict:
    if family not in FAMILIES_SHIPPED:
        raise MaterializeError(f"no trained default pair for family {family!r}; shipped: {list(FAMILIES_SHIPPED)}")
    p = DELTAS_DIR / family / "manifest.json"
    if not p.is_file():
        raise MaterializeError(f"{p}: manifest not found (deltas for {family!r} not shipped)")
    return json.loads(p.read_text())


def verify_deltas(family: str, manifest: dict | None = None) -> dict:
    m = manifest or load_manifest(family)
    for key in ("av_lora", "ar_lora", "value_head"):
        ent = m["files"][key]
        p = DELTAS_DIR / family / ent["file"]
        if not p.is_file():
            raise MaterializeError(f"{p}: delta file missing")
        got = sha256_file(p)
        if got != ent["sha256"]:
            raise MaterializeError(f"{p}: sha256 mismatch: manifest says {ent['sha256']}, file is {got}")
    return m


def cache_key(manifest: dict) -> str:
    blob = json.dumps({"v": MATERIALIZE_VERSION, "base": manifest["base"]["sha256"],
                       "files": {k: v["sha256"] for k, v in sorted(manifest["files"].items())},
                       "sidecar": manifest["sidecar"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _suffix_ids(tok) -> list[int]:
    ids = tok(AR_SUFFIX_TEXT, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids[1:]]


def _sidecar(manifest: dict, role: str, neighbours: tuple[int, int], suffix: list[int] | None) -> dict:
    sc = manifest["sidecar"]
    K = int(sc["extraction_layer_index"])
    raw = {
        "kind": "nla_model",
        "schema_version": 2,
        "role": role,
        "stage": manifest["training"].get("stage", "rl") if role == "av" else "sl",
        "base_checkpoint": manifest["base"]["name"],
        "d_model": int(sc["d_model"]),
        "extraction_layer_index": K,
        "extraction": {
            "injection_scale": float(sc["injection_scale"]) if role == "av" else None,
            "mse_scale": float(sc["mse_scale"]),
        },
        "tokens": {
            "injection_char": sc["injection_char"],
            "injection_token_id": int(sc["injection_token_id"]),
            "injection_left_neighbor_id": int(neighbours[0]),
            "injection_right_neighbor_id": int(neighbours[1]),
            "critic_suffix_ids": suffix if role == "ar" else None,
        },
        "prompt_templates": {"av": sc["av_template"], "ar": sc["ar_template"]},
    }
    if role == "ar":
        raw["critic"] = {"extraction_layer_index": K}
    raw["metrics"] = {"train_rawvar": float(sc["train_rawvar"])}
    raw["trained_on"] = [manifest["training"]["data"]]
    raw["parent_checkpoints"] = [manifest["base"]["name"]]
    raw["created_at"] = manifest["created_at"]  # fixed: keeps the written files content-stable
    raw["created_by"] = "nla-repro default_pair.materialize"
    return raw


def _set_stop_tokens(d: Path, tok, family: str) -> None:
    """generation_config.json eos_token_id = [tokenizer EOS, *family extra end-of-turn tokens] (see
    FamilySpec.extra_stop_tokens: SmolLM2's <|im_end|> / <|im_start|> logits are near-tied)."""
    from nla_repro.training.base import spec_of

    p = d / "generation_config.json"
    cfg = json.loads(p.read_text()) if p.is_file() else {}
    ids = [int(tok.eos_token_id)]
    for t in spec_of(family).extra_stop_tokens:
        i = tok.convert_tokens_to_ids(t)
        if i is None or i == tok.unk_token_id:
            raise MaterializeError(f"stop token {t!r} is not in the tokenizer")
        if int(i) not in ids:
            ids.append(int(i))
    cfg["eos_token_id"] = ids
    p.write_text(json.dumps(cfg, indent=2) + "\n")


def _set_padding_side(d: Path, side: str) -> None:
    """Record padding_side in tokenizer_config.json (transformers 5 does not always save it)."""
    p = d / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["padding_side"] = side
    p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _write_yaml(raw: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")


def build(family: str, dest: Path, manifest: dict, gguf: str | os.PathLike | None = None) -> PairDirs:
    """Write the AV and AR directories under ``dest`` (no caching logic)."""
    from safetensors.torch import load_file, save_file

    from nla_repro.training.base import gguf_path, load_base
    from nla_repro.training.models import build_av_prompt

    sc = manifest["sidecar"]
    K = int(sc["extraction_layer_index"])
    fam_dir = DELTAS_DIR / family
    path = gguf_path(family, gguf)
    if sha256_file(path) != manifest["base"]["sha256"]:
        raise MaterializeError(f"{path}: base GGUF sha256 differs from the manifest's {manifest['base']['sha256']}")
    tok, model = load_base(family, path, verify=False)
    prompt = build_av_prompt(tok, sc["injection_char"])
    if prompt.marker_id != int(sc["injection_token_id"]):
        raise MaterializeError(f"marker {sc['injection_char']!r} tokenises to {prompt.marker_id}, manifest says "
                               f"{sc['injection_token_id']}")
    neighbours = (prompt.left_id, prompt.right_id)
    suffix = _suffix_ids(tok)
    files = manifest["files"]
    av_lora = load_file(str(fam_dir / files["av_lora"]["file"]))
    ar_lora = load_file(str(fam_dir / files["ar_lora"]["file"]))
    av_scale = float(files["av_lora"]["alpha"]) / int(files["av_lora"]["rank"])
    ar_scale = float(files["ar_lora"]["alpha"]) / int(files["ar_lora"]["rank"])
    base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # ---- AV: full model, AV LoRA merged, fp32
    av_dir, ar_dir = dest / "av", dest / "ar"
    av_dir.mkdir(parents=True)
    ar_dir.mkdir(parents=True)
    from nla_repro.training.lora import merge_state_dict

    av_sd = merge_state_dict(base_sd, av_lora, av_scale)
    model.load_state_dict(av_sd, strict=True)
    model.save_pretrained(str(av_dir), safe_serialization=True)
    _set_stop_tokens(av_dir, tok, family)
    tok.padding_side = "left"
    tok.save_pretrained(str(av_dir))
    _set_padding_side(av_dir, "left")
    _write_yaml(_sidecar(manifest, "av", neighbours, None), av_dir / "nla_meta.yaml")

    # ---- AR: blocks 0..K + embeddings, AR LoRA merged, no final norm / lm_head
    ar_sd = merge_state_dict(base_sd, ar_lora, ar_scale, key_prefix="model.")  # AR LoRA paths are relative to the decoder
    keep = {}
    for k, v in ar_sd.items():
        if k.startswith("model.layers."):
            if int(k.split(".")[2]) > K:
                continue
        elif k != "model.embed_tokens.weight":
            continue  # model.norm.weight, lm_head.weight (tied): replaced by Identity in the AR
        keep[k] = v.contiguous()
    import copy

    ar_cfg = copy.deepcopy(model.config)
    ar_cfg.num_hidden_layers = K + 1
    if isinstance(getattr(ar_cfg, "layer_types", None), list):
        ar_cfg.layer_types = ar_cfg.layer_types[: K + 1]
    ar_cfg.save_pretrained(str(ar_dir))
    save_file(keep, str(ar_dir / "model.safetensors"), metadata={"format": "pt"})
    vh = load_file(str(fam_dir / files["value_head"]["file"]))
    if set(vh) != {"weight"} or vh["weight"].dtype != torch.bfloat16:
        raise MaterializeError(f"{files['value_head']['file']}: expected a single bf16 key 'weight'")
    save_file({"weight": vh["weight"].contiguous()}, str(ar_dir / "value_head.safetensors"))
    tok.padding_side = "right"
    tok.save_pretrained(str(ar_dir))
    _set_padding_side(ar_dir, "right")
    _write_yaml(_sidecar(manifest, "ar", neighbours, suffix), ar_dir / "nla_meta.yaml")
    return PairDirs(av_dir, ar_dir)


def materialize(family: str = "smollm2", out_dir: str | os.PathLike | None = None, *,
                gguf: str | os.PathLike | None = None, force: bool = False) -> PairDirs:
    """Build (or return the cached) default pair for ``family``; returns its AV and AR directories."""
    manifest = verify_deltas(family)
    key = cache_key(manifest)
    root = Path(out_dir) if out_dir is not None else cache_root()
    final = root / f"{family}-{key[:16]}"
    stamp = final / "materialized.json"
    if stamp.is_file() and not force:
        info = json.loads(stamp.read_text())
        if info.get("key") == key and (final / "av" / "nla_meta.yaml").is_file() \
                and (final / "ar" / "value_head.safetensors").is_file():
            return PairDirs(final / "av", final / "ar")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
    try:
        build(family, tmp, manifest, gguf)
        (tmp / "materialized.json").write_text(json.dumps({
            "key": key, "family": family, "version": MATERIALIZE_VERSION,
            "base_sha256": manifest["base"]["sha256"],
            "files": {k: v["sha256"] for k, v in manifest["files"].items()},
            "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PairDirs(final / "av", final / "ar")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="materialize the embedded default NLA pair")
    ap.add_argument("--family", default="smollm2")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    d = materialize(a.family, a.out_dir, force=a.force)
    print(f"av {d.av}")
    print(f"ar {d.ar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
