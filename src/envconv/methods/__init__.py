r"""The paper's comparison methods (Sec. 2.4, Table 1g-1h) and a registry name -> builder.

Every method turns one ``nn.Conv2d`` into a replacement module with the same weights;
:func:`envconv.disentangle` places it with its ``where`` rule. A builder is called as
``build(conv, **options)``; the options each method takes are listed by
:func:`method_options`.

======================  =======================================================  ===========================
name                    what replaces the convolution                            extra parameters per layer
======================  =======================================================  ===========================
``gaussian``            learned Gaussian envelope, eq. (9) (ours)                :math:`C` (1 if shared)
``fixed``               Gaussian envelope with a given sigma (Table 1h)          0
``none``                nothing (the baseline)                                   0
``dw``                  free depth-wise 1 x k_g and k_g x 1 filters              :math:`2 k_g C`
``proj``                eq. (15): conv + w_d * mean_c(avg-pool(X))               :math:`D`
``se``                  eq. (16): local SE gate per input channel                :math:`C`
``param-attention``     eq. (12): softmax of a learned k_g x k_g map             :math:`k_g^2 C`
``adaptive-attention``  eqs. (13)-(14): input-dependent local softmax            :math:`2C`
``multiplicative``      eq. (10): filter times a Gaussian window                 :math:`C`
``ensemble``            eq. (11): m fixed Gaussians mixed through BatchNorm      :math:`2mC` (+ BN stats)
``cbs``                 Curriculum by Smoothing: scheduled blur after the conv   0
======================  =======================================================  ===========================

(:math:`C` input channels, :math:`D` output channels of the converted convolution.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

from ..conv import DISENTANGLED_CONVS, EnvelopeConv2d, conv_arguments
from ..envelope import GaussianEnvelope
from .cbs import CBS_DEFAULTS, CurriculumSmoothing, cbs_sigma, set_curriculum_epoch
from .channel_filters import AdaptiveAttentionEnvelope, DepthwiseEnvelope, EnsembleEnvelope, ParametricAttentionEnvelope
from .convs import LocalSEConv2d, MultiplicativeEnvelopeConv2d, ProjectionConv2d

__all__ = [
    "METHODS",
    "Method",
    "register_method",
    "build_replacement",
    "check_options",
    "get_method",
    "method_options",
    "CurriculumSmoothing",
    "cbs_sigma",
    "set_curriculum_epoch",
    "CBS_DEFAULTS",
    "DepthwiseEnvelope",
    "ParametricAttentionEnvelope",
    "AdaptiveAttentionEnvelope",
    "EnsembleEnvelope",
    "ProjectionConv2d",
    "LocalSEConv2d",
    "MultiplicativeEnvelopeConv2d",
]


#: An envelope size: one k_g, or one per spatial axis.
Size = Union[int, Sequence[int]]


@dataclass(frozen=True)
class Method:
    """A registered method: ``build(conv, **options)`` returns the replacement (``None``: no change)."""

    name: str
    build: Optional[Callable[..., nn.Module]]
    reference: str
    summary: str
    dims: Tuple[int, ...] = (2,)  #: the spatial dims of the convolutions it converts


#: Every comparison method by name (filled by :func:`register_method`), in the paper's order.
METHODS: Dict[str, Method] = {}


def register_method(name: str, build: Optional[Callable[..., nn.Module]], reference: str = "",
                    summary: str = "", dims: Tuple[int, ...] = (2,)) -> Method:
    """Register a method under ``name`` (usable as ``disentangle(model, method=name)``).

    ``dims``: the spatial dims of the convolutions ``build`` converts (``nn.Conv2d`` only by default).
    """
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = Method(name, build, reference, summary, tuple(dims))
    return METHODS[name]


def _envelope_channels(conv: nn.Conv2d, order: str) -> int:
    return conv.in_channels if order == "env-conv" else conv.out_channels


def _on(conv: nn.Conv2d) -> dict:
    args = conv_arguments(conv, allow_tf_same=True)  # refuses what cannot be converted, before anything is built
    return {"device": args["device"], "dtype": args["dtype"]}


def _disentangled(conv: nn.Module):
    """The disentangled convolution of ``conv``'s dimensionality (``nn.Conv1d`` / ``Conv2d`` / ``Conv3d``)."""
    base = next((base for base in DISENTANGLED_CONVS if isinstance(conv, base)), None)
    if base is None:
        raise TypeError(f"expected an nn.Conv2d (or nn.Conv1d / nn.Conv3d), got {type(conv).__name__}")
    return DISENTANGLED_CONVS[base]


def _gaussian(conv, *, envelope_size: Size = 9, order: str = "env-conv", shared_sigma: bool = False,
              sigma_per_axis: bool = False, sigma_init: float = 0.0, learnable: bool = True,
              envelope_padding_mode: str = "zeros"):
    return _disentangled(conv).from_conv(conv, envelope_size=envelope_size, order=order, shared_sigma=shared_sigma,
                                         sigma_per_axis=sigma_per_axis, sigma_init=sigma_init, learnable=learnable,
                                         envelope_padding_mode=envelope_padding_mode)


