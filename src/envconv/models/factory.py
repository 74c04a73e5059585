"""``create_model``: one builder for envconv's small ResNets and VGG and torchvision / timm models."""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional

from torch import nn

from ..convert import disentangle, stem_name
from .small_resnet import SMALL_RESNETS, small_resnet
from .small_vgg import SMALL_VGGS, small_vgg

__all__ = ["create_model", "list_models"]


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _torchvision_names() -> List[str]:
    if not _available("torchvision"):
        return []
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def list_models(include_torchvision: bool = False) -> List[str]:
    """The model names of envconv, plus torchvision's classification models if asked.

    Example:
        >>> list_models()[:3]
        ['small_resnet110', 'small_resnet18', 'small_resnet20']
        >>> "torchvision:resnet50" in list_models(include_torchvision=True)
        True
    """
    names = sorted([*SMALL_RESNETS, *SMALL_VGGS])
    if include_torchvision:
        names += [f"torchvision:{n}" for n in _torchvision_names()]
    return names


def _replace_stem_channels(model: nn.Module, in_chans: int) -> None:
    """Give the stem (first) convolution ``in_chans`` inputs; a fresh conv of the same shape otherwise."""
    name = stem_name(model)
    old = model.get_submodule(name)
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
                    device=old.weight.device, dtype=old.weight.dtype)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _build_base(name: str, num_classes: int, in_chans: int, model_kwargs: Dict[str, Any]) -> nn.Module:
    source, _, arch = name.rpartition(":")
    if source not in ("", "torchvision", "timm"):
        raise ValueError(f"unknown model source {source!r} in {name!r}; use 'torchvision:NAME' or 'timm:NAME'")
    if not source and arch in SMALL_RESNETS:
        if set(model_kwargs) - {"norm", "global_pool"}:
            raise ValueError(f"{arch} takes only 'norm' and 'global_pool' in model_kwargs, got {sorted(model_kwargs)}")
        return small_resnet(arch, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    if not source and arch in SMALL_VGGS:
        if set(model_kwargs) - {"norm"}:
            raise ValueError(f"{arch} takes only 'norm' in model_kwargs, got {sorted(model_kwargs)}")
        return small_vgg(arch, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    if source == "torchvision" or (not source and arch in _torchvision_names()):
        if not _available("torchvision"):
            raise ImportError(f"model {name!r} needs torchvision: pip install torchvision")
        import torchvision

        if arch not in _torchvision_names():
            raise ValueError(f"torchvision has no classification model {arch!r}")
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **model_kwargs)
        if in_chans != 3:
            _replace_stem_channels(model, in_chans)
        return model
    if source == "timm" or (not source and _available("timm")):
        if not _available("timm"):
            raise ImportError(f"model {name!r} needs timm: pip install 'envconv[timm]'")
        import timm

        if not timm.is_model(arch):
            raise ValueError(f"unknown model {name!r}: not an envconv, torchvision or timm model name "
                             f"(envconv's own: {', '.join(list_models())})")
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    raise ValueError(f"unknown model {name!r}; envconv's own are {list_models()}; torchvision names work "
                     f"when torchvision is installed, timm names when timm is")


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    model_kwargs: Optional[Dict[str, Any]] = None,
    **disentangle_options,
) -> nn.Module:
    """Build a model by name and put envelopes into it (:func:`envconv.disentangle`).

    Names are resolved in this order: envconv's small ResNets (:func:`list_models`),
    torchvision classification models, then timm models; ``"torchvision:NAME"`` or
    ``"timm:NAME"`` choose the source explicitly (e.g. ``"timm:resnet50"``). Weights
    are freshly initialised: nothing is downloaded. For a torchvision model with
    ``in_chans != 3`` the stem convolution is replaced by a fresh one with ``in_chans``
    inputs.

    Args:
        name: model name.
        num_classes: classifier outputs.
        in_chans: image channels.
        model_kwargs: extra keyword arguments for the underlying constructor (e.g.
            timm's ``drop_path_rate``).
        **disentangle_options: :func:`envconv.disentangle` options; the default is the
            paper's conversion (``method="gaussian"``, ``where="downsample"``,
            ``stem="paper"``). ``method="none"`` gives the plain baseline.

    Example:
        >>> import torch
        >>> net = create_model("small_resnet20", num_classes=10, in_chans=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> from envconv import envelopes
        >>> [row.name for row in envelopes(net)]
        ['conv1', 'layer2.0.conv1', 'layer2.0.downsample.0', 'layer3.0.conv1', 'layer3.0.downsample.0']
    """
    model = _build_base(name, num_classes, in_chans, dict(model_kwargs or {}))
    return disentangle(model, **disentangle_options)
