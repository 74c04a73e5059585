"""Effective receptive field (Luo et al. 2016), measured as RepLKNet's ``erf`` tools measure it.

For a layer's output ``out`` of shape (N, C, h, w), the map is the gradient of
``relu(out[:, :, h // 2, w // 2]).sum()`` with respect to the input, ``relu``'d, summed over
the colour channels and averaged over the images: an (H, W) map of how much each input
pixel moves the centre unit. :meth:`EffectiveReceptiveField.side` summarises it by the side
of the smallest centred square holding a given share of the map's total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EffectiveReceptiveField", "effective_receptive_field", "stage_names", "tile_to_size"]


@dataclass
class EffectiveReceptiveField:
    """An averaged ERF map (``map``: (H, W), float64, on the CPU) of ``layer`` over ``images`` images.

    Example:
        >>> from envconv import create_model
        >>> erf = effective_receptive_field(create_model("small_resnet20", num_classes=10, in_chans=1).eval(),
        ...                                 torch.randn(2, 1, 28, 28), layer="layer1")
        >>> erf.map.shape, erf.side(0.5) <= erf.side(0.99)
        (torch.Size([28, 28]), True)
    """

    map: torch.Tensor
    layer: Optional[str]
    images: int

    @property
    def centre(self):
        return self.map.shape[0] // 2, self.map.shape[1] // 2

    def side(self, t: float) -> int:
        """Side 2h + 1 of the smallest square centred on (H // 2, W // 2) holding at least ``t`` of the total.

        The square is clipped to the map; if even the whole map is needed, the side that
        covers it is returned. Computed on the raw averaged map.
        """
        if not 0 < t <= 1:
            raise ValueError(f"t must be in (0, 1], got {t}")
        total = float(self.map.sum())
        if total <= 0:
            raise ValueError("the ERF map is zero: the centre unit does not depend on the input (dead ReLU?)")
        ci, cj = self.centre
        height, width = self.map.shape
        for h in range(max(height, width)):
            window = self.map[max(ci - h, 0):ci + h + 1, max(cj - h, 0):cj + h + 1]
            if float(window.sum()) >= t * total * (1 - 1e-12):
                return 2 * h + 1
        return 2 * max(height, width) - 1

    def border_mass(self, width: int = 2) -> float:
        """Share of the map's total within ``width`` pixels of the border (near 0: the ERF fits the input)."""
        border = self.map.clone()
        if min(self.map.shape) > 2 * width:
            border[width:-width, width:-width] = 0
        return float(border.sum() / self.map.sum())  # a sum of the border itself: never -6.7e-16 from 1 - inner


def stage_names(model: nn.Module) -> List[str]:
    """The model's stages in order.

    Children named ``layer1``, ``layer2``, ... (our, torchvision and timm ResNets), or the
    entries of a ``stages`` sequence (timm's other CNNs).

    Example:
        >>> from envconv import create_model
        >>> stage_names(create_model("small_resnet20", num_classes=10, in_chans=1))
        ['layer1', 'layer2', 'layer3']
    """
    names = [n for n, _ in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    if names:
        return sorted(names, key=lambda n: int(n[5:]))
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential):
        return [f"stages.{i}" for i in range(len(stages))]
    raise ValueError(f"cannot find the stages of {type(model).__name__} (no layer1, layer2, ... or stages); "
                     f"name the layers explicitly")


def tile_to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Repeat images periodically into a ``size`` x ``size`` canvas with the original in the centre.

    Small images (28x28 Fashion-MNIST) are far smaller than a deep layer's receptive field;
    tiling keeps the local image statistics (unlike zero padding or resizing) while giving the
    ERF room to decay before the border.

    Example:
        >>> tile_to_size(torch.randn(2, 1, 28, 28), 112).shape
        torch.Size([2, 1, 112, 112])
    """
    height, width = images.shape[-2:]
    if size <= max(height, width):
        return images
    reps = 2 * math.ceil((size / max(height, width) - 1) / 2) + 1  # odd, so one copy sits in the middle
    big = images.repeat(1, 1, reps, reps)
    top = (reps // 2) * height + height // 2 - size // 2
    left = (reps // 2) * width + width // 2 - size // 2
    return big[..., top:top + size, left:left + size]


class _Stop(Exception):
    pass


def effective_receptive_field(model: nn.Module, images: torch.Tensor, layer: Optional[str] = None,
                              batch_size: int = 16) -> EffectiveReceptiveField:
    """The ERF of the centre unit of ``layer``'s output (``None``: the model's own output).

    Args:
        model: any module; it is put in eval mode (BatchNorm uses its running statistics).
        images: (N, C, H, W) inputs; the map has their spatial size.
        layer: a module name as in ``model.named_modules()`` (e.g. ``"layer2"``) whose output is used.
        batch_size: images per backward pass.

    Returns:
        :class:`EffectiveReceptiveField` with ``map`` of shape (H, W).

    Raises:
        ValueError: no such layer, or an output that is not (N, C, h, w).

    Example:
        >>> from envconv import GaussianEnvelope
        >>> env = GaussianEnvelope.fixed(1, 1.0, 9)
        >>> erf = effective_receptive_field(env, torch.ones(2, 1, 15, 15))
        >>> erf.map.shape, erf.side(0.5)
        (torch.Size([15, 15]), 3)
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    modules = dict(model.named_modules())
    if layer is not None and layer not in modules:
        raise ValueError(f"no layer {layer!r} in {type(model).__name__}; e.g. {', '.join(list(modules)[1:6])}")
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), images.device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), images.dtype)
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    captured = {}

    def keep(_module, _inputs, output):
        captured["out"] = output
        raise _Stop  # nothing after the layer is needed

    hook = modules[layer].register_forward_hook(keep) if layer is not None else None
    try:
        for batch in images.split(batch_size):
            x = batch.to(device=device, dtype=dtype).requires_grad_(True)
            if hook is None:
                out = model(x)
            else:
                try:
                    model(x)
                except _Stop:
                    pass
                out = captured.pop("out")
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise ValueError(f"the output of {layer or 'the model'} must be (N, C, h, w), got "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}; "
                                 f"name a convolutional layer")
            h, w = out.shape[-2:]
            (grad,) = torch.autograd.grad(F.relu(out[:, :, h // 2, w // 2]).sum(), x)
            total += grad.detach().relu().sum(1).sum(0).double().cpu()
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    return EffectiveReceptiveField(total / len(images), layer, len(images))
