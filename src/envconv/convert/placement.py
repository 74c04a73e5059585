"""Where envelopes go: the placement rules (``where``, ``stem``), the stem, a layer's path in a ResNet."""

from __future__ import annotations

import fnmatch
import warnings
from typing import Callable, List, Sequence, Tuple, Union

from torch import nn

from ..conv import CONVS
from ..pool import strided_pool

__all__ = ["STEMS", "WHERE_RULES", "POOL_METHODS", "SHORTCUT_NAMES", "Where", "convolutions", "has_shortcuts",
           "layer_path", "modify_stem", "select_layers", "stem_name"]

#: The rule-based placements - every strided convolution, or only those of one path (Table 1a),
#: every strided max / average pool (VGG, DenseNet, ResNet-D shortcuts), or both.
WHERE_RULES = ("downsample", "residual", "identity", "pools", "downsample+pools")
#: The methods that can put their envelope at a pool (:class:`~envconv.pool.EnvelopePool2d`).
POOL_METHODS = ("gaussian", "fixed")
#: Stem handlings (the stem conv converted as in Fig. 5b, left alone, or the modified stem of Fig. 5c).
STEMS = ("paper", "none", "modified")
#: A strided convolution whose name has one of these components is on the identity (shortcut) path.
SHORTCUT_NAMES = ("downsample", "shortcut", "skip", "proj", "projection")

Where = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]


