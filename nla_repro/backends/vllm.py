"""vLLM backend: named so `--backend vllm` is a real choice that is never answered by another engine.

Not implemented: nla-repro has no vLLM client yet (vLLM's `prompt_embeds` input would carry the AV's
injected embeds). Without the package the reason says how to install it; with it, that the client is
missing. Either way `BackendUnavailable` is raised and tests that need the backend are skipped.
"""

from __future__ import annotations

from . import BackendUnavailable

INSTALL_HINT = "install it with `pip install 'nla-repro[vllm]'` (a CUDA machine)"


class VLLMBackend:
    name = "vllm"

    def __init__(self):
        try:
            import vllm
        except ImportError as e:
            raise BackendUnavailable(f"the vLLM engine is not installed (`import vllm` failed: {e}); "
                                     f"{INSTALL_HINT}") from e
        raise BackendUnavailable(f"vllm {vllm.__version__} is installed but nla-repro has no vLLM client yet "
                                 "(decoding with prompt_embeds is not implemented); use --backend hf or sglang")
