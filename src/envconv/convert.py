"""Whole-model operations: converting a CNN (``disentangle``), placement rules, shrinking envelopes.

The converter decides *where* replacements go; *what* goes there is a method of
:mod:`envconv.methods`. Modules are replaced by attribute name, never by position, and
every layer that is not selected is left exactly as it was.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import kernels as EF
from .conv import CONVS
from .envelope import GaussianEnvelope
from .methods import build_replacement, check_options, get_method
from .pool import EnvelopePool2d, strided_pool
from .reparam import block_of, envelope_block

__all__ = [
    "STEMS",
    "WHERE_RULES",
    "POOL_METHODS",
    "pool_channels",
    "SHORTCUT_NAMES",
    "disentangle",
    "select_layers",
    "stem_name",
    "modify_stem",
    "shrink",
    "auto_envelope_size",
    "layer_path",
    "replace_modules",
    "refuse_scripted",
]

log = logging.getLogger("envconv")

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


def _convolutions(model: nn.Module) -> List[Tuple[str, nn.Conv2d]]:
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, CONVS)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d (nor nn.Conv1d / nn.Conv3d) to convert")
    return convs


def stem_name(model: nn.Module) -> str:
    """Name of the stem: the first ``nn.Conv2d`` in ``model.named_modules()`` order."""
    return _convolutions(model)[0][0]


def _on_shortcut(name: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in name.split("."))


def layer_path(name: str, stem: str) -> str:
    """The path a layer is on: ``"stem"``, ``"identity"`` (a shortcut's convolution) or ``"residual"``.

    ``stem`` is the stem's name (:func:`stem_name`); a converted stem's convolution may sit
    inside the layer, so a layer containing it counts as the stem.

    Example:
        >>> [layer_path(n, "conv1") for n in ("conv1", "layer2.0.conv2", "layer2.0.downsample.0")]
        ['stem', 'residual', 'identity']
    """
    if stem and (stem == name or stem.startswith(name + ".")):
        return "stem"
    return "identity" if _on_shortcut(name) else "residual"


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
      (a name component among :data:`~envconv.convert.SHORTCUT_NAMES`, e.g. ``layer2.0.downsample.0``).
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
    convs = _convolutions(model)
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


def disentangle(
    model: nn.Module,
    *,
    where: Where = "downsample",
    stem: str = "paper",
    method: str = "gaussian",
    envelope_size: Union[None, int, Sequence[int]] = None,
    order: Optional[str] = None,
    shared_sigma: bool = False,
    sigma_per_axis: bool = False,
    sigma_init: Optional[float] = None,
    envelope_padding_mode: Optional[str] = None,
    input_size: Sequence[int] = (64, 64),
    **method_options,
) -> nn.Module:
    """Put ``method`` into ``model`` at the paper's places (or yours), in place; returns ``model``.

    Every selected ``nn.Conv2d`` (see :func:`select_layers` for ``where`` and ``stem``) is
    replaced, by attribute name, with the method's module built from it: weights, bias,
    device, dtype, ``requires_grad`` and train/eval mode are kept, and nothing else in
    the model changes. The new module holds the old one's weight and bias ``Parameter`` objects,
    so weights tied between layers stay tied, and a convolution used at several places (one
    module object under two names) gets one replacement at all of them. ``stem="modified"``
    first rebuilds the first layer as in Fig. 5c (:func:`~envconv.convert.modify_stem`); its two
    new strided convolutions are then converted too (for ``where`` rules that select them).

    Args:
        model: any module holding ``nn.Conv2d`` layers (torchvision, timm, envconv models).
        where: ``"downsample"`` (the paper), ``"residual"``, ``"identity"``, a list of
            names/glob patterns, or a predicate ``(name, module) -> bool``.
        stem: ``"paper"``, ``"none"`` or ``"modified"``.
        method: a name of :data:`envconv.methods.METHODS` (``"gaussian"``: ours; ``"none"``:
            the baseline, which still validates ``where`` and applies ``stem="modified"``).
        envelope_size: :math:`k_g` (or one per spatial axis); ``None`` uses the method's default (9; 3 for
            ``cbs``).
        order: ``"env-conv"`` or ``"conv-env"`` for envelope methods; ``None``: default.
        shared_sigma: one sigma per layer instead of one per channel (``gaussian`` only).
        sigma_per_axis: a sigma per channel and spatial axis (``gaussian`` and ``fixed``): a clip's
            time axis apart from its height and width.
        sigma_init: the initial raw sigma (``gaussian``; ``None``: 0, i.e. sigma 0.833).
        envelope_padding_mode: the envelope's padding (``gaussian`` and ``fixed``; ``None``: zeros).
        input_size: ``(H, W)`` of the dummy image that finds the pools' channel counts
            (:func:`~envconv.convert.pool_channels`), used only when envelopes go at pools.
        **method_options: the method's own options, e.g. ``sigma=0.6`` for ``fixed``,
            ``learnable=False`` for ``gaussian`` (sigma kept at its initial value),
            ``initial_sigma=1.0, decay=0.9, every=5`` for ``cbs``.

    At a pool (``where="pools"``), ``gaussian`` and ``fixed`` put an
    :class:`~envconv.pool.EnvelopePool2d`; their ``order`` ``"env-conv"`` (default) becomes
    ``"env-pool"``, ``"conv-env"`` becomes ``"pool-env"`` (antialiased-cnns' placement).

    Raises:
        TypeError: ``model`` is a TorchScript module (convert the eager model, then script it).
        ValueError: unknown method, ``where`` or ``stem``; an option the method does not
            take; a pattern that matches nothing; a model without convolutions; a method
            other than ``gaussian`` / ``fixed`` at a pool, or a pool whose channels cannot be found.
        TypeError: a selected convolution that cannot be converted (already converted,
            or a subclass with its own ``forward``).

    Every check runs before the first layer is replaced, so an error leaves the model as
    it was, except that ``stem="modified"`` has already rebuilt the first layer when a
    later check (a ``where`` pattern, say) fails.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                     nn.Conv2d(8, 16, 3, stride=2, padding=1))
        >>> net = disentangle(net)
        >>> [type(m).__name__ for m in net]
        ['DisentangledConv2d', 'ReLU', 'DisentangledConv2d']
    """
    refuse_scripted(model, "disentangle")
    get_method(method)
    options = dict(method_options)
    for name, value in (("envelope_size", envelope_size), ("order", order), ("shared_sigma", shared_sigma or None),
                        ("sigma_per_axis", sigma_per_axis or None), ("sigma_init", sigma_init),
                        ("envelope_padding_mode", envelope_padding_mode)):
        if value is not None:
            options[name] = value
    check_options(method, options)
    if isinstance(model, CONVS):
        raise ValueError("model is itself a convolution; convert it with the method's module, e.g. "
                         "DisentangledConv2d.from_conv(conv)")
    if stem == "modified":
        modify_stem(model)
    with warnings.catch_warnings():
        if method == "none":  # the baseline converts nothing: a stem-only warning would mislead
            warnings.simplefilter("ignore", UserWarning)
        names = select_layers(model, where, stem)
    if method == "none":
        return model
    pools = [name for name in names if not isinstance(model.get_submodule(name), CONVS)]
    if pools and method not in POOL_METHODS:
        raise ValueError(f"method {method!r} cannot go at a pool ({pools[0]}, ...): where='pools' takes "
                         f"method {' or '.join(repr(m) for m in POOL_METHODS)}")
    blocks = _reparameterizable_blocks(model, [n for n in names if n not in pools], method, options)
    channels = pool_channels(model, pools + list(blocks), input_size) if pools or blocks else {}
    for block, convs in blocks.items():
        if channels[block] != model.get_submodule(convs[0]).in_channels:
            raise ValueError(f"cannot put the envelope of {convs[0]} in front of {block}, the block that folds it for "
                             f"inference: the block's input has {channels[block]} channels, the convolution reads "
                             f"{model.get_submodule(convs[0]).in_channels}")
    first = _convolutions(model)[0][1].weight
    on = {"device": first.device, "dtype": first.dtype}
    inside = {conv for convs in blocks.values() for conv in convs}
    replacements = {}
    for name in names:
        module = model.get_submodule(name)
        if name not in inside and id(module) not in replacements:
            replacements[id(module)] = (_pool_replacement(method, module, channels[name], options, on)
                                        if name in pools else build_replacement(method, module, **options))
    places = replace_modules(model, replacements)
    for block, convs in blocks.items():
        envelope = _envelope(method, channels[block], options, on)
        if not model.get_submodule(convs[0]).weight.requires_grad:  # a frozen block keeps a frozen envelope
            envelope.requires_grad_(False)
        envelope_block(model.get_submodule(block), envelope)
    log.info("envconv: %s at %d layers: %s", method, len(names), ", ".join(names)
             + (f" (also used as {', '.join(sorted(set(places) - set(names)))})" if set(places) - set(names) else "")
             + (f"; in front of the re-parameterizable blocks {', '.join(blocks)}" if blocks else ""))
    return model


def _reparameterizable_blocks(model: nn.Module, convs: Sequence[str], method: str, options: dict) -> dict:
    """The selected convolutions inside blocks that fold themselves for inference, by block (see envconv.reparam)."""
    blocks: dict = {}
    for name in convs:
        block = block_of(model, name)
        if block is not None:
            blocks.setdefault(block, []).append(name)
    for block, names in blocks.items():
        what = f"{names[0]} is inside {block} ({type(model.get_submodule(block)).__name__}), which folds it into a " \
               f"new convolution for inference, so its envelope goes in front of the block"
        if method not in POOL_METHODS:
            raise ValueError(f"{what}; method {method!r} cannot: use {' or '.join(map(repr, POOL_METHODS))}")
        if isinstance(model.get_submodule(block), (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"{what}; but it is a container whose fold reads its children in order, which an "
                             f"envelope child would change: leave {names[0]} out of where")
        if options.get("order", "env-conv") != "env-conv":
            raise ValueError(f"{what}; order='conv-env' cannot")
        if len({model.get_submodule(n).in_channels for n in names}) > 1:
            raise ValueError(f"{what}; its convolutions {names} read different channel counts, so they are not "
                             f"branches over one input")
    return blocks


def replace_modules(model: nn.Module, replacements: dict) -> List[str]:
    """Put ``replacements[id(old)]`` wherever ``old`` sits in ``model``; returns every name replaced.

    A module used at several places (``named_modules`` lists it once) gets its one
    replacement at all of them, so sharing survives.
    """
    places = [name for name, m in model.named_modules(remove_duplicate=False) if id(m) in replacements and name]
    originals = {name: model.get_submodule(name) for name in places}
    for name in places:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, replacements[id(originals[name])])
    return places


class _SharedPool(ValueError):
    """One pool object called with different channel counts."""


def pool_channels(model: nn.Module, names: Sequence[str], input_size: Sequence[int] = (64, 64)) -> dict:
    """The number of channels each named pool (or block) sees at its input: one dummy forward (eval mode, no grad).

    A pool does not know its channels; the envelope put there needs them (so does one put in
    front of a re-parameterizable block, to check that its convolutions read the block's input). The forward runs on
    zeros of shape ``(1, C, H, W)``, ``C`` the first convolution's input channels (an error
    after the last pool, in a head that does not take that size, is ignored); the model's
    train/eval modes are restored.

    Raises:
        ValueError: the forward fails before reaching every pool (say which; another
            ``input_size`` may help), skips one (a pool the forward does not call), or calls
            one pool object at places with different channel counts.
    """
    modules = {name: model.get_submodule(name) for name in names}
    seen: dict = {}

    def hook(module, inputs, name):
        c = int(inputs[0].shape[1])
        if seen.setdefault(name, c) != c:
            raise _SharedPool(f"the pool {name} is called at places with {seen[name]} and {c} channels: one "
                              f"envelope per pool object cannot serve both; give each place its own pool module")

    first = _convolutions(model)[0][1]
    x = torch.zeros(1, first.in_channels, *input_size, device=first.weight.device, dtype=first.weight.dtype)
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: hook(mod, inp, n)) for n, m in modules.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except _SharedPool:
        raise
    except (RuntimeError, ValueError) as error:
        if len(seen) == len(modules):  # the head may not take the dummy size; the pools have been seen
            return seen
        raise ValueError(f"cannot find the input channels of {sorted(set(modules) - set(seen))}: a dummy "
                         f"{tuple(x.shape)} forward failed ({error}); pass input_size=(H, W) the model "
                         f"takes") from error
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    missing = sorted(set(modules) - set(seen))
    if missing:
        raise ValueError(f"the forward never calls {missing}: their input channels are unknown; "
                         f"leave them out of where")
    return seen


def _envelope(method: str, channels: int, options: dict, on: dict) -> GaussianEnvelope:
    """The free-standing envelope of ``gaussian`` / ``fixed`` with the method's options (at a pool or a block)."""
    size, padding = options.get("envelope_size", 9), options.get("envelope_padding_mode", "zeros")
    per_axis = options.get("sigma_per_axis", False)
    if method == "fixed":
        return GaussianEnvelope.fixed(channels, options["sigma"], size, padding_mode=padding, per_axis=per_axis, **on)
    return GaussianEnvelope(channels, size, shared=options.get("shared_sigma", False), per_axis=per_axis,
                            init=options.get("sigma_init", 0.0), padding_mode=padding, **on)