def convolutions(model: nn.Module) -> List[Tuple[str, nn.Conv2d]]:
    """Every convolution of ``model`` (1-D to 3-D) with its name, in module order; ``ValueError`` if none."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, CONVS)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d (nor nn.Conv1d / nn.Conv3d) to convert")
    return convs


def stem_name(model: nn.Module) -> str:
    """Name of the stem: the first ``nn.Conv2d`` in ``model.named_modules()`` order."""
    return convolutions(model)[0][0]


def _on_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


def layer_path(name: str, stem: str, residual: bool = True) -> str:
    """The path a layer is on: ``"stem"``, ``"identity"`` (a shortcut's convolution), ``"residual"`` or ``"main"``.

    ``stem`` is the stem's name (:func:`stem_name`); a converted stem's convolution may sit
    inside the layer, so a layer containing it counts as the stem. ``residual``: whether the
    network has shortcut convolutions, so that its other layers are on a residual path (a VGG's
    or a MobileNet's strided convolutions are on its ``"main"`` path).

    Example:
        >>> [layer_path(n, "conv1") for n in ("conv1", "layer2.0.conv2", "layer2.0.downsample.0")]
        ['stem', 'residual', 'identity']
        >>> layer_path("features.3", "features.0", residual=False)
        'main'
    """
    if stem and (stem == name or stem.startswith(name + ".")):
        return "stem"
    if _on_shortcut(name):
        return "identity"
    return "residual" if residual else "main"


def has_shortcuts(names) -> bool:
    """Whether any of the layer ``names`` is a shortcut's.

    A shortcut's layer has a name component among :data:`~envconv.convert.placement.SHORTCUT_NAMES`.

    Example:
        >>> has_shortcuts(["conv1", "layer2.0.downsample.0"]), has_shortcuts(["features.0", "features.3"])
        (True, False)
    """
    return any(_on_shortcut(name) for name in names)


def _strided(conv: nn.Conv2d) -> bool:
    return any(s > 1 for s in conv.stride)


def _dilated_stage_places(model: nn.Module) -> List[Tuple[str, bool]]:
    """``(name, on_shortcut)`` of the paper's places in ResNet stages 2-4 that dilate instead of striding.

    A segmentation backbone (torchvision's ``replace_stride_with_dilation``, DeepLabV3) keeps
    the resolution from some stage on: the first block of that stage has no strided conv, but
    it is still where the paper puts its envelopes - the residual path's spatial conv (the
    second conv of a bottleneck, the first of a basic block) and the identity path's 1x1 conv.
    """
    places = []
    for stage in ("layer2", "layer3", "layer4"):
        blocks = getattr(model, stage, None)
        if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
            continue
        block = blocks[0]
        if any(_strided(m) for m in block.modules() if isinstance(m, nn.Conv2d)):
            continue  # a striding stage: the strided rule finds it
        spatial = getattr(block, "conv2" if hasattr(block, "conv3") else "conv1", None)
        shortcut = getattr(block, "downsample", None)
        shortcut_convs = [n for n, m in shortcut.named_modules() if isinstance(m, nn.Conv2d)] if shortcut else []
        if not isinstance(spatial, nn.Conv2d) or not shortcut_convs:
            continue
        places += [(f"{stage}.0.{'conv2' if hasattr(block, 'conv3') else 'conv1'}", False),
                   (f"{stage}.0.downsample.{shortcut_convs[0]}", True)]
    return places


def select_layers(model: nn.Module, where: Where = "downsample", stem: str = "paper") -> List[str]:
    """Names of the convolutions (and strided pools) ``disentangle`` converts, in ``named_modules`` order.

    The stem is the first ``nn.Conv2d`` of ``model.named_modules()`` (the one that sees
    the image in torchvision, timm and envconv models). ``where`` chooses among the others:

    * ``"downsample"`` - every strided convolution. On a ResNet these are the paper's
      layers (Fig. 5a): in the first block of stages 2-4, the strided 3x3 conv of the
      residual path and the strided 1x1 conv of the identity path. The same rule finds
      the downsampling convolutions of any other CNN (MobileNet, RegNet, ...). In a ResNet
      whose stages 3-4 dilate instead of striding (a DeepLabV3 backbone), the same two
      convolutions of those stages' first block are taken, so the places, and a converted
      checkpoint's keys, do not depend on whether a stage strides or dilates.
    * ``"residual"`` / ``"identity"`` - only the strided convs off / on a shortcut path
      (a name component among :data:`~envconv.convert.placement.SHORTCUT_NAMES`, e.g. ``layer2.0.downsample.0``).
    * ``"pools"`` - every strided ``nn.MaxPool2d`` / ``nn.AvgPool2d``: where VGG, DenseNet
      (its stem pool and transitions) and ResNet-D's shortcuts downsample. They get an
      :class:`~envconv.pool.EnvelopePool2d` (learnable blur pooling).
    * ``"downsample+pools"`` - both: on a ResNet-D, the strided convs and the shortcut pools.
    * a list of module names or glob patterns (``"layer*.0.conv2"``); each must match
      at least one convolution or strided pool.
    * a predicate ``where(name, module) -> bool`` called for every convolution and strided pool.

    The stem conv is then added unless ``stem == "none"`` (so a list that names the stem
    keeps it either way). The default rule, finding nothing besides the stem (on a VGG or
    DenseNet, whose only strided conv, if any, is the stem), converts the stem alone and warns,
    naming ``where="pools"`` when the model has strided pools; the other rules raise.

    Raises:
        ValueError: unknown ``where`` or ``stem``, a pattern or predicate that selects nothing,
            a rule other than the default that selects nothing (the default, too, with
            ``stem="none"``), or a model without convolutions.

    Example:
        >>> from envconv import create_model
        >>> select_layers(create_model("small_resnet20", num_classes=10, in_chans=1, method="none"))
        ['conv1', 'layer2.0.conv1', 'layer2.0.downsample.0', 'layer3.0.conv1', 'layer3.0.downsample.0']
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    convs = convolutions(model)
    pools = [(n, m) for n, m in model.named_modules() if strided_pool(m)]
    stem_name = convs[0][0]
    if isinstance(where, str):
        if where not in WHERE_RULES:
            raise ValueError(
                f"where must be one of {WHERE_RULES}, a list of module names/patterns or a predicate, got {where!r}"
            )
        chosen = set()
        if where != "pools":
            keep = {"downsample": lambda n: True, "residual": lambda n: not _on_shortcut(n),
                    "identity": _on_shortcut, "downsample+pools": lambda n: True}[where]
            chosen = {n for n, m in convs[1:] if _strided(m) and keep(n)}
            chosen |= {n for n, shortcut in _dilated_stage_places(model) if keep(n)}
        if where in ("pools", "downsample+pools"):
            chosen |= {n for n, _ in pools}
        if not chosen:
            _nothing_selected(model, where, stem, pools)
        elif where == "downsample":
            _warn_about_pools_beside(chosen, pools)
    elif callable(where):
        chosen = {n for n, m in convs + pools if where(n, m)}
        if not chosen:
            raise ValueError("the where predicate selected no convolution or strided pool")
    elif isinstance(where, (list, tuple)) and where and all(isinstance(p, str) for p in where):
        chosen = set()
        for pattern in where:
            hits = {n for n, _ in convs + pools if fnmatch.fnmatchcase(n, pattern)}
            if not hits:
                sample = ", ".join(n for n, _ in convs[:6])
                raise ValueError(
                    f"where pattern {pattern!r} matches no convolution or strided pool (convolutions are named like: "
                    f"{sample}, ...)"
                )
            chosen |= hits
    else:
        raise ValueError(f"where must be a rule name, a non-empty list of names/patterns or a predicate, got {where!r}")
    if stem != "none":
        chosen.add(stem_name)
    return [n for n, m in model.named_modules() if n in chosen and (isinstance(m, CONVS) or strided_pool(m))]


def _warn_about_pools_beside(chosen, pools) -> None:
    """Warn about strided pools in the same block as a converted conv (Res2Net's split, ResNet-D's shortcut).

    Such a block downsamples partly through the pool, which ``where="downsample"`` leaves without
    an envelope; a pool outside the converted blocks (a ResNet's stem max-pool) is the paper's choice.
    """
    def block(name: str) -> str:
        return ".".join(name.split(".")[:2])

    blocks = {block(n) for n in chosen if n.count(".") >= 1}
    beside = [n for n, _ in pools if n.count(".") >= 2 and block(n) in blocks]
    if beside:
        warnings.warn(f"where='downsample' leaves {len(beside)} strided pool(s) in the converted blocks without an "
                      f"envelope ({', '.join(beside[:3])}{', ...' if len(beside) > 3 else ''}): those blocks "
                      f"downsample partly through them; where='downsample+pools' covers them too",
                      UserWarning, stacklevel=4)


def _nothing_selected(model: nn.Module, where: str, stem: str, pools) -> None:
    """A rule found nothing besides the stem: the default warns and goes on with the stem alone; others raise."""
    what = f"where={where!r} selects no {'strided pool' if where == 'pools' else 'convolution'} of " \
           f"{type(model).__name__} (besides the stem)"
    hint = ""
    if pools and where != "pools":
        hint = f"; it downsamples with {len(pools)} strided pool(s) ({pools[0][0]}, ...): where='pools' or " \
               f"where='downsample+pools' puts learned envelopes there"
    if stem == "none" or where != "downsample":  # only the default goes on with the stem alone
        raise ValueError(what + hint)
    warnings.warn(f"{what}: only the stem is converted{hint}", UserWarning, stacklevel=4)


def modify_stem(model: nn.Module) -> List[str]:
    """The modified first layer of Fig. 5c, in place; returns the names of the two new strided convs.

    The max-pool after the stem is replaced by ``nn.Identity`` and the first block of
    stage 1 downsamples instead: its first convolution with a kernel larger than 1x1
    gets stride 2, and so does the 1x1 convolution of its identity path; a block without
    one (ResNet-18/34) gets a new identity projection, a 1x1 stride-2 conv + BatchNorm
    (freshly initialised). The output shape of stage 1 is unchanged.

    Raises:
        ValueError: if the model is not a ResNet with ``maxpool`` and ``layer1``
            attributes (torchvision and timm ResNets are).
    """
    maxpool, layer1 = getattr(model, "maxpool", None), getattr(model, "layer1", None)
    if not isinstance(maxpool, nn.MaxPool2d) or not isinstance(layer1, nn.Sequential) or len(layer1) == 0:
        raise ValueError(
            "stem='modified' (Fig. 5c) needs a ResNet with a max-pool `maxpool` after the stem and a "
            f"stage `layer1` (torchvision and timm ResNets have them); {type(model).__name__} does not"
        )
    block = layer1[0]
    residual = [(n, m) for n, m in block.named_children() if isinstance(m, nn.Conv2d)]
    spatial = [(n, m) for n, m in residual if m.kernel_size != (1, 1)]
    if not hasattr(block, "downsample") or not spatial or any(_strided(m) for _, m in residual):
        raise ValueError(f"stem='modified': cannot make {type(block).__name__} `layer1.0` strided")
    downsample = block.downsample
    if downsample is not None:
        shortcut = [(n, m) for n, m in downsample.named_modules() if isinstance(m, nn.Conv2d)]
        if len(shortcut) != 1 or shortcut[0][1].kernel_size != (1, 1) or _strided(shortcut[0][1]):
            raise ValueError("stem='modified': layer1.0.downsample is not a single stride-1 1x1 convolution")
    model.maxpool = nn.Identity()
    spatial[0][1].stride = (2, 2)
    if hasattr(block, "stride"):
        block.stride = 2
    if downsample is None:
        ref = residual[0][1].weight
        dd = {"device": ref.device, "dtype": ref.dtype}
        block.downsample = nn.Sequential(
            nn.Conv2d(residual[0][1].in_channels, residual[-1][1].out_channels, 1, stride=2, bias=False, **dd),
            nn.BatchNorm2d(residual[-1][1].out_channels, **dd),
        ).train(block.training)
        shortcut_name = "downsample.0"
    else:
        shortcut[0][1].stride = (2, 2)
        shortcut_name = "downsample." + shortcut[0][0]
    return [f"layer1.0.{spatial[0][0]}", f"layer1.0.{shortcut_name}"]
