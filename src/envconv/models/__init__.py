"""Models: envconv's small-image ResNets and VGG, ``create_model`` and the timm registration."""

from .factory import create_model, list_models
from .small_resnet import SMALL_RESNETS, BasicBlock, SmallResNet, small_resnet
from .small_vgg import SMALL_VGGS, SmallVGG, small_vgg
from .timm_models import TIMM_BASES, register_timm_models

__all__ = [
    "create_model",
    "list_models",
    "SMALL_RESNETS",
    "BasicBlock",
    "SmallResNet",
    "small_resnet",
    "SMALL_VGGS",
    "SmallVGG",
    "small_vgg",
    "TIMM_BASES",
    "register_timm_models",
]
