"""Building :class:`~nla_repro.experiments.base.PairHandle` objects for the claims suite.

Pairs come from two places:

- the **embedded default pairs** (:data:`DEFAULT_PAIRS`: ``default-smollm2``, ``default-gemma3``; which
  ones with ``--default-pairs``): ``nla_repro.default_pair.materialize.materialize`` writes the released
  layout; their gold comes from their GGUF base models (``evalset.gguf_base``);
- **user pairs** from ``--pair NAME=AV_DIR,AR_DIR``. ``NAME`` is one of the released pair names
  (:data:`nla_repro.claims.RELEASED_PAIRS`) or any label. Gold activations need the pair's *base model*:
  ``--base NAME=DIR`` if given, else the AV sidecar's ``base_checkpoint`` (an existing directory, or a
  Hugging Face repo id already in the local HF cache -- nothing is downloaded). Two special values are
  passed straight to :func:`nla_repro.evalset.make_pair_handle`: ``fixture`` (the AV itself as a
  mechanics-only stand-in) and ``gguf:<family>`` (a default pair's base, e.g. ``gguf:smollm2``).

Handles are built lazily by :class:`PairRegistry` (a pair that no selected test needs is never loaded),
and a pair that cannot be built raises :class:`PairUnavailable` whose message says what is missing and how
to provide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .claims import RELEASED_PAIRS

__all__ = [
    "DEFAULT_PAIR_NAME",
    "DEFAULT_FAMILY",
    "RELEASED_PAIRS",
    "RELEASED_FAMILY",
    "PairUnavailable",
    "PairRegistry",
    "provide_hint",
    "parse_base_option",
    "default_pair_dirs",
    "default_pair_handle",
    "default_pair_name",
    "DEFAULT_PAIRS",
    "resolve_base",
    "base_model_spec",
    "user_pair_handle",
]

DEFAULT_PAIR_NAME = "default-smollm2"
DEFAULT_FAMILY = "smollm2"
#: embedded default pairs: name -> (training family, PairHandle.family of its architecture)
DEFAULT_PAIRS = {"default-smollm2": ("smollm2", "llama"), "default-gemma3": ("gemma3", "gemma3")}
#: model family of each released pair (PairHandle.family)
RELEASED_FAMILY = {"qwen2.5-7b-L20": "qwen2", "gemma3-12b-L32": "gemma3", "gemma3-27b-L41": "gemma3",
                   "llama3.3-70b-L53": "llama"}
_SPECIAL_BASES = ("fixture", *(f"gguf:{fam}" for fam, _ in DEFAULT_PAIRS.values()))


class PairUnavailable(RuntimeError):
    """A pair (or its base model) cannot be built; the message names what is missing and how to fix it."""


def provide_hint(*names: str) -> str:
    """How a user provides pair(s) ``names`` to the claims suite."""
    opts = " ".join(f"--pair {n}=AV_DIR,AR_DIR" for n in names)
    base = " ".join(f"--base {n}=BASE_DIR" for n in names)
    return (f"provide with `pytest --claims {opts}` (the released AV and AR checkpoint directories; gold "
            f"activations need the base model: the AV sidecar's `base_checkpoint`, or `{base}`)")


def parse_base_option(values) -> dict[str, str]:
    """``NAME=DIR`` (repeatable) -> {NAME: DIR}. DIR may also be ``fixture`` or ``gguf:<family>``."""
    out: dict[str, str] = {}
    for v in values or []:
        name, sep, target = str(v).partition("=")
        if not sep or not name or not target:
            raise ValueError(f"--base {v!r}: expected NAME=BASE_MODEL_DIR")
        if target not in _SPECIAL_BASES and not Path(target).expanduser().is_dir():
            raise ValueError(f"--base {v!r}: base model directory {target} does not exist")
        out[name] = target
    return out


# --------------------------------------------------------------------------------------------- default pair

def default_pair_dirs(family: str = DEFAULT_FAMILY) -> tuple[Path, Path]:
    """(AV dir, AR dir) of the embedded default pair, materialised on first use."""
    try:
        from .default_pair.materialize import materialize
    except ImportError as e:
        raise PairUnavailable(
            f"the embedded default pair cannot be materialised: nla_repro.default_pair.materialize is not "
            f"importable ({e}); the default pair ships with the package (issue 4)") from e
    try:
        dirs = materialize(family)
    except Exception as e:  # surfaced with the cause, never hidden
        raise PairUnavailable(f"materialising the embedded default pair ({family}) failed: "
                              f"{type(e).__name__}: {e}") from e
    av, ar = Path(dirs.av), Path(dirs.ar)
    for role, d in (("AV", av), ("AR", ar)):
        if not d.is_dir():
            raise PairUnavailable(f"default pair {role} directory {d} does not exist after materialize()")
    return av, ar


def default_pair_name(family: str) -> str:
    for name, (fam, _) in DEFAULT_PAIRS.items():
        if fam == family:
            return name
    raise PairUnavailable(f"no embedded default pair for family {family!r}; known: "
                          f"{sorted(f for f, _ in DEFAULT_PAIRS.values())}")


def parse_families(value: str) -> tuple[str, ...]:
    """`smollm2,gemma3` -> ("smollm2", "gemma3"), order kept, duplicates dropped; ValueError names unknown ones."""
    known = [fam for fam, _ in DEFAULT_PAIRS.values()]
    fams = tuple(dict.fromkeys(f.strip() for f in str(value).split(",") if f.strip()))
    bad = [f for f in fams if f not in known]
    if bad or not fams:
        raise ValueError(f"{value!r}: unknown or empty family list {bad}; known: {known}")
    return fams


def default_pair_handle(*, cache=None, device: str = "cpu", name: str | None = None,
                        family: str = DEFAULT_FAMILY, **kw):
    """Handle of an embedded default pair; gold from its GGUF base model (dequantised fp32)."""
    from .evalset import make_pair_handle

    default_name = default_pair_name(family)
    av, ar = default_pair_dirs(family)
    return make_pair_handle(name or default_name, av, ar, base=f"gguf:{family}", cache=cache, device=device,
                            family=DEFAULT_PAIRS[default_name][1], **kw)


# --------------------------------------------------------------------------------------------- user pairs

def _hf_cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def resolve_base(name: str, av_dir, bases: dict[str, str] | None = None) -> str | Path:
    """The base model of pair ``name``: ``--base`` first, else the AV sidecar's ``base_checkpoint``.

    Returns a directory, or one of the special values ``fixture`` / ``gguf:<family>``."""
    from .sidecar import load_sidecar

    if bases and name in bases:
        b = bases[name]
        return b if b in _SPECIAL_BASES else Path(b).expanduser()
    sc = load_sidecar(Path(av_dir))
    raw = sc.raw if isinstance(sc.raw, dict) else {}
    bc = raw.get("base_checkpoint")
    if not bc or not isinstance(bc, str):
        raise PairUnavailable(
            f"pair {name!r}: the AV sidecar {Path(av_dir) / 'nla_meta.yaml'} has no `base_checkpoint`, and no "
            f"`--base {name}=BASE_DIR` was given; gold activations need the base model")
    if bc in _SPECIAL_BASES:
        return bc
    p = Path(bc).expanduser()
    if p.is_dir():
        return p
    snap = _hf_cached_snapshot(bc)
    if snap is not None:
        return snap
    raise PairUnavailable(
        f"pair {name!r}: base model {bc!r} (AV sidecar `base_checkpoint`) is neither a directory nor in the "
        f"local Hugging Face cache (nothing is downloaded); pass `--base {name}=BASE_DIR`")


def base_model_spec(base_dir, *, device: str = "cpu"):
    """BaseModelSpec for a Hugging Face model directory; its id is the directory's content hash."""
    from .cache import hash_checkpoint_dir
    from .evalset import BaseModelSpec

    base_dir = Path(base_dir)

    def load():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(base_dir))
        return model.to(device).eval(), tok

    return BaseModelSpec(f"hf-dir:{hash_checkpoint_dir(base_dir)}", load,
                         f"{base_dir.name} (Hugging Face directory, fp32)")


