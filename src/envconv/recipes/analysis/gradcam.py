"""GradCAM maps (Selvaraju et al. 2017) through the ``grad-cam`` package, as in the paper's Fig. 6."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from .erf import stage_names

__all__ = ["default_target_layer", "gradcam_maps"]


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last block of the last stage (e.g. ``layer4[-1]`` of a ResNet-50): GradCAM's usual target.

    Example:
        >>> from envconv import create_model
        >>> model = create_model("small_resnet20", num_classes=10, in_chans=1)
        >>> default_target_layer(model) is model.layer3[-1]
        True
    """
    stage = model.get_submodule(stage_names(model)[-1])
    blocks = list(stage.children())
    return blocks[-1] if blocks else stage


def gradcam_maps(model: nn.Module, images: torch.Tensor, targets: Optional[Sequence[int]] = None,
                 target_layer: Optional[nn.Module] = None) -> np.ndarray:
    """GradCAM of each image for one class (``targets[i]``; default: the predicted class).

    Args:
        model: a classifier; it is put in eval mode.
        images: (N, C, H, W) normalised inputs.
        targets: the class to explain per image.
        target_layer: default :func:`default_target_layer`.

    Returns:
        (N, H, W) maps in [0, 1] (each scaled to its own maximum by ``grad-cam``), the input's size.

    Raises:
        ImportError: ``grad-cam`` is not installed (``pip install envconv[analysis]``).

    Example:
        >>> from envconv import create_model
        >>> model = create_model("small_resnet20", num_classes=10, in_chans=1).eval()
        >>> maps = gradcam_maps(model, torch.randn(2, 1, 28, 28), targets=[3, 7])
        >>> maps.shape, bool((maps >= 0).all() and (maps <= 1).all())
        ((2, 28, 28), True)
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise ImportError("GradCAM needs the grad-cam package: pip install 'envconv[analysis]'") from err
    was_training = model.training
    model.eval()
    layer = target_layer if target_layer is not None else default_target_layer(model)
    device = next(model.parameters()).device
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            wanted = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
            maps = cam(input_tensor=images.to(device), targets=wanted)
    finally:
        model.train(was_training)
    return np.asarray(maps, dtype=np.float64)
