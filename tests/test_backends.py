"""Decoding backends (`--backend`): hf is the path every number came from, an engine that is not installed
is refused (skipped under pytest) with a reason and never replaced by hf, and the backend is part of every
experiment's cache key and provenance."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nla_repro import backends
from nla_repro.backends import BackendUnavailable
from nla_repro.backends import sglang, vllm
from nla_repro.cache import CacheKey, ResultsCache
from nla_repro.decoding import Decoding
from nla_repro.fixtures.factory import FAMILIES
from nla_repro.verbalize import Verbalization, _eos_ids, build_av_inputs, verbalize

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"sglang": "sglang"}  # backend -> the package that must be importable (vllm's client needs a URL)
MISSING = [b for b, pkg in ENGINES.items() if importlib.util.find_spec(pkg) is None]
needs_missing = pytest.mark.skipif(not MISSING, reason="every serving engine is installed here")
OPTIONS = {"corroboration": {"max_new_tokens": 8, "failure_convention": "client_raw", "gaussian_null": False,
                             "n_boot": 10}}


class OtherEngine:
    """A second, available backend for the key/provenance tests: decodes with HF, names itself otherwise."""

    name = "other-engine"
    version = "0.0-test"
    calls = 0

    def decode(self, av, vectors, decoding, *, batch_size=16, banned_token_ids=None):
        OtherEngine.calls += 1
        return verbalize(av, vectors, decoding, batch_size=batch_size, banned_token_ids=banned_token_ids)


@pytest.fixture
def other_engine(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "other", f"{__name__}:OtherEngine")
    OtherEngine.calls = 0
    return "other"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama pair with a fixture-base eval set (mechanics only)."""
    from nla_repro.fixtures.factory import make_pair

    return make_pair("llama", tmp_path_factory.mktemp("backend-pair"))


def _ctx(tiny, backend, cache=None):
    from nla_repro.evalset import make_pair_handle
    from nla_repro.experiments.base import ExperimentContext

    h = make_pair_handle("tiny", tiny.av, tiny.ar, base="fixture", n_docs=4, adjacent=False, backend=backend,
                         cache=cache)
    h.train_denominator = 0.5  # stand-in; fixtures carry no metrics.train_rawvar
    return ExperimentContext(pairs={"tiny": h}, eval_size=4, cache=cache, options=OPTIONS)


# ------------------------------------------------------------------------------------------ hf = reference

@pytest.mark.parametrize("family,decoding", [
    *[(f, Decoding(max_new_tokens=6)) for f in FAMILIES],
    ("llama", Decoding(greedy=False, temperature=1.0, seed=3, max_new_tokens=6)),
], ids=[*(f"greedy-{f}" for f in FAMILIES), "sampled-llama"])
def test_hf_backend_decodes_identically_to_the_verbalize_path(loaded_pair, family, decoding, rng):
    pair = loaded_pair(family)
    assert pair.backend.name == "hf"
    v = rng.normal(size=(3, pair.d_model)).astype(np.float32)
    plain = verbalize(pair.av, v, decoding, batch_size=2)
    assert pair.verbalize(v, decoding, batch_size=2) == plain
    banned = sorted({x.token_ids[0] for x in plain})  # the kwargs must reach the decoder
    via_pair = pair.verbalize(v, decoding, batch_size=2, banned_token_ids=banned)
    assert via_pair == verbalize(pair.av, v, decoding, batch_size=2, banned_token_ids=banned)
    assert via_pair != plain


# ------------------------------------------------------------------------------------------ unavailable

@needs_missing
@pytest.mark.parametrize("name", MISSING)
def test_missing_engine_is_refused_with_install_hint(name, tiny):
    with pytest.raises(BackendUnavailable, match=rf"(?i){name}.*not installed.*pip install 'nla-repro\[{name}\]'"):
        backends.get_backend(name)
    from nla_repro.pair import NLAPair

    with pytest.raises(BackendUnavailable, match="not installed"):
        NLAPair.from_dirs(tiny.av, tiny.ar, backend=name)


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="expected one of"):
        backends.get_backend("tgi")


