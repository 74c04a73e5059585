"""Optimizer and learning-rate schedule from a config's ``train`` section.

SGD with momentum; the learning rate is ``train.lr * batch_size / base_batch_size`` (linear
scaling), changed once per epoch by the schedule. Parameters fall into three groups
for weight decay:

* the envelopes' ``raw_sigma`` (decayed only if ``train.sigma_weight_decay``; the paper does
  not say, and decay pulls raw sigma to 0, i.e. sigma towards 0.83, so it is off by default),
* other 1-D parameters: normalisation weights and biases, biases
  (decayed if ``train.norm_weight_decay``, as in the torchvision reference recipe),
* everything else (decayed).

Warm-up, when asked for, raises the rate linearly over the first epochs (see
:func:`build_scheduler`).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

__all__ = ["parameter_groups", "scaled_lr", "build_optimizer", "build_scheduler"]


def parameter_groups(model: nn.Module, weight_decay: float, *, sigma_weight_decay: bool,
                     norm_weight_decay: bool) -> List[Dict[str, Any]]:
    """Trainable parameters split into sigma / 1-D / other groups with their weight decay (empty groups dropped)."""
    groups = {"sigma": [], "norm_and_bias": [], "other": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.split(".")[-1] == "raw_sigma":
            groups["sigma"].append(p)
        elif p.ndim <= 1:
            groups["norm_and_bias"].append(p)
        else:
            groups["other"].append(p)
    decay = {"sigma": sigma_weight_decay, "norm_and_bias": norm_weight_decay, "other": True}
    return [{"name": k, "params": v, "weight_decay": weight_decay if decay[k] else 0.0}
            for k, v in groups.items() if v]


def scaled_lr(train_cfg: Dict[str, Any]) -> float:
    """``lr * batch_size / base_batch_size``: the paper's 0.1 at 256, scaled linearly."""
    return train_cfg["lr"] * train_cfg["batch_size"] / train_cfg["base_batch_size"]


def build_optimizer(model: nn.Module, train_cfg: Dict[str, Any]) -> torch.optim.SGD:
    """SGD with momentum over :func:`parameter_groups`, at the linearly scaled learning rate.

    The sigma group runs at ``train.sigma_lr_scale`` times that rate (every schedule scales each
    group's rate alike), as DCLS trains its positions at a rate of their own.
    """
    groups = parameter_groups(model, train_cfg["weight_decay"], sigma_weight_decay=train_cfg["sigma_weight_decay"],
                              norm_weight_decay=train_cfg["norm_weight_decay"])
    if not groups:
        raise ValueError("the model has no trainable parameters")
    lr = scaled_lr(train_cfg)
    for group in groups:
        if group["name"] == "sigma":
            group["lr"] = lr * train_cfg.get("sigma_lr_scale", 1.0)
    return torch.optim.SGD(groups, lr=lr, momentum=train_cfg["momentum"], nesterov=train_cfg["nesterov"])


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Dict[str, Any], steps_per_epoch: int = 1):
    """The learning-rate schedule of ``train_cfg``.

    ``step`` (x gamma every step_size epochs) or ``cosine`` (to 0 after the last epoch), after
    ``warmup_epochs`` W of linear warm-up: epoch e = 1..W runs at lr * e / (W + 1).

    It is stepped once per epoch, or, with ``train.schedule_per_step``, once per optimizer step
    (every length counted in ``steps_per_epoch`` steps): a cosine schedule then reaches 0 at the
    last step and the warm-up ramps step by step.
    """
    warmup = int(train_cfg["warmup_epochs"])
    if warmup != train_cfg["warmup_epochs"] or warmup >= train_cfg["epochs"]:
        raise ValueError(f"train.warmup_epochs must be a whole number below train.epochs, got "
                         f"{train_cfg['warmup_epochs']}")
    unit = steps_per_epoch if train_cfg["schedule_per_step"] else 1
    if train_cfg["schedule"] == "step":
        main = torch.optim.lr_scheduler.StepLR(optimizer, train_cfg["step_size"] * unit, gamma=train_cfg["gamma"])
    else:
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=(train_cfg["epochs"] - warmup) * unit)
    warmup *= unit
    if not warmup:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0,
                                             total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
