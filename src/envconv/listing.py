"""Listing envelopes: which layers have one, where they sit and what sigma each channel learned.

:func:`envelopes` is the one way to list them, from a model or from a state dict (a file
read with :func:`envconv.state_dict.load_state_dict_file`); the CLI, the trainer's
records and the analysis report all read it (:meth:`envconv.recipes.rundir.RunDir.envelopes`
lists a run's from its records).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .conv import CONVS
from .convert import has_shortcuts, layer_path, stem_name
from .envelope import GaussianEnvelope, read_envelope_record
from .kernels import sigma2_from_raw
from .pool import EnvelopePool2d
from .state_dict import RECORD_KEY

__all__ = ["EnvelopeInfo", "envelopes", "layer_name"]

_RAW_SIGMA = "raw_sigma"


def layer_name(envelope_name: str) -> str:
    """Name of the layer that owns an envelope: ``"layer2.0.conv2.envelope"`` -> ``"layer2.0.conv2"``.

    A free-standing envelope keeps its own name; the root module is ``"(root)"``.

    Example:
        >>> layer_name("layer2.0.conv2.envelope"), layer_name("envelope")
        ('layer2.0.conv2', '(root)')
    """
    name = "" if envelope_name == "envelope" else envelope_name.removesuffix(".envelope")
    return name or "(root)"


@dataclass(frozen=True)
class EnvelopeInfo:
    r"""One envelope: its layer, its path in the network and the sigma of every channel.

    Attributes:
        name: the layer owning the envelope (``"layer2.0.conv2"``), see :func:`~envconv.listing.layer_name`.
        path: ``"stem"`` (the first convolution), ``"identity"`` (a shortcut's convolution, a name
            component among :data:`envconv.convert.placement.SHORTCUT_NAMES`), ``"pool"`` (an
            :class:`~envconv.EnvelopePool2d`), ``"residual"`` (any other, in a network with shortcut
            convolutions) or ``"main"`` (any other, in a network without).
        channels: the channels the envelope filters.
        size: the number of taps :math:`k_g` (a tuple, one per axis, where the axes' sizes differ).
        shared: one sigma for all channels (Table 1d).
        learnable: sigma is a parameter, not a buffer.
        sigmas: one value per channel, a single one for a shared sigma;
            :math:`\sigma_c = \sqrt{\mathrm{softplus}(\tilde\sigma_c)}` per channel (a sigma per
            axis: every channel's, channel after channel).
        spatial_dims: the envelope's spatial axes (1, 2 or 3).
        axis_sigmas: for a sigma per axis, the sigmas along each spatial axis (a tuple per axis,
            one value per channel); ``None`` for one sigma per channel.

    Example:
        >>> import envconv
        >>> row = envconv.envelopes(envconv.DisentangledConv2d(3, 8, 3, shared_sigma=True))[0]
        >>> row.name, row.channels, row.size, row.shared, round(row.sigma_max, 4)
        ('(root)', 3, 9, True, 0.8326)
    """

    name: str
    path: str
    channels: int
    size: Union[int, Tuple[int, ...]]
    shared: bool
    learnable: bool
    sigmas: Tuple[float, ...]
    spatial_dims: int = 2
    axis_sigmas: Optional[Tuple[Tuple[float, ...], ...]] = None

    @property
    def axis_means(self) -> Optional[Tuple[float, ...]]:
        """The mean sigma along each spatial axis (a sigma per axis), else ``None``."""
        if self.axis_sigmas is None:
            return None
        return tuple(sum(a) / len(a) for a in self.axis_sigmas)

    @property
    def sigma_mean(self) -> float:
        return sum(self.sigmas) / len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return min(self.sigmas)

    @property
    def sigma_max(self) -> float:
        return max(self.sigmas)

    def as_dict(self, with_sigmas: bool = False) -> dict:
        """The fields and the sigma mean / min / max; every channel's sigma only if ``with_sigmas``."""
        row = {"name": self.name, "path": self.path, "channels": self.channels, "size": self.size,
               "shared": self.shared, "learnable": self.learnable, "sigma_mean": self.sigma_mean,
               "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
        if self.spatial_dims != 2:
            row["spatial_dims"] = self.spatial_dims
        if self.axis_sigmas is not None:
            row["axis_sigma_means"] = list(self.axis_means)
        if with_sigmas:
            row["sigmas"] = list(self.sigmas)
            if self.axis_sigmas is not None:
                row["axis_sigmas"] = [list(a) for a in self.axis_sigmas]
        return row


def _sigmas(raw_sigma: torch.Tensor) -> Tuple[float, ...]:
    return tuple(sigma2_from_raw(raw_sigma.detach().double().cpu().reshape(-1)).sqrt().tolist())


def _axis_sigmas(raw_sigma: torch.Tensor) -> Optional[Tuple[Tuple[float, ...], ...]]:
    """Per spatial axis, each channel's sigma, for a per-axis ``raw_sigma`` (C, n); else ``None``."""
    if raw_sigma.dim() != 2:
        return None
    sigma = sigma2_from_raw(raw_sigma.detach().double().cpu()).sqrt()
    return tuple(tuple(column.tolist()) for column in sigma.T)


def _from_model(model: nn.Module) -> List[EnvelopeInfo]:
    stem = stem_name(model) if any(isinstance(m, CONVS) for m in model.modules()) else ""
    residual = has_shortcuts(name for name, m in model.named_modules() if isinstance(m, CONVS))
    rows = []
    pools = {name for name, m in model.named_modules() if isinstance(m, EnvelopePool2d)}
    for name, m in model.named_modules():
        if isinstance(m, GaussianEnvelope):
            owner = layer_name(name)
            path = "pool" if owner in pools else layer_path(owner, stem, residual)
            rows.append(EnvelopeInfo(owner, path, m.channels, m.size, m.shared, m.learnable, _sigmas(m.raw_sigma),
                                     m.spatial_dims, _axis_sigmas(m.raw_sigma)))
    return rows


def _is_pool(state: Mapping[str, torch.Tensor], envelope_prefix: str) -> bool:
    """Whether the layer of the envelope at ``envelope_prefix`` is a pool (nothing but its envelope and order record).

    A convolution's layer holds its weight as well.
    """
    layer = envelope_prefix.removesuffix("envelope.")
    if not layer or layer == envelope_prefix or layer + RECORD_KEY not in state:
        return False
    return all(k.startswith(envelope_prefix) or k == layer + RECORD_KEY for k in state if k.startswith(layer))


def _from_state_dict(state: Mapping[str, torch.Tensor]) -> List[EnvelopeInfo]:
    # the stem is the first convolution weight, as named_modules() lists the first Conv2d
    convs = [k.removesuffix(".weight") for k, v in state.items() if k.endswith("weight") and v.dim() in (3, 4, 5)]
    stem, residual = (convs[0] if convs else ""), has_shortcuts(convs)
    rows = []
    for key, value in state.items():
        if key == _RAW_SIGMA or key.endswith("." + _RAW_SIGMA):
            prefix = key[: -len(_RAW_SIGMA)]
            owner = layer_name(prefix.rstrip("."))
            sigmas, axis_sigmas = _sigmas(value), _axis_sigmas(value)
            values = value.shape[0] if value.dim() == 2 else len(sigmas)
            if prefix + RECORD_KEY not in state:
                raise ValueError(f"the state dict has {key} but not its record {prefix + RECORD_KEY} (envconv stores "
                                 f"one with every envelope): it was not saved from an envconv model's state_dict()")
            if value.numel() == 0 or not torch.isfinite(value).all():
                raise ValueError(f"{key} is {'empty' if value.numel() == 0 else 'not finite'}: a corrupt state dict")
            size, learnable, _, channels, dims = read_envelope_record(state[prefix + RECORD_KEY], prefix + RECORD_KEY)
            shared = values == 1 and channels > 1
            path = "pool" if _is_pool(state, prefix) else layer_path(owner, stem, residual)
            rows.append(EnvelopeInfo(owner, path, channels, size, shared, learnable, sigmas, dims, axis_sigmas))
    return rows


def envelopes(source: Union[nn.Module, Mapping[str, torch.Tensor]]) -> List[EnvelopeInfo]:
    r"""List every Gaussian envelope of a model or a state dict, in module order.

    From a model, every :class:`~envconv.GaussianEnvelope`; from a state dict (e.g.
    ``envconv.state_dict.load_state_dict_file(path)``), every entry whose key ends in
    ``raw_sigma``. Either way, each channel's :math:`\sigma_c = \sqrt{\mathrm{softplus}(\tilde\sigma_c)}`.

    Args:
        source: an ``nn.Module`` or a mapping of names to tensors.

    Returns:
        One :class:`EnvelopeInfo` per envelope (empty when there is none).

    Example:
        >>> import envconv
        >>> model = envconv.create_model("small_resnet20", num_classes=10, in_chans=1)
        >>> [(e.name, e.path, e.channels) for e in envconv.envelopes(model)][:3]
        [('conv1', 'stem', 1), ('layer2.0.conv1', 'residual', 16), ('layer2.0.downsample.0', 'identity', 16)]
        >>> round(envconv.envelopes(model.state_dict())[1].sigma_mean, 4)  # raw sigma 0: sqrt(log 2)
        0.8326
    """
    if isinstance(source, nn.Module):
        return _from_model(source)
    if isinstance(source, Mapping):
        return _from_state_dict(source)
    raise TypeError(f"envelopes() takes an nn.Module or a state dict, got {type(source).__name__}")

