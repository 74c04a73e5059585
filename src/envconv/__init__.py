"""envconv: Disentangled Convolution for Optimizing Receptive Field (Kobayashi, PRL 2023) in PyTorch."""

from . import convert, functional, integrations, kernels, methods, ops, state_dict
from .conv import (
    ConvVariant,
    DisentangledConv1d,
    DisentangledConv2d,
    DisentangledConv3d,
    EnvelopeConv1d,
    EnvelopeConv2d,
    EnvelopeConv3d,
)
from .convert import disentangle, disentangle_like, load_disentangled, select_layers, shrink
from .envelope import GaussianEnvelope
from .functional import envelope_conv, envelope_conv2d, gaussian_envelope
from .listing import EnvelopeInfo, envelopes
from .methods import METHODS, set_curriculum_epoch
from .models import create_model, list_models, register_timm_models
from .pool import EnvelopePool2d
from .version import __version__

__all__ = [
    "ConvVariant",
    "convert",
    "DisentangledConv1d",
    "DisentangledConv2d",
    "DisentangledConv3d",
    "EnvelopeConv1d",
    "EnvelopeConv2d",
    "EnvelopeConv3d",
    "EnvelopeInfo",
    "EnvelopePool2d",
    "GaussianEnvelope",
    "METHODS",
    "create_model",
    "disentangle",
    "disentangle_like",
    "envelope_conv",
    "envelope_conv2d",
    "envelopes",
    "functional",
    "integrations",
    "gaussian_envelope",
    "kernels",
    "list_models",
    "load_disentangled",
    "methods",
    "ops",
    "register_timm_models",
    "select_layers",
    "set_curriculum_epoch",
    "shrink",
    "state_dict",
    "__version__",
]
