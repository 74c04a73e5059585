"""ResNets for small images (28-32 px), so that real experiments run on a CPU.

He et al. (2016) built these for CIFAR: a 3x3 stride-1 stem without max-pool, three
stages of basic blocks with widths 16/32/64 (ResNet-20/32/44/56/110, depth = 6n + 2),
downsampling by the first 3x3 conv of a stage, identity projection by a 1x1 stride-2
conv + BatchNorm (their option B). ``small_resnet18`` / ``small_resnet34`` are the
ImageNet ResNet-18/34 stages (widths 64-512) behind the same small-image stem.

Attribute names follow torchvision (``conv1``, ``bn1``, ``layer1``..., ``conv1``/``conv2``/
``downsample`` inside blocks, ``fc``), so :func:`envconv.disentangle` finds the paper's
places with the same rule, and ``forward_features`` / ``forward_head`` follow timm.
"""


from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["BasicBlock", "NORMS", "SmallResNet", "SMALL_RESNETS", "small_resnet"]


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


#: ``norm`` choices: the normalisation layer after every convolution.
NORMS = ("batch", "none")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    # "none" exists for tests that need a model whose output does not depend on the batch split.
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual connection (projection when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = _norm_layer(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _norm_layer(norm, planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            _norm_layer(norm, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """A ResNet of basic blocks for small images.

    Args:
        blocks: number of blocks per stage.
        widths: channels per stage (the stem has ``widths[0]``).
        num_classes: size of the classifier output.
        in_chans: input channels (1 for Fashion-MNIST).
        norm: ``"batch"`` (BatchNorm after every conv) or ``"none"`` (no normalisation:
            each sample's output is independent of the rest of the batch).

    Example:
        >>> net = SmallResNet((1, 1, 1), (16, 32, 64), num_classes=10, in_chans=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.forward_features(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], num_classes: int = 10, in_chans: int = 3,
                 norm: str = "batch", global_pool: str = "avg") -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1:
            raise ValueError(f"blocks and widths need one positive entry per stage, got {blocks} and {widths}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        self.num_classes, self.num_features = num_classes, widths[-1]
        self.head_hidden_size = widths[-1]  # timm: the width forward_head(pre_logits=True) returns
        self.num_stages = len(blocks)
        #: timm's feature description, the stem and each stage, with its stride from the input
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="relu")] + [
            dict(num_chs=w, reduction=2 ** i, module=f"layer{i + 1}") for i, w in enumerate(widths)]
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.bn1 = _norm_layer(norm, widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_planes, planes, stride, norm)] + [BasicBlock(planes, planes, 1, norm)
                                                                     for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            in_planes = planes
        self.pool_type = global_pool
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.Identity()
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        r"""The last stage's feature map, shape :math:`(N, \text{num\_features}, H/2^{S-1}, W/2^{S-1})`."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def _take_indices(self, indices: Union[None, int, Sequence[int]]) -> List[int]:
        """Indices into :attr:`feature_info` as timm takes them: None (all), the last n, or a list."""
        count = len(self.feature_info)
        if indices is None:
            indices = count
        if isinstance(indices, int):
            if not 0 < indices <= count:
                raise ValueError(f"the last {indices} features: choose 1 to {count} (the stem and {count - 1} stages)")
            return list(range(count - indices, count))
        take = [i + count if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take) if not 0 <= t < count]
        if bad:
            raise ValueError(f"feature indices {bad} are out of range: 0 (the stem) to {count - 1} (the last stage)")
        return take

    def forward_intermediates(self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """The feature maps at ``indices`` of :attr:`feature_info` (0 the stem, i stage i): timm's feature API.

        Args:
            x: images (N, C, H, W).
            indices: ``None`` (all), ``n`` (the last n) or a list of indices, negatives from the end.
            norm: accepted for timm's interface; this network has no final norm.
            stop_early: stop after the last stage asked for (the final features are then that stage's).
            output_fmt: ``"NCHW"``, the only layout of a CNN's features.
            intermediates_only: return the list alone.

        Returns:
            ``[maps]`` if ``intermediates_only``, else ``(final features, [maps])``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take = self._take_indices(indices)
        intermediates = []
        x = self.relu(self.bn1(self.conv1(x)))
        if 0 in take:
            intermediates.append(x)
        last = max(take) if stop_early else self.num_stages
        for i in range(1, last + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: Union[None, int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the head): timm's ``feature_cls="getter"`` calls this.

        Returns:
            the indices, made absolute.
        """
        take = self._take_indices(indices)
        for i in range(max(take) + 1, self.num_stages + 1):
            setattr(self, f"layer{i}", nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling and the classifier (or the pooled features if ``pre_logits``)."""
        if self.pool_type == "avg":
            x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The classifier (timm's interface)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` (0: none, features out); ``global_pool`` ``"avg"`` or ``""``."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.Identity()
            self.pool_type = global_pool
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


#: The small-image ResNets by name, each as (blocks per stage, widths).
SMALL_RESNETS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    **{f"small_resnet{6 * n + 2}": ((n, n, n), (16, 32, 64)) for n in (3, 5, 7, 9, 18)},
    "small_resnet18": ((2, 2, 2, 2), (64, 128, 256, 512)),
    "small_resnet34": ((3, 4, 6, 3), (64, 128, 256, 512)),
}


def small_resnet(name: str, num_classes: int = 10, in_chans: int = 3, norm: str = "batch",
                 global_pool: str = "avg") -> SmallResNet:
    """Build one of :data:`~envconv.models.small_resnet.SMALL_RESNETS` by name."""
    if name not in SMALL_RESNETS:
        raise ValueError(f"unknown small ResNet {name!r}; choose one of {sorted(SMALL_RESNETS)}")
    blocks, widths = SMALL_RESNETS[name]
    return SmallResNet(blocks, widths, num_classes=num_classes, in_chans=in_chans, norm=norm, global_pool=global_pool)
