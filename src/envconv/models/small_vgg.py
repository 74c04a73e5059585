"""A VGG-style network for small images (28-32 px) that downsamples with max-pools.

Plain 3x3 conv + BatchNorm + ReLU stages, a 2x2 max-pool between stages, global average
pooling and a linear classifier: the pool-downsampling counterpart of the small ResNets
(the same widths, depth and cost class), so the study can ask whether learned envelopes
at strided pools (``where="pools"``: :class:`~envconv.pool.EnvelopePool2d`) help as they
do at strided convolutions. ``small_vgg8``: three stages of two convs at widths 32/64/128
(28 -> 14 -> 7 px), about the multiply-adds of ``small_resnet20`` on a 28 px image.
"""

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from .small_resnet import NORMS, _norm_layer

__all__ = ["SMALL_VGGS", "SmallVGG", "small_vgg"]

#: The small VGG-style nets by name, each as (convs per stage, widths).
SMALL_VGGS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {"small_vgg8": ((2, 2, 2), (32, 64, 128))}


class SmallVGG(nn.Module):
    """Conv-BN-ReLU stages with a stride-2 max-pool between them; ``features`` then ``fc``.

    Example:
        >>> net = SmallVGG((2, 2), (8, 16), num_classes=10, in_chans=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> [name for name, m in net.named_modules() if isinstance(m, nn.MaxPool2d)]
        ['features.pool1']
    """

    def __init__(self, convs: Sequence[int], widths: Sequence[int], num_classes: int = 10, in_chans: int = 3,
                 norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if len(convs) != len(widths) or not convs:
            raise ValueError(f"convs {tuple(convs)} and widths {tuple(widths)} must be non-empty and of one length")
        self.features = nn.Sequential()
        channels = in_chans
        for stage, (n, width) in enumerate(zip(convs, widths), 1):
            if stage > 1:
                self.features.add_module(f"pool{stage - 1}", nn.MaxPool2d(2))
            for i in range(1, n + 1):
                self.features.add_module(f"conv{stage}_{i}", nn.Conv2d(channels, width, 3, padding=1, bias=False))
                self.features.add_module(f"bn{stage}_{i}", _norm_layer(norm, width))
                self.features.add_module(f"relu{stage}_{i}", nn.ReLU(inplace=True))
                channels = width
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (timm's interface)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, then the classifier (``pre_logits``: the pooled features)."""
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def small_vgg(name: str, num_classes: int = 10, in_chans: int = 3, norm: str = "batch") -> SmallVGG:
    """Build one of :data:`~envconv.models.small_vgg.SMALL_VGGS` by name."""
    if name not in SMALL_VGGS:
        raise ValueError(f"unknown small VGG {name!r}; choose one of {sorted(SMALL_VGGS)}")
    convs, widths = SMALL_VGGS[name]
    return SmallVGG(convs, widths, num_classes=num_classes, in_chans=in_chans, norm=norm)