@needs_missing
def test_runner_refuses_unavailable_backend_before_cache_or_compute(tiny, tmp_path):
    from nla_repro.experiments.runner import COMPUTE_CALLS, run_experiment

    cache = ResultsCache(tmp_path / "cache")
    before = COMPUTE_CALLS.get("corroboration", 0)
    with pytest.raises(BackendUnavailable, match=MISSING[0]):
        run_experiment("corroboration", _ctx(tiny, MISSING[0], cache), "tiny")
    assert COMPUTE_CALLS.get("corroboration", 0) == before
    assert cache.list("experiment-corroboration") == []


@needs_missing
def test_claims_suite_skips_every_claim_naming_the_engine(tiny, tmp_path):
    """`pytest --claims --backend NAME` without the engine: nothing passes or fails, and every claim that
    was planned to run is skipped with the engine's reason (the others keep their planning reason)."""
    name = MISSING[0]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/claims", "--claims", "--backend", name,
         "--pair", f"tiny={tiny.av},{tiny.ar}", "--base", "tiny=fixture", "--cache-dir", str(tmp_path / "c"),
         "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    tail = text.strip().splitlines()[-1]
    assert "skipped" in tail and "passed" not in tail and "failed" not in tail and "error" not in tail, tail
    from nla_repro.claims import load_claims
    from nla_repro.claims.run import plan_cases

    would_run = sum(c.status is None for c in plan_cases(load_claims(), ["tiny"]))
    reason = f"--backend {name}: the"
    engine_skips = [ln for ln in text.splitlines() if ln.startswith("SKIPPED") and reason in ln
                    and f"pip install 'nla-repro[{name}]'" in ln]
    n_engine = sum(int(re.match(r"SKIPPED \[(\d+)\]", ln).group(1)) for ln in engine_skips)
    assert would_run > 0 and n_engine == would_run, (would_run, engine_skips, text[-3000:])


# ------------------------------------------------------------------------------------------ key + provenance

def test_cache_key_and_provenance_name_the_backend(tiny, tmp_path, other_engine):
    from nla_repro.experiments.runner import COMPUTE_CALLS, cache_key, run_experiment

    cache = ResultsCache(tmp_path / "cache")
    k_hf = cache_key("corroboration", _ctx(tiny, "hf"), "tiny")
    k_other = cache_key("corroboration", _ctx(tiny, other_engine), "tiny")
    assert k_hf["backend"] == {"tiny": backends.identity("hf")}
    assert k_hf["backend"]["tiny"]["name"] == "hf" and k_hf["backend"]["tiny"]["version"]
    assert k_other["backend"]["tiny"]["name"] == "other-engine"
    assert {k for k in k_hf if k_hf[k] != k_other[k]} == {"backend"}
    assert CacheKey(k_hf).digest != CacheKey(k_other).digest

    before = COMPUTE_CALLS.get("corroboration", 0)
    r_hf = run_experiment("corroboration", _ctx(tiny, "hf", cache), "tiny")
    r_other = run_experiment("corroboration", _ctx(tiny, other_engine, cache), "tiny")
    assert COMPUTE_CALLS["corroboration"] == before + 2  # the hf entry was not served for the other engine
    assert OtherEngine.calls > 0
    assert r_hf.provenance["backend"] == k_hf["backend"]
    assert r_other.provenance["backend"] == {"tiny": {"name": "other-engine", "version": "0.0-test",
                                                      "code": k_other["backend"]["tiny"]["code"]}}
    assert r_hf.protocol["backend"] == {"tiny": f"hf {backends.identity('hf')['version']}"}
    assert r_other.protocol["backend"] == {"tiny": "other-engine 0.0-test"}   # named in the report's table
    assert r_hf.figures["explanation.tag_failure_rate"] == r_other.figures["explanation.tag_failure_rate"]


