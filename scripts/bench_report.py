"""Markdown table of a pytest-benchmark JSON file, for a model card.

    python -m pytest benchmarks --benchmark-only --benchmark-json bench.json
    python scripts/bench_report.py bench.json            # prints Markdown to stdout

One row per benchmark: name, rounds, mean and min wall seconds, and its ``extra_info`` (the figures
each benchmark records, e.g. decode_s / score_s / fve_nrm). The header names the machine (CPU, cores),
the commit and when it ran, because the numbers are only comparable on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "×".join(map(str, v)) if all(isinstance(x, int) for x in v) else json.dumps(v)
    return str(v)


def render(data: dict) -> str:
    m, c = data.get("machine_info", {}), data.get("commit_info", {})
    cpu = m.get("cpu", {})
    lines = [
        f"Benchmarks run {data.get('datetime', '?')} on {cpu.get('brand_raw', m.get('processor', '?'))} "
        f"({cpu.get('count', '?')} logical cores visible), Python {m.get('python_version', '?')}, "
        f"commit {c.get('id', '?')[:12]}{' (dirty tree)' if c.get('dirty') else ''}.",
        "",
        "| benchmark | rounds | mean s | min s | recorded |",
        "|---|---:|---:|---:|---|",
    ]
    for b in data.get("benchmarks", []):
        s = b["stats"]
        extra = "; ".join(f"{k} = {_fmt(v)}" for k, v in sorted(b.get("extra_info", {}).items()))
        lines.append(f"| {b['name']} | {s['rounds']} | {s['mean']:.4g} | {s['min']:.4g} | {extra} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_file", type=Path, help="output of pytest --benchmark-json")
    a = ap.parse_args(argv)
    sys.stdout.write(render(json.loads(a.json_file.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
