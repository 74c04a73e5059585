"""timm registration of ``envconv_*`` model names (when timm is installed).

After :func:`register_timm_models`, ``timm.create_model("envconv_resnet50")`` builds
timm's ResNet-50 with the paper's envelopes, ``timm.create_model("envconv_small_resnet20",
num_classes=10, in_chans=1)`` envconv's small ResNet; keyword arguments that
:func:`envconv.disentangle` knows (``method``, ``where``, ``stem``, ``envelope_size``...)
go to the conversion, the rest to the model. Pretrained weights are not offered.
"""

from __future__ import annotations

import inspect
from typing import Callable, List

from ..convert import disentangle
from .factory import create_model
from .small_resnet import SMALL_RESNETS

__all__ = ["TIMM_BASES", "register_timm_models"]

#: timm architectures offered as ``envconv_<name>`` (the ResNets of the paper's Table 1i and more).
TIMM_BASES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")

_DISENTANGLE_KEYS = {p for p in inspect.signature(disentangle).parameters if p != "model"}


def _entrypoint(name: str, base: str) -> Callable:
    def build(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{name}: envconv offers no pretrained weights (nothing is downloaded)")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _DISENTANGLE_KEYS}
        num_classes = kwargs.pop("num_classes", 10 if base in SMALL_RESNETS else 1000)
        in_chans = kwargs.pop("in_chans", 3)
        return create_model(base, num_classes=num_classes, in_chans=in_chans, model_kwargs=kwargs, **options)

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"{base} with envconv's envelopes at the paper's places."
    return build


def register_timm_models() -> List[str]:
    """Register ``envconv_<name>`` in timm for envconv's small ResNets and :data:`TIMM_BASES`; returns the names."""
    from timm.models import register_model

    names = []
    for base in list(SMALL_RESNETS) + [f"timm:{b}" for b in TIMM_BASES]:
        name = "envconv_" + base.removeprefix("timm:")
        if name not in globals():
            globals()[name] = register_model(_entrypoint(name, base))
        names.append(name)
    return names