def test_identity_code_digest_follows_the_backend_module():
    hf = backends.identity("hf")
    import hashlib

    src = (ROOT / "nla_repro" / "backends" / "hf.py").read_bytes()
    assert hf["code"] == hashlib.sha256(src).hexdigest()[:16]
    shared = (ROOT / "nla_repro" / "backends" / "server.py").read_bytes()  # the clients' base class module
    for mod, cls in ((sglang, sglang.SGLangBackend), (vllm, vllm.VLLMBackend)):
        own = Path(mod.__file__).read_bytes()
        assert backends.code_digest(cls) == hashlib.sha256(own + shared).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ sglang client

def test_sglang_row_payloads_carry_the_hf_inputs(loaded_pair, rng):
    pair = loaded_pair("gemma3")
    v = rng.normal(size=(3, pair.d_model)).astype(np.float32)
    dec = Decoding()
    payloads = sglang.row_payloads(pair.av, v, dec)
    inputs = build_av_inputs(pair.av, v)
    assert len(payloads) == 3
    for b, p in enumerate(payloads):
        keep = inputs.attention_mask[b].bool()
        want = inputs.inputs_embeds[b][keep].float().numpy()
        got = np.asarray(p["input_embeds"], dtype=np.float32)
        np.testing.assert_array_equal(got, want)
        pos = inputs.injection_positions[b] - int((~keep).sum())
        assert np.linalg.norm(got[pos]) == pytest.approx(pair.av.sidecar.injection_scale, rel=1e-5)
        assert p["sampling_params"]["max_new_tokens"] == dec.budget(len(want))
        assert p["sampling_params"]["temperature"] == 0.0
        assert p["sampling_params"]["stop_token_ids"] == _eos_ids(pair.av)


def test_sglang_reply_parsing_reproduces_the_hf_convention(loaded_pair, rng):
    """A /generate reply carrying HF's tokens parses to HF's Verbalization: budget hit, or stopped on EOS
    (random fixture AVs never emit EOS, so the stopped case cuts an HF decode and applies verbalize's rule:
    text and ids before the stop id, n_new_tokens counts it)."""
    pair = loaded_pair("llama")
    tok, eos = pair.av.tokenizer, _eos_ids(pair.av)
    v = rng.normal(size=(2, pair.d_model)).astype(np.float32)
    for x in verbalize(pair.av, v, Decoding(max_new_tokens=6)):
        assert x.truncated
        budget_hit = {"output_ids": list(x.token_ids), "meta_info": {"finish_reason": {"type": "length"}}}
        assert sglang.verbalization_from_reply(budget_hit, tok, eos) == x
        ids = list(x.token_ids[:3])
        stopped = {"output_ids": ids + [eos[0]], "meta_info": {"finish_reason": {"type": "stop", "matched": eos[0]}}}
        assert sglang.verbalization_from_reply(stopped, tok, eos) == Verbalization(
            text=tok.decode(ids, skip_special_tokens=False), token_ids=tuple(ids), truncated=False, n_new_tokens=4)
    with pytest.raises(RuntimeError, match="abort"):
        sglang.verbalization_from_reply({"output_ids": [], "meta_info": {"finish_reason": {"type": "abort"}}},
                                        pair.av.tokenizer, eos)


# ------------------------------------------------------------------------------------------ vllm client

def _sent_embeds(payload: dict) -> torch.Tensor:
    """What the vLLM server loads from a payload (its loader: base64 -> torch.load(weights_only=True))."""
    return torch.load(io.BytesIO(base64.b64decode(payload["prompt_embeds"], validate=True)), weights_only=True)


def test_vllm_launch_needs_prompt_embeds_and_no_prefix_caching():
    args = vllm.launch_args("AV_DIR")
    vllm.check_launch_args(args)
    for flag in vllm.REQUIRED_FLAGS:
        with pytest.raises(ValueError, match=re.escape(flag)):
            vllm.check_launch_args([a for a in args if a != flag])
    with pytest.raises(ValueError, match=r"--enable-prompt-embeds.*--no-enable-prefix-caching.*trap #7"):
        vllm.check_launch_args(["vllm", "serve", "AV_DIR"])