def user_pair_handle(name: str, av_dir, ar_dir, *, bases: dict[str, str] | None = None, cache=None,
                     device: str = "cpu", **kw):
    """Handle of a user-provided pair (``--pair NAME=AV,AR``)."""
    from .evalset import make_pair_handle

    av_dir, ar_dir = Path(av_dir), Path(ar_dir)
    for role, d in (("AV", av_dir), ("AR", ar_dir)):
        if not d.is_dir():
            raise PairUnavailable(f"pair {name!r}: {role} directory {d} does not exist")
    base = resolve_base(name, av_dir, bases)
    spec = base if isinstance(base, str) else base_model_spec(base, device=device)
    return make_pair_handle(name, av_dir, ar_dir, base=spec, cache=cache, device=device,
                            family=RELEASED_FAMILY.get(name, ""), **kw)


# --------------------------------------------------------------------------------------------- registry

@dataclass
class PairRegistry:
    """Lazily built handles for the pairs of one session.

    ``dirs``: {name: (av, ar)} from ``--pair``; empty means "the embedded default pairs of ``defaults``"
    (families, from ``--default-pairs``; SmolLM2 alone unless asked).
    ``backend``: the decoding backend of every handle built here (``--backend``).
    ``factories`` overrides how a name is built (tests use it for fixture pairs)."""

    dirs: dict = field(default_factory=dict)
    bases: dict = field(default_factory=dict)
    cache: object = None
    device: str = "cpu"
    backend: str = "hf"
    defaults: tuple = (DEFAULT_FAMILY,)
    factories: dict[str, Callable[[], object]] = field(default_factory=dict)
    _handles: dict = field(default_factory=dict)
    _errors: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        if self.factories or self.dirs:
            return list(dict.fromkeys([*self.dirs, *self.factories]))
        return [default_pair_name(f) for f in self.defaults]

    def get(self, name: str):
        if name in self._handles:
            return self._handles[name]
        if name in self._errors:  # a pair that failed to build fails every test that needs it, once built
            raise self._errors[name]
        try:
            if name in self.factories:
                h = self.factories[name]()
            elif name in self.dirs:
                av, ar = self.dirs[name]
                h = user_pair_handle(name, av, ar, bases=self.bases, cache=self.cache, device=self.device,
                                     backend=self.backend)
            elif name in DEFAULT_PAIRS and not self.dirs:
                h = default_pair_handle(cache=self.cache, device=self.device, backend=self.backend,
                                        family=DEFAULT_PAIRS[name][0])
            else:
                raise PairUnavailable(f"pair {name!r} was not provided; {provide_hint(name)}")
        except PairUnavailable as e:
            self._errors[name] = e
            raise
        except Exception as e:
            err = PairUnavailable(f"pair {name!r} could not be built: {type(e).__name__}: {e}")
            err.__cause__ = e
            self._errors[name] = err
            raise err from e
        self._handles[name] = h
        return h

    def handles(self, names) -> dict:
        return {n: self.get(n) for n in names}