def _fixed(conv, *, sigma, envelope_size: Size = 9, order: str = "env-conv", envelope_padding_mode: str = "zeros",
           sigma_per_axis: bool = False):
    layer = _disentangled(conv).from_conv(conv, envelope_size=envelope_size, order=order, learnable=False,
                                          sigma_per_axis=sigma_per_axis, envelope_padding_mode=envelope_padding_mode)
    # the same layer with its envelope's sigma set (GaussianEnvelope.fixed takes sigma, not the raw value)
    layer.envelope = GaussianEnvelope.fixed(_envelope_channels(conv, order), sigma, envelope_size,
                                            padding_mode=envelope_padding_mode, spatial_dims=len(conv.kernel_size),
                                            per_axis=sigma_per_axis, **_on(conv))
    return layer


def _envelope_builder(cls):
    def build(conv, *, envelope_size: int = 9, order: str = "env-conv", **options):
        env = cls(_envelope_channels(conv, order), envelope_size, **options, **_on(conv))
        return EnvelopeConv2d.from_conv(conv, envelope=env, order=order)

    build.__signature__ = _merged_signature(cls)
    return build


def _merged_signature(cls) -> inspect.Signature:
    """(conv, *, envelope_size, order, <the envelope's own keyword options>) for option checking."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("conv", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("envelope_size", kw, default=9), inspect.Parameter("order", kw, default="env-conv")]
    params += [p for p in inspect.signature(cls).parameters.values()
               if p.kind == kw and p.name not in ("device", "dtype")]
    return inspect.Signature(params)


def _pooled_builder(cls):
    def build(conv, *, envelope_size: int = 9):
        return cls.from_conv(conv, pool_size=envelope_size)

    return build


def _multiplicative(conv, *, sigma_init: float = 0.0):
    return MultiplicativeEnvelopeConv2d.from_conv(conv, sigma_init=sigma_init)


def _cbs(conv, *, envelope_size: int = CBS_DEFAULTS["size"], initial_sigma: float = CBS_DEFAULTS["initial_sigma"],
         decay: float = CBS_DEFAULTS["decay"], every: int = CBS_DEFAULTS["every"]):
    env = CurriculumSmoothing(conv.out_channels, envelope_size, initial_sigma=initial_sigma, decay=decay,
                              every=every, **_on(conv))
    return EnvelopeConv2d.from_conv(conv, envelope=env, order="conv-env")


register_method("gaussian", _gaussian, "eq. (9)", "learned Gaussian envelope (the paper's method)", dims=(1, 2, 3))
register_method("fixed", _fixed, "Table 1h", "Gaussian envelope with a fixed sigma (sigma=0: identity)",
                dims=(1, 2, 3))
register_method("none", None, "Table 1a", "baseline: no change", dims=(1, 2, 3))
register_method("dw", _envelope_builder(DepthwiseEnvelope), "Sec. 2.4", "free depth-wise 1xk and kx1 filters")
register_method("proj", _pooled_builder(ProjectionConv2d), "eq. (15)", "projection of the pooled channel mean")
register_method("se", _pooled_builder(LocalSEConv2d), "eq. (16)", "local squeeze-excitation per input channel")
register_method("param-attention", _envelope_builder(ParametricAttentionEnvelope), "eq. (12)",
                "softmax of a learned k x k map per channel")
register_method("adaptive-attention", _envelope_builder(AdaptiveAttentionEnvelope), "eqs. (13)-(14)",
                "input-dependent local attention")
register_method("multiplicative", _multiplicative, "eq. (10)", "filter multiplied by a Gaussian window")
register_method("ensemble", _envelope_builder(EnsembleEnvelope), "eq. (11)",
                "m fixed Gaussians combined through BatchNorm")
register_method("cbs", _cbs, "Sinha et al. 2020", "Curriculum by Smoothing: scheduled blur after the conv")


def get_method(name: str) -> Method:
    """The registered method called ``name``; a ``ValueError`` lists the names when there is none."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def method_options(name: str) -> Tuple[List[str], List[str]]:
    """The (required, optional) option names of method ``name``."""
    build = get_method(name).build
    if build is None:
        return [], []
    params = [p for p in inspect.signature(build).parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    return ([p.name for p in params if p.default is inspect.Parameter.empty],
            [p.name for p in params if p.default is not inspect.Parameter.empty])


def check_options(method: str, options: Dict[str, object]) -> None:
    """Raise ``ValueError`` if ``options`` has a name ``method`` does not take or lacks a required one."""
    required, optional = method_options(method)
    unknown = sorted(set(options) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"method {method!r} does not take option(s) {unknown}; it takes {required + optional}")
    missing = [name for name in required if name not in options]
    if missing:
        raise ValueError(f"method {method!r} needs option(s) {missing}")


def build_replacement(method: str, conv: nn.Conv2d, **options) -> nn.Module:
    """Build ``method``'s replacement of ``conv`` (``conv`` itself for ``"none"``).

    Raises:
        ValueError: unknown method, an option the method does not take, or a missing one.
    """
    spec = get_method(method)
    check_options(method, options)
    if spec.build is None:
        return conv
    dims = len(getattr(conv, "kernel_size", ()))
    if dims not in spec.dims:
        takes = sorted(name for name, m in METHODS.items() if dims in m.dims and m.build is not None)
        raise TypeError(f"method {method!r} converts {'/'.join(f'{d}-D' for d in spec.dims)} convolutions; a "
                        f"{type(conv).__name__} takes {', '.join(repr(t) for t in takes)}")
    return spec.build(conv, **options)
