"""timm registration of ``envconv_*`` model names (when timm is installed).

After :func:`register_timm_models`, ``timm.create_model("envconv_resnet50")`` builds
timm's ResNet-50 with the paper's envelopes, ``timm.create_model("envconv_small_resnet20",
num_classes=10, in_chans=1)`` envconv's small ResNet; keyword arguments that
:func:`envconv.disentangle` knows (``method``, ``where``, ``stem``, ``envelope_size``...)
go to the conversion, the rest to the model. Pretrained weights are not offered for
download; your own load with ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``
(a torch or safetensors file, or ``state_dict=`` a mapping): the model is built plain and
converted where the weights have envelopes, with their sizes (:func:`envconv.load_disentangled`).

Each name has its own pretrained cfg (``default_cfgs``, registered with the entrypoint):
a timm base's cfg without its weight locations and with the envconv architecture name, or
for the small ResNets their 32x32 input. Small ResNets also take ``features_only=True``
(timm's ``FeatureListNet`` over the stem and the stages, or with ``feature_cls="getter"``
its ``FeatureGetterNet`` over their ``forward_intermediates``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List

from ..convert import disentangle, load_disentangled
from .factory import create_model
from .small_resnet import SMALL_RESNETS

__all__ = ["TIMM_BASES", "register_timm_models"]

#: timm architectures offered as ``envconv_<name>`` (the ResNets of the paper's Table 1i and more).
TIMM_BASES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")

_DISENTANGLE_KEYS = {p for p in inspect.signature(disentangle).parameters if p != "model"}
_WEIGHT_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "hf_hub_revision", "file", "state_dict", "source", "tag",
                "license", "paper_ids", "paper_name", "notes", "origin_url")

#: timm reads the pretrained cfgs of the entrypoints registered from this module here.
default_cfgs: Dict[str, Dict[str, Any]] = {}


def _small_cfg(base: str) -> Dict[str, Any]:
    stages = len(SMALL_RESNETS[base][0])
    side = 32 // 2 ** (stages - 1)
    return dict(input_size=(3, 32, 32), pool_size=(side, side), crop_pct=1.0, interpolation="bilinear",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv="conv1", classifier="fc", num_classes=10)


def _cfg(base: str) -> Dict[str, Any]:
    """The pretrained cfg of ``envconv_<base>``: the base's, minus where its weights live."""
    if base in SMALL_RESNETS:
        return _small_cfg(base)
    import timm

    cfg = timm.models.get_pretrained_cfg(base.removeprefix("timm:")).to_dict()
    return {k: v for k, v in cfg.items() if k not in _WEIGHT_KEYS and k != "architecture"}


def _entrypoint(name: str, base: str) -> Callable:
    def build(pretrained: bool = False, **kwargs):
        weights = _local_weights(name, pretrained, kwargs.get("pretrained_cfg_overlay"))
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _DISENTANGLE_KEYS}
        if weights is not None:  # the weights say where the envelopes are and how large
            if set(options) - {"stem", "input_size"}:
                raise ValueError(f"{name}: with pretrained weights the envelopes come from the file; do not pass "
                                 f"{', '.join(sorted(set(options) - {'stem', 'input_size'}))}")
            options["method"] = "none"
        num_classes = kwargs.pop("num_classes", 10 if base in SMALL_RESNETS else 1000)
        in_chans = kwargs.pop("in_chans", 3)
        features = {k: kwargs.pop(k) for k in ("features_only", "out_indices", "feature_cls") if k in kwargs} \
            if base in SMALL_RESNETS else {}
        model = create_model(base, num_classes=num_classes, in_chans=in_chans, model_kwargs=kwargs, **options)
        if weights is not None:
            load_disentangled(model, weights)
        import timm

        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        if features.get("features_only"):
            indices = features.get("out_indices", tuple(range(len(model.feature_info))))
            model = _feature_net(model, indices, features.get("feature_cls"))
        model.pretrained_cfg = model.default_cfg = cfg
        return model

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"{base} with envconv's envelopes at the paper's places."
    return build


def _local_weights(name: str, pretrained: bool, overlay):
    """The local weights ``pretrained=True`` loads: ``pretrained_cfg_overlay``'s ``file`` or ``state_dict``."""
    if not pretrained:
        return None
    overlay = overlay or {}
    weights = overlay.get("state_dict", overlay.get("file"))
    if weights is None:
        raise ValueError(f"{name}: envconv offers no pretrained weights to download; load your own with "
                         f"pretrained=True, pretrained_cfg_overlay=dict(file='weights.safetensors')")
    return weights


def _feature_net(model, indices, feature_cls):
    """The feature wrapper of a small ResNet: timm's ``FeatureListNet`` (the default) or ``FeatureGetterNet``."""
    if feature_cls in (None, "list"):
        from timm.models import FeatureListNet

        return FeatureListNet(model, out_indices=indices)
    if feature_cls == "getter":
        from timm.models._features import FeatureGetterNet

        return FeatureGetterNet(model, out_indices=indices)
    raise ValueError(f"feature_cls must be 'list' or 'getter' for envconv's small ResNets, got {feature_cls!r}")


def register_timm_models() -> List[str]:
    """Register ``envconv_<name>`` in timm for envconv's small ResNets and timm's ResNets; returns the names.

    The timm architectures are those of :data:`~envconv.models.timm_models.TIMM_BASES`.

    Example:
        >>> import timm
        >>> names = register_timm_models()
        >>> "envconv_resnet50" in names and "envconv_resnet50" in timm.list_models("envconv_*")
        True
    """
    from timm.models import register_model

    names = []
    for base in list(SMALL_RESNETS) + [f"timm:{b}" for b in TIMM_BASES]:
        name = "envconv_" + base.removeprefix("timm:")
        if name not in globals():
            default_cfgs[name] = _cfg(base)
            globals()[name] = register_model(_entrypoint(name, base))
        names.append(name)
    return names
