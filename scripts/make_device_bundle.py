"""Pack what the GPU device needs to train the default pairs into chunk folders for `device_train.sh`.

Bundles (one tar each, in this order): for every family, its base GGUF + ``gguf.sha256`` + the `gguf`
wheel (the device lacks the package) + ``tokenizer.tar.xz`` (converted here, probe-checked) + ``deltas/`` when ``--continue FAMILY`` asks to start from the
shipped deltas.  The bundles' bytes are cut into parts that fill chunk folders ``.dev/chunks/cK`` so
that every call stays under the device's 64 MiB (working tree + carried folder):

    python scripts/make_device_bundle.py --families smollm2,gemma3 --continue smollm2 --wheel .whl/gguf-0.19.0-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from nla_repro.assets import sha256_file
from nla_repro.default_pair.materialize import DELTAS_DIR
from nla_repro.training.base import gguf_path, spec_of

CALL_LIMIT = 64 * 2**20
MARGIN = 2 * 2**20


def working_tree_bytes(repo: Path) -> int:
    """Bytes the device tool sends besides carried folders: tracked + untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout
    return sum((repo / p).stat().st_size for p in out.decode().split("\0") if p and (repo / p).is_file())


def saved_tokenizer(family: str) -> bytes:
    """The family's tokenizer as converted HERE (probe-checked), saved and xz-tarred: the device's
    transformers may convert the GGUF tokenizer differently (5.17 does, for Gemma 3)."""
    from nla_repro.training.base import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        load_tokenizer(family).save_pretrained(Path(tmp) / "tokenizer")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            tar.add(Path(tmp) / "tokenizer", arcname="tokenizer")
        return buf.getvalue()


def build_bundle(family: str, wheel: Path, with_deltas: bool) -> bytes:
    spec = spec_of(family)
    g = gguf_path(family)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tok = saved_tokenizer(family)
        info = tarfile.TarInfo("tokenizer.tar.xz")
        info.size = len(tok)
        tar.addfile(info, io.BytesIO(tok))
        tar.add(g, arcname=spec.gguf_file)
        sha = f"{spec.gguf_sha256}  {spec.gguf_file}\n".encode()
        info = tarfile.TarInfo("gguf.sha256")
        info.size = len(sha)
        tar.addfile(info, io.BytesIO(sha))
        tar.add(wheel, arcname=wheel.name)
        if with_deltas:
            tar.add(DELTAS_DIR / family, arcname="deltas")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="smollm2,gemma3")
    ap.add_argument("--continue", dest="cont", default="", help="families that start from their shipped deltas")
    ap.add_argument("--wheel", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path(".dev/chunks"))
    a = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    cap = CALL_LIMIT - working_tree_bytes(repo) - MARGIN
    if cap < 8 * 2**20:
        raise SystemExit(f"working tree leaves only {cap} bytes per call")
    shutil.rmtree(a.out, ignore_errors=True)
    cont = set(filter(None, a.cont.split(",")))
    # the stream of (bundle name, bytes); parts never span two chunk folders
    chunks: list[list[tuple[str, bytes]]] = [[]]
    room = cap
    shas = {}
    for fam in a.families.split(","):
        data = build_bundle(fam, a.wheel, fam in cont)
        shas[fam] = hashlib.sha256(data).hexdigest()
        off = 0
        while off < len(data):
            if room == 0:
                chunks.append([])
                room = cap
            n = min(room, len(data) - off)
            chunks[-1].append((fam, data[off:off + n]))
            off += n
            room -= n
    counters: dict[str, int] = {}
    for k, parts in enumerate(chunks, 1):
        d = a.out / f"c{k}"
        d.mkdir(parents=True)
        for fam, blob in parts:
            i = counters.get(fam, 0)
            counters[fam] = i + 1
            (d / f"{fam}.tar.part{i:02d}").write_bytes(blob)
    for fam, n in counters.items():  # the sha file travels with the bundle's last part
        last = max(a.out.glob(f"c*/{fam}.tar.part{n - 1:02d}"))
        (last.parent / f"{fam}.tar.sha256").write_text(f"{shas[fam]} {fam} {n}\n")
    for d in sorted(a.out.iterdir(), key=lambda p: int(p.name[1:])):
        size = sum(f.stat().st_size for f in d.iterdir())
        print(d, size, sorted(f.name for f in d.iterdir()))
    print(f"per-call room {cap} bytes; bundles {shas}; gguf sha256 checked: "
          + ", ".join(f"{f}={sha256_file(gguf_path(f)) == spec_of(f).gguf_sha256}" for f in counters))


if __name__ == "__main__":
    main()