def _pool_replacement(method: str, pool: nn.Module, channels: int, options: dict, on: dict) -> EnvelopePool2d:
    order = {"env-conv": "env-pool", "conv-env": "pool-env"}[options.get("order", "env-conv")]
    return EnvelopePool2d(pool, _envelope(method, channels, options, on), order).train(pool.training)


def refuse_scripted(module: nn.Module, what: str) -> None:
    """Raise ``TypeError`` for a TorchScript module, which ``what`` (a function name) cannot change."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"{what}() cannot change a TorchScript module (torch.jit.trace): its code is compiled; "
                        f"{what} the eager model first, then trace it")


def auto_envelope_size(envelope: GaussianEnvelope, eps: float = 1e-2) -> Union[int, Tuple[int, ...]]:
    r"""Smallest odd size whose truncation keeps at least ``1 - eps`` of the envelope's mass.

    The mass is measured on the envelope at its current size and for its largest sigma
    (the widest channel): the central :math:`s` taps of the 1-D kernel of eq. (9) hold
    :math:`m_s`, the separable 2-D envelope :math:`m_s^2` (1-D: :math:`m_s`, 3-D: :math:`m_s^3`).
    An envelope with a sigma or a size per axis gets a size per axis: along each axis the
    smallest :math:`s_a` whose :math:`m_{s_a} \ge (1 - \epsilon)^{1/n}` for every channel, so the
    product over the n axes keeps at least :math:`1 - \epsilon` (returned as one int where all agree).
    Never larger than the current size (of each axis).
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    raw, dims, sizes = envelope.raw_sigma.detach().double(), envelope.spatial_dims, envelope.sizes
    if not envelope.per_axis and len(set(sizes)) == 1:
        size = sizes[0]
        for taps in range(1, size, 2):  # the channel keeping the least mass decides
            if float(EF.central_mass(raw, size, taps, dims).min()) >= 1 - eps:
                return taps
        return size
    share, picks = (1 - eps) ** (1 / dims), []
    for column, size in zip(EF.axis_raw_sigmas(raw, dims), sizes):
        masses = [(taps, float(EF.central_mass(column, size, taps, 1).min())) for taps in range(1, size, 2)]
        picks.append(next((taps for taps, mass in masses if mass >= share), size))
    return EF.compact_size(picks)