def test_vllm_payload_round_trips_the_embeds_bit_for_bit(rng):
    e = (rng.normal(size=(7, 16)) * 3e4).astype(np.float32)  # Gemma-sized values, where bf16 would round
    got = _sent_embeds(vllm.completions_payload(e, Decoding(), 150, "av"))
    assert got.dtype == torch.float32 and tuple(got.shape) == (7, 16)
    np.testing.assert_array_equal(got.numpy().view(np.uint32), e.view(np.uint32))

    bf16 = torch.from_numpy(e).to(torch.bfloat16)  # an AV loaded in bf16: widened losslessly
    assert torch.equal(_sent_embeds(vllm.completions_payload(bf16, Decoding(), 150, "av")).to(torch.bfloat16), bf16)

    big = torch.from_numpy(rng.normal(size=(200, 16)).astype(np.float32))
    rows = vllm.completions_payload(big[10:12], Decoding(), 150, "av")  # a view: only its rows travel
    assert torch.equal(_sent_embeds(rows), big[10:12])
    compact = vllm.completions_payload(big[10:12].clone(), Decoding(), 150, "av")
    assert len(rows["prompt_embeds"]) == len(compact["prompt_embeds"])  # not the 200-row storage


def test_vllm_payload_is_greedy_embeds_only_with_every_sampling_field_explicit():
    p = vllm.completions_payload(np.zeros((3, 4)), Decoding(), 150, "av")
    vllm.check_payload(p)
    assert "prompt" not in p and p["model"] == "av" and p["max_tokens"] == 150 and p["n"] == 1
    assert (p["temperature"], p["top_p"], p["top_k"], p["min_p"]) == (0.0, 1.0, 0, 0.0)
    assert (p["repetition_penalty"], p["presence_penalty"], p["frequency_penalty"]) == (1.0, 0.0, 0.0)
    assert p["skip_special_tokens"] is False and p["return_token_ids"] is True and p["stream"] is False
    with pytest.raises(ValueError, match="text prompt together with prompt_embeds"):
        vllm.check_payload({**p, "prompt": "explain"})
    with pytest.raises(ValueError, match="no prompt_embeds"):
        vllm.check_payload({k: x for k, x in p.items() if k != "prompt_embeds"})
    sampled = vllm.completions_payload(np.zeros((3, 4)), Decoding(greedy=False, temperature=0.7, top_p=0.9,
                                                                   top_k=5), 150, "av")
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 5)


