"""Models: envconv's small-image ResNets, ``create_model`` and the timm registration."""

from .factory import create_model, create_model_from_config, list_models, model_from_checkpoint
from .small_resnet import SMALL_RESNETS, BasicBlock, SmallResNet, small_resnet
from .timm_models import TIMM_BASES, register_timm_models

__all__ = [
    "create_model",
    "create_model_from_config",
    "model_from_checkpoint",
    "list_models",
    "SMALL_RESNETS",
    "BasicBlock",
    "SmallResNet",
    "small_resnet",
    "TIMM_BASES",
    "register_timm_models",
]
