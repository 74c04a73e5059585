"""envconv: Disentangled Convolution for Optimizing Receptive Field (Kobayashi, PRL 2023) in PyTorch."""

from . import functional
from .conv import DisentangledConv2d
from .convert import EnvelopeInfo, envelopes, shrink
from .envelope import GaussianEnvelope

__version__ = "0.1.0"

__all__ = [
    "DisentangledConv2d",
    "EnvelopeInfo",
    "GaussianEnvelope",
    "envelopes",
    "functional",
    "shrink",
    "__version__",
]
