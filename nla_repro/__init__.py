"""nla-repro: reproduce and verify Natural Language Autoencoder (NLA) checkpoints.

Layer convention everywhere: layer K = output of decoder block K = HF ``hidden_states[K+1]``.
"""

__version__ = "0.1.0"

from .decoding import Decoding  # noqa: E402
from .explanation import FailureConvention, extract_explanation  # noqa: E402
from .pair import NLAPair, load_pair  # noqa: E402
from .sidecar import Sidecar, SidecarError, load_sidecar  # noqa: E402

__all__ = ["Decoding", "FailureConvention", "NLAPair", "Sidecar", "SidecarError", "extract_explanation",
           "load_pair", "load_sidecar", "__version__"]
