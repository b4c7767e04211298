"""Environment fingerprint for results, cache entries and snapshots.

Modelled on lm-evaluation-harness's results JSON (``git_hash``, ``transformers_version``, env info) and
inspect_ai's ``EvalSpec.packages``: every stored number carries the code revision and the library versions
that produced it, so two runs can show they ran the same thing, and a difference can be traced to a
version bump rather than guessed at.

Two levels:
- :func:`library_versions` is cheap (package metadata only, imports nothing heavy). The cache writes it
  into every entry's metadata.
- :func:`environment_fingerprint` adds git state, platform and the compute device. It imports torch
  (only if it is installed) to ask for CUDA and the GPU name.

Missing packages are recorded as ``None``, never dropped, so "not installed" is visible in the output.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata as _md
from pathlib import Path
from typing import Any

__all__ = [
    "TRACKED_PACKAGES",
    "package_version",
    "nla_repro_version",
    "library_versions",
    "git_state",
    "device_info",
    "environment_fingerprint",
    "fingerprint_digest",
]

# Distributions whose version can change a number we report (tokenisation, kernels, maths).
TRACKED_PACKAGES = ("numpy", "torch", "transformers", "tokenizers", "safetensors", "accelerate")
# Engines are optional; recorded when present.
OPTIONAL_PACKAGES = ("sglang", "vllm", "matplotlib")

_REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version(dist: str) -> str | None:
    """Installed version of distribution ``dist`` or None when it is not installed."""
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return None


def nla_repro_version() -> str:
    """nla_repro's version: the package attribute, the installed metadata, or pyproject.toml."""
    try:  # a package __init__ may define it
        import nla_repro  # noqa: PLC0415

        v = getattr(nla_repro, "__version__", None)
        if isinstance(v, str) and v:
            return v
    except Exception:  # pragma: no cover - namespace package without __init__
        pass
    v = package_version("nla-repro")
    if v:
        return v
    pyproject = _REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib  # noqa: PLC0415

            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            v = data.get("project", {}).get("version")
            if v:
                return f"{v}+src"
        except Exception:  # pragma: no cover
            pass
    return "unknown"


def library_versions() -> dict[str, str | None]:
    """Versions of python, nla_repro and the numerically relevant libraries (cheap; no heavy imports)."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "nla_repro": nla_repro_version(),
    }
    for dist in TRACKED_PACKAGES:
        out[dist] = package_version(dist)
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args], cwd=str(cwd), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip()


def git_state(repo_dir: str | Path | None = None) -> dict[str, Any]:
    """``{"git_hash", "git_dirty", "git_branch"}`` of ``repo_dir`` (default: this checkout).

    ``git_dirty`` is True when tracked files differ from HEAD (untracked files are ignored, as
    ``git describe --dirty`` does). All values are None when there is no git or no repository.
    """
    cwd = Path(repo_dir) if repo_dir is not None else _REPO_ROOT
    head = _git(["rev-parse", "HEAD"], cwd)
    if head is None:
        return {"git_hash": None, "git_dirty": None, "git_branch": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd)
    return {"git_hash": head, "git_dirty": bool(status) if status is not None else None, "git_branch": branch}


def device_info() -> dict[str, Any]:
    """``{"device", "cuda", "gpu_count", "gpus", "cudnn"}``; device is the GPU name or ``"cpu"``."""
    info: dict[str, Any] = {"device": "cpu", "cuda": None, "gpu_count": 0, "gpus": [], "cudnn": None}
    if package_version("torch") is None:
        return info
    try:
        import torch  # noqa: PLC0415
    except Exception:  # pragma: no cover - broken install
        return info
    info["cuda"] = getattr(torch.version, "cuda", None)
    try:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            names = [torch.cuda.get_device_name(i) for i in range(n)]
            info.update(gpu_count=n, gpus=names, device=names[0] if names else "cuda")
            cudnn = torch.backends.cudnn.version()
            info["cudnn"] = str(cudnn) if cudnn is not None else None
    except Exception:  # pragma: no cover - driver trouble is recorded, not raised
        info["device"] = "cpu (cuda query failed)"
    return info


def environment_fingerprint(repo_dir: str | Path | None = None, *, include_device: bool = True) -> dict[str, Any]:
    """Everything about the environment that can change a reported number.

    Keys: ``git_hash``, ``git_dirty``, ``git_branch``, ``python``, ``nla_repro``, one key per tracked
    package (``numpy``, ``torch``, ``transformers``, ``tokenizers``, ``safetensors``, ``accelerate``),
    ``optional_packages`` (engines when installed), ``platform``, ``machine``, and with
    ``include_device``: ``device`` (GPU name or ``"cpu"``), ``cuda``, ``gpu_count``, ``gpus``, ``cudnn``.
    """
    fp: dict[str, Any] = {}
    fp.update(git_state(repo_dir))
    fp.update(library_versions())
    fp["optional_packages"] = {d: package_version(d) for d in OPTIONAL_PACKAGES if package_version(d)}
    fp["platform"] = platform.platform()
    fp["machine"] = platform.machine()
    fp["python_implementation"] = sys.implementation.name
    if include_device:
        fp.update(device_info())
    return fp


def fingerprint_digest(fp: dict[str, Any], *, keys: tuple[str, ...] | None = None) -> str:
    """Short sha256 (16 hex) of a fingerprint, or of the subset ``keys`` (e.g. versions + device only)."""
    sub = {k: fp.get(k) for k in keys} if keys is not None else fp
    blob = json.dumps(sub, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