@pytest.mark.parametrize("shape", [(4,), (1, 3, 4), (0, 4)])
def test_vllm_payload_refuses_anything_but_one_2d_embeds(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        vllm.completions_payload(np.zeros(shape), Decoding(), 150, "av")


def test_vllm_row_payloads_carry_the_hf_inputs(loaded_pair, rng):
    pair = loaded_pair("gemma3")
    v = rng.normal(size=(3, pair.d_model)).astype(np.float32)
    dec = Decoding()
    payloads = vllm.row_payloads(pair.av, v, dec, "served-av")
    inputs = build_av_inputs(pair.av, v)
    assert len(payloads) == 3
    for b, p in enumerate(payloads):
        keep = inputs.attention_mask[b].bool()
        want = inputs.inputs_embeds[b][keep].float()
        got = _sent_embeds(p)
        assert torch.equal(got, want)
        pos = inputs.injection_positions[b] - int((~keep).sum())
        assert float(got[pos].norm()) == pytest.approx(pair.av.sidecar.injection_scale, rel=1e-5)
        assert p["max_tokens"] == dec.budget(len(want)) and p["model"] == "served-av"
        assert p["temperature"] == 0.0 and "prompt" not in p
        assert p["stop_token_ids"] == _eos_ids(pair.av)
        assert p["repetition_penalty"] == vllm.hf_repetition_penalty(pair.av)


def test_vllm_reply_parsing_reproduces_the_hf_convention(loaded_pair, rng):
    """A /v1/completions reply carrying HF's tokens parses to HF's Verbalization (as for SGLang: budget
    hit, or stopped on a stop id that the returned token_ids include)."""
    pair = loaded_pair("llama")
    tok, eos = pair.av.tokenizer, _eos_ids(pair.av)

    def reply(ids, finish):
        return {"choices": [{"index": 0, "text": "ignored", "token_ids": ids, "finish_reason": finish,
                             "stop_reason": None}]}

    v = rng.normal(size=(2, pair.d_model)).astype(np.float32)
    for x in verbalize(pair.av, v, Decoding(max_new_tokens=6)):
        assert x.truncated
        assert vllm.verbalization_from_reply(reply(list(x.token_ids), "length"), tok, eos) == x
        ids = list(x.token_ids[:3])
        assert vllm.verbalization_from_reply(reply(ids + [eos[0]], "stop"), tok, eos) == Verbalization(
            text=tok.decode(ids, skip_special_tokens=False), token_ids=tuple(ids), truncated=False, n_new_tokens=4)
    with pytest.raises(RuntimeError, match="abort"):
        vllm.verbalization_from_reply(reply([], "abort"), tok, eos)
    with pytest.raises(RuntimeError, match="return_token_ids"):
        vllm.verbalization_from_reply(reply(None, "stop"), tok, eos)


CACHE_CONFIG_METRIC = ('# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n'
                       '# TYPE vllm:cache_config_info gauge\n'
                       'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="%s",'
                       'engine="0",gpu_memory_utilization="0.85"} 1.0\n')


def test_vllm_prefix_caching_is_read_from_the_cache_config_metric():
    assert vllm.prefix_caching_from_metrics(CACHE_CONFIG_METRIC % "False") is False
    assert vllm.prefix_caching_from_metrics(CACHE_CONFIG_METRIC % "True") is True
    assert vllm.prefix_caching_from_metrics("vllm:num_requests_running 0.0\n") is None
    assert vllm.prefix_caching_from_metrics('vllm:cache_config_info{block_size="16"} 1.0\n') is None


def test_vllm_without_server_url_is_refused_naming_the_variable(monkeypatch, tiny):
    monkeypatch.delenv(vllm.SERVER_URL_ENV, raising=False)
    with pytest.raises(BackendUnavailable, match=r"\$NLA_REPRO_VLLM_URL is unset.*vllm serve AV_DIR "
                                                 r"--enable-prompt-embeds --no-enable-prefix-caching"):
        backends.get_backend("vllm")
    from nla_repro.pair import NLAPair

    with pytest.raises(BackendUnavailable, match="NLA_REPRO_VLLM_URL"):
        NLAPair.from_dirs(tiny.av, tiny.ar, backend="vllm")


def test_vllm_unreachable_server_is_refused_naming_the_url(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(vllm.SERVER_URL_ENV, url)
    with pytest.raises(BackendUnavailable, match=rf"{re.escape(url)}/version is not reachable.*vllm serve"):
        backends.get_backend("vllm")


class _FakeVLLM(http.server.BaseHTTPRequestHandler):
    """The endpoints the vLLM client reads; `/v1/completions` answers from `replies` in request order."""

    metrics, root, replies, received = "", "", [], []

    def do_GET(self):
        body = {"/version": lambda: json.dumps({"version": "0.0-fake"}),
                "/v1/models": lambda: json.dumps({"data": [{"id": "served-av", "root": _FakeVLLM.root}]}),
                "/metrics": lambda: _FakeVLLM.metrics}[self.path]()
        self._send(body)

    def do_POST(self):
        assert self.path == "/v1/completions"
        _FakeVLLM.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._send(json.dumps(_FakeVLLM.replies.pop(0)))

    def _send(self, body: str):
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_vllm(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeVLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(vllm.SERVER_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    _FakeVLLM.metrics, _FakeVLLM.root, _FakeVLLM.replies, _FakeVLLM.received = "", "", [], []
    yield _FakeVLLM
    server.shutdown()
    server.server_close()


def test_vllm_client_refuses_a_server_with_prefix_caching_on_or_unreported(fake_vllm):
    fake_vllm.metrics = CACHE_CONFIG_METRIC % "True"
    with pytest.raises(ValueError, match="prefix caching on.*trap #7"):
        backends.get_backend("vllm")
    fake_vllm.metrics = "vllm:num_requests_running 0.0\n"  # e.g. --disable-log-stats
    with pytest.raises(ValueError, match="does not report its prefix caching"):
        backends.get_backend("vllm")
    fake_vllm.metrics = CACHE_CONFIG_METRIC % "False"
    b = backends.get_backend("vllm")
    assert (b.version, b.model_name, b.url) == ("0.0-fake", "served-av", os.environ[vllm.SERVER_URL_ENV][:-1])


def test_vllm_client_decodes_the_served_av_in_the_hf_convention(fake_vllm, loaded_pair, rng, tmp_path):
    """Against a server answering with HF's tokens, `decode` sends `row_payloads` to /v1/completions and
    returns HF's Verbalizations; it refuses a server serving another checkpoint, and sampled decodes."""
    pair = loaded_pair("llama")
    fake_vllm.metrics, fake_vllm.root = CACHE_CONFIG_METRIC % "False", str(tmp_path)
    b = backends.get_backend("vllm")
    v = rng.normal(size=(3, pair.d_model)).astype(np.float32)
    dec = Decoding(max_new_tokens=6)
    with pytest.raises(ValueError, match="not the AV"):
        b.decode(pair.av, v, dec)
    b.model_path = str(pair.av.path)
    with pytest.raises(NotImplementedError, match="greedily"):
        b.decode(pair.av, v, Decoding(greedy=False, seed=1))
    with pytest.raises(NotImplementedError, match="greedily"):
        b.decode(pair.av, v, dec, banned_token_ids=[0])
    assert fake_vllm.received == []
    want = verbalize(pair.av, v, dec)
    fake_vllm.replies = [{"choices": [{"token_ids": list(x.token_ids), "finish_reason": "length"}]} for x in want]
    assert b.decode(pair.av, v, dec, batch_size=1) == want
    assert fake_vllm.received == vllm.row_payloads(pair.av, v, dec, "served-av")


@pytest.mark.skipif(not os.environ.get(vllm.SERVER_URL_ENV),
                    reason=f"needs a live vLLM server: ${vllm.SERVER_URL_ENV} is unset "
                           f"(launch one with `{' '.join(vllm.launch_args('AV_DIR'))}`)")
def test_vllm_live_server_decodes_in_the_hf_convention(rng):
    """Against the AV the server serves: conventions hold, distinct vectors do not alias (trap #7), and a
    request decoded alone twice decodes identically."""
    from nla_repro import sanity
    from nla_repro.checkpoint import load_av

    b = backends.get_backend("vllm")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    av = load_av(b.model_path, dtype=torch.bfloat16, device=device)
    v = rng.normal(size=(8, av.sidecar.d_model)).astype(np.float32)
    dec = Decoding(max_new_tokens=48)
    out = b.decode(av, v, dec, batch_size=4)
    budget = dec.budget(build_av_inputs(av, v[:1]).input_ids.shape[1])
    for x in out:
        assert x.text == av.tokenizer.decode(list(x.token_ids), skip_special_tokens=False)
        assert not set(x.token_ids) & set(_eos_ids(av))
        assert x.n_new_tokens == len(x.token_ids) + (0 if x.truncated else 1) <= budget
    assert sanity.aliased_decodes([x.text for x in out], v) is None
    assert b.decode(av, v[:2], dec, batch_size=1) == b.decode(av, v[:2], dec, batch_size=1)
    with pytest.raises(NotImplementedError, match="greedily"):
        b.decode(av, v[:1], Decoding(greedy=False, seed=1))