def shrink(module: nn.Module, size: Union[int, Tuple[int, ...], str] = 3, *, eps: float = 1e-2) -> nn.Module:
    """Set the size :math:`k_g` of every :class:`~envconv.GaussianEnvelope` inside ``module``.

    This is the paper's "shrinking envelope filter at inference" (Sec. 3.1, Table 1e):
    a model trained with ``k_g = 9`` is evaluated with ``k_g = 3`` and the same learned
    sigmas. Only the size changes; no parameter or buffer is touched. Works in place
    and returns ``module``.

    ``size`` may be a tuple with one size per spatial axis (``(1, 3, 3)``: no envelope along a
    clip's time axis). ``size="auto"`` (beyond the paper) picks a size per envelope with
    :func:`~envconv.convert.auto_envelope_size`: the smallest odd size keeping at least ``1 - eps`` of
    the envelope's mass for its widest channel (default ``eps = 1e-2``, i.e. 99%); per axis for
    envelopes with a sigma or a size per axis.

    Raises:
        TypeError: ``module`` is a TorchScript module (shrink the eager model, then script it).
        ValueError: a size that is not odd and positive.

    Example:
        >>> from envconv import DisentangledConv2d
        >>> m = nn.Sequential(DisentangledConv2d(3, 8, 3), DisentangledConv2d(8, 8, 3))
        >>> [c.envelope.size for c in shrink(m, 3)]
        [3, 3]
        >>> m = nn.Sequential(DisentangledConv2d(3, 8, 3, envelope_size=9))  # sigma = 0.83 at init
        >>> [c.envelope.size for c in shrink(m, "auto")]  # 5 taps keep 99.7% of the mass, 3 taps 89%
        [5]
    """
    refuse_scripted(module, "shrink")
    envelopes = [m for m in module.modules() if isinstance(m, GaussianEnvelope)]
    if size != "auto":
        if not isinstance(size, (tuple, list)):
            EF.check_envelope_size(size)
        for m in envelopes:  # every size checked before any envelope changes
            EF.axis_sizes(size, m.spatial_dims, f"size (for a {m.spatial_dims}-D envelope)")
    for m in envelopes:
        m.size = auto_envelope_size(m, eps) if size == "auto" else size
    return module

