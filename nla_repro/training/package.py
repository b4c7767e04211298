"""Turn a training run's outputs into the shipped deltas folder ``default_pair/deltas/<family>/``.

    python -m nla_repro.training.package --family smollm2 --run RUN_DIR [--stage rl] [--continues]

RUN_DIR holds what ``nla_repro.training.train`` wrote (``<stage>_av.safetensors``, ``<stage>_ar.safetensors``
with the LoRA A/B and ``value_head.weight`` in bf16, ``metrics.json``).  Written: ``av_lora.safetensors``,
``ar_lora.safetensors``, ``value_head.safetensors``, ``manifest.json`` (sha256 + shape of every file, the
sidecar facts, the device evaluations) and ``training_metrics.json``.  With ``--continues`` the run started
from the folder's current deltas, so the earlier RL history and evaluations are kept and extended.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..assets import sha256_file
from ..default_pair.materialize import DELTAS_DIR
from .base import spec_of
from .config import AR_TEMPLATE, AV_TEMPLATE, LORA_TARGETS

META = {"format": "nla-repro-lora-v1"}


def _lora_entry(path: Path, rank: int, alpha: float, layers: str) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "rank": rank,
            "alpha": alpha, "targets": list(LORA_TARGETS), "layers": layers, "merge": "W + (alpha/rank) * B @ A"}


def merged_metrics(previous: dict | None, run: dict) -> dict:
    """Training history across runs: stage-0/SFT facts of the first run, RL history concatenated, every
    evaluation kept under ``eval_rl_after_<total RL steps>``."""
    out = dict(previous or {})
    for k in ("stage0", "ar_sft", "av_sft", "eval_sft"):
        if k in run and k not in out:
            out[k] = run[k]
    out.setdefault("config", run["config"])
    if previous is not None:
        out.setdefault("continuations", []).append({"config": run["config"], "device": run.get("device"),
                                                    "versions": run.get("versions"),
                                                    "rl_steps": len(run.get("rl_history", []))})
    else:
        out["device"], out["versions"] = run.get("device"), run.get("versions")
    out["rl_history"] = list(out.get("rl_history", [])) + list(run.get("rl_history", []))
    n = len(out["rl_history"])
    for k in ("eval_rl", "polish", "eval_polish"):  # the polish pass follows RL step n
        if k in run:
            key, j = f"{k}_after_{n}", 2
            while key in out:  # a repeated measurement of the same weights is kept beside the first
                key, j = f"{k}_after_{n}_repeat{j}", j + 1
            out[key] = run[k]
    if "polish_trials" in run:  # passes that were tried and not shipped, with their evaluations
        out.setdefault("polish_trials", []).extend(run["polish_trials"])
    return out


def package(family: str, run_dir: Path, *, stage: str = "rl", continues: bool = False,
            dest: Path | None = None) -> Path:
    spec = spec_of(family)
    dest = dest or DELTAS_DIR / family
    run = json.loads((run_dir / "metrics.json").read_text())
    previous = None
    if continues:
        previous = json.loads((dest / "training_metrics.json").read_text())
    meta = run["meta"]
    if meta["family"] != family:
        raise ValueError(f"{run_dir}/metrics.json is a {meta['family']!r} run, not {family!r}")
    av = load_file(str(run_dir / f"{stage}_av.safetensors"))
    ar = load_file(str(run_dir / f"{stage}_ar.safetensors"))
    vh = ar.pop("value_head.weight")
    dest.mkdir(parents=True, exist_ok=True)
    save_file(av, str(dest / "av_lora.safetensors"), metadata=META)
    save_file(ar, str(dest / "ar_lora.safetensors"), metadata=META)
    save_file({"weight": vh.contiguous()}, str(dest / "value_head.safetensors"), metadata=META)
    hist = merged_metrics(previous, run)
    (dest / "training_metrics.json").write_text(json.dumps(hist, indent=1, default=float))
    s0 = hist["stage0"]
    evals = {k: v for k, v in hist.items() if k.startswith("eval_")}
    manifest = {
        "format": "nla-repro-default-pair-v1",
        "family": family,
        "created_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "base": {"name": spec.base_checkpoint.split(" (")[0], "package": f"{spec.package.replace('_', '-')}=="
                 f"{spec.package_version}", "file": spec.gguf_file, "sha256": spec.gguf_sha256,
                 "note": "GGUF dequantised to fp32 by transformers"},
        "files": {
            "av_lora": _lora_entry(dest / "av_lora.safetensors", meta["av_rank"], meta["av_alpha"],
                                   f"0-{spec.num_layers - 1}"),
            "ar_lora": _lora_entry(dest / "ar_lora.safetensors", meta["ar_rank"], meta["ar_alpha"],
                                   f"0-{spec.layer}"),
            "value_head": {"file": "value_head.safetensors", "sha256": sha256_file(dest / "value_head.safetensors"),
                           "bytes": (dest / "value_head.safetensors").stat().st_size,
                           "shape": list(vh.shape), "dtype": "bfloat16"},
        },
        "sidecar": {
            "d_model": spec.d_model, "extraction_layer_index": spec.layer,
            "injection_scale": float(s0["injection_scale"]), "mse_scale": spec.mse_scale,
            "injection_char": spec.injection_char, "injection_token_id": int(meta["injection_token_id"]),
            "av_template": AV_TEMPLATE, "ar_template": AR_TEMPLATE, "train_rawvar": float(s0["train_rawvar"]),
        },
        "training": {
            "stage": stage, "rl_steps": len(hist["rl_history"]),
            "data": (f"nla-repro corpora 'default' mix train split ({', '.join(s0['sources_train'])}), "
                     f"{s0['n_train_docs']} docs, {s0['n_train_vectors']} positions, {family} layer {spec.layer}"),
            **{f"device_{k}": v for k, v in evals.items()},
        },
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return dest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--stage", default="rl")
    ap.add_argument("--continues", action="store_true")
    a = ap.parse_args(argv)
    print(package(a.family, a.run, stage=a.stage, continues=a.continues))


if __name__ == "__main__":
    main()
