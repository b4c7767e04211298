"""Recipe constants (recipe §0/§1): structural facts read from the pair's files (no model is loaded).

Figures (prefix ``recipe.``): d_model, layer_index, ar_num_hidden_layers, ar_layers_eq_K_plus_1,
base_layers (the AV's num_hidden_layers = the base model's depth), gold_hidden_states_index (K+1, the layer
convention), depth_pct (100 K / base_layers), injection_scale, bf16_resolution (spacing of bfloat16 numbers
at injection_scale: 2^(floor(log2 s) - 7)), mse_scale, mse_scale_eq_sqrt_d, injection_token
([injection_char, injection_token_id]), injection_token_id, left_neighbor_id, right_neighbor_id,
critic_suffix_ids, embed_scale (sqrt(d) for Gemma, else 1), value_head_shape, sidecars_agree; and
``sidecar.drift`` = {field: [av, ar]} for every shared sidecar field on which AV and AR disagree.
"""

from __future__ import annotations

import json
import math

from ..sidecar import load_sidecar
from .base import experiment

NAME = "recipe_constants"


def harness_defaults() -> dict:
    from ..activations import SamplerConfig
    from ..backends.sglang import BF16_TRANSPORT_MAX_INJECTION_SCALE
    from ..decoding import Decoding
    from ..metrics import TRAIN_BASELINE_ROWS
    from ..reconstruct import PREFLIGHT_TOLERANCE, STEP0_RATIO_TOLERANCE
    from ..explanation import AR_PROMPT_MAX_TOKENS

    return {
        "recipe.min_position": SamplerConfig().min_position,
        "recipe.positions_per_doc": SamplerConfig().n_per_doc,
        "recipe.ar_prompt_cap": AR_PROMPT_MAX_TOKENS,
        "recipe.max_new_tokens": Decoding().max_new_tokens,
        "recipe.bf16_threshold": BF16_TRANSPORT_MAX_INJECTION_SCALE,
        "recipe.baseline_rows": TRAIN_BASELINE_ROWS,
        "recipe.step0_tol": [STEP0_RATIO_TOLERANCE, PREFLIGHT_TOLERANCE],
    }


def bf16_spacing(x: float) -> float:
    """Gap between adjacent bfloat16 numbers at |x| (8 significant bits): 2^(floor(log2|x|) - 7)."""
    return math.ldexp(1.0, math.frexp(abs(float(x)))[1] - 8)


def _config(d):
    cfg = json.loads((d / "config.json").read_text())
    return cfg, cfg.get("text_config", cfg)


@experiment(NAME, default_n=2, decoding="none (files only)", denominator="none (files only)",
            failure_convention="none (files only)")
def recipe_constants(ctx, pair_name):
    from safetensors import safe_open

    h = ctx.pairs[pair_name]
    av, ar = load_sidecar(h.av_dir), load_sidecar(h.ar_dir)
    _, ar_t = _config(h.ar_dir)
    av_cfg, av_t = _config(h.av_dir)
    K = int(ar.extraction_layer_index)
    d = int(av.d_model)
    base_layers = int(av_t.get("num_hidden_layers"))
    model_type = str(av_t.get("model_type", av_cfg.get("model_type", "")))
    with safe_open(str(h.ar_dir / "value_head.safetensors"), framework="pt") as st:
        vh_shape = list(st.get_slice(list(st.keys())[0]).get_shape())
    drift = {}
    for f in ("d_model", "extraction_layer_index", "injection_char", "injection_token_id", "left_neighbor_id",
              "right_neighbor_id", "mse_scale"):
        a, b = getattr(av, f), getattr(ar, f)
        if a is not None and b is not None and a != b:
            drift[f] = [a, b]
    return {
        "recipe.d_model": d,
        "recipe.layer_index": K,
        "recipe.base_layers": base_layers,
        "recipe.gold_hidden_states_index": K + 1,
        "recipe.depth_pct": 100.0 * K / base_layers,
        "recipe.av_layer_index": int(av.extraction_layer_index),
        "recipe.ar_num_hidden_layers": int(ar_t.get("num_hidden_layers")),
        "recipe.ar_layers_eq_K_plus_1": int(ar_t.get("num_hidden_layers")) == K + 1,
        "recipe.injection_scale": float(av.injection_scale),
        "recipe.bf16_resolution": bf16_spacing(av.injection_scale),
        "recipe.mse_scale": float(ar.mse_scale) if ar.mse_scale is not None else float("nan"),
        "recipe.mse_scale_eq_sqrt_d": ar.mse_scale is not None and abs(float(ar.mse_scale) - math.sqrt(d)) < 1e-6,
        "recipe.injection_token": [str(av.injection_char), int(av.injection_token_id)],
        "recipe.injection_token_id": int(av.injection_token_id),
        "recipe.left_neighbor_id": int(av.left_neighbor_id),
        "recipe.right_neighbor_id": int(av.right_neighbor_id),
        "recipe.critic_suffix_ids": [int(i) for i in (ar.critic_suffix_ids or [])],
        "recipe.embed_scale": math.sqrt(d) if model_type.startswith("gemma") else 1.0,
        "recipe.value_head_shape": vh_shape,
        "recipe.sidecars_agree": not drift,
        "sidecar.drift": drift,
        # The harness's own defaults, read from the code that uses them: a default drifting away from
        # the release's value is a recipe change and fails its claim.
        **harness_defaults(),
        "_n": 1,
        "_protocol": {"model_type": model_type, "source": "nla_meta.yaml + config.json + value_head header"},
    }
