"""Optimizer groups, linear lr scaling and the per-epoch schedules, against their formulas."""

import math

import pytest
import torch

from envconv import create_model
from envconv.recipes.config import validate_config
from envconv.recipes.training.optim import build_optimizer, build_scheduler, parameter_groups, scaled_lr


def _train_cfg(**values):
    return validate_config({"train": values})["train"]


@pytest.mark.parametrize("sigma_wd, norm_wd", [(False, True), (True, False)])
def test_weight_decay_reaches_exactly_the_configured_groups(sigma_wd, norm_wd):
    model = create_model("small_resnet20", num_classes=10, in_chans=1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    cfg = _train_cfg(lr=0.2, base_batch_size=128, batch_size=128, momentum=0.0, weight_decay=0.01,
                     sigma_weight_decay=sigma_wd, norm_weight_decay=norm_wd)
    optimizer = build_optimizer(model, cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradient: only weight decay moves a parameter, to 1 - lr * wd = 0.998
    for name, p in model.named_parameters():
        if name.endswith("raw_sigma"):
            decayed = sigma_wd
        elif p.ndim == 1:
            decayed = norm_wd
        else:
            decayed = True
        assert torch.all(p == (0.998 if decayed else 1.0)).item(), name
    groups = parameter_groups(model, 0.01, sigma_weight_decay=sigma_wd, norm_weight_decay=norm_wd)
    assert [g["name"] for g in groups] == ["sigma", "norm_and_bias", "other"]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in groups[0]["params"]) == 1 + 16 + 16 + 32 + 32  # one sigma per input channel


def test_linear_lr_scaling():
    assert scaled_lr(_train_cfg(lr=0.1, batch_size=1024, base_batch_size=256)) == pytest.approx(0.4)
    assert scaled_lr(_train_cfg(lr=0.1, batch_size=128, base_batch_size=256)) == pytest.approx(0.05)


def _lrs(cfg, epochs, steps_per_epoch=1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=scaled_lr(cfg))
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_step_schedule_is_the_papers():
    cfg = _train_cfg(epochs=120, lr=0.1, batch_size=256, base_batch_size=256, schedule="step", step_size=30,
                     gamma=0.1)
    for epoch, lr in enumerate(_lrs(cfg, 120)):
        assert lr == pytest.approx(0.1 * 0.1 ** (epoch // 30))


def test_cosine_with_warmup():
    cfg = _train_cfg(epochs=10, lr=0.2, batch_size=256, base_batch_size=256, schedule="cosine", warmup_epochs=2)
    lrs = _lrs(cfg, 10)
    assert lrs[:2] == pytest.approx([0.2 / 3, 0.4 / 3])  # epoch e <= W at lr * e / (W + 1)
    assert lrs[2:] == pytest.approx([0.1 * (1 + math.cos(math.pi * t / 8)) for t in range(8)])
    with pytest.raises(ValueError, match="warmup_epochs must be a whole number below"):
        _lrs(_train_cfg(epochs=3, warmup_epochs=3), 1)


def test_per_step_cosine_reaches_zero_at_the_last_step_and_warms_up_step_by_step():
    cfg = _train_cfg(epochs=3, lr=0.2, batch_size=256, base_batch_size=256, schedule="cosine", warmup_epochs=1,
                     schedule_per_step=True)
    lrs = _lrs(cfg, 3 * 5, steps_per_epoch=5)  # 5 steps per epoch: 5 warm-up steps, then 10 cosine steps
    assert lrs[:5] == pytest.approx([0.2 * (1 / 6 + (1 - 1 / 6) * s / 5) for s in range(5)])
    assert lrs[5:] == pytest.approx([0.1 * (1 + math.cos(math.pi * t / 10)) for t in range(10)])
    assert lrs[-1] == pytest.approx(0.2 * (1 + math.cos(math.pi * 0.9)) / 2) and lrs[-1] < 0.005
    step = _train_cfg(epochs=4, lr=0.1, batch_size=256, base_batch_size=256, schedule="step", step_size=2,
                      gamma=0.1, schedule_per_step=True)
    assert _lrs(step, 8, steps_per_epoch=2) == pytest.approx([0.1] * 4 + [0.01] * 4)  # step_size in epochs


def test_sigma_lr_scale_gives_the_sigmas_their_own_rate_through_warm_up_and_schedule():
    model = create_model("small_resnet20", num_classes=10, in_chans=1)
    cfg = _train_cfg(lr=0.2, base_batch_size=128, batch_size=128, momentum=0.0, weight_decay=0.0, epochs=6,
                     warmup_epochs=1, schedule="cosine", sigma_lr_scale=10.0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    for _ in range(5):
        assert by_name["sigma"]["lr"] == pytest.approx(10 * by_name["other"]["lr"]) and by_name["other"]["lr"] > 0
        optimizer.step()
        scheduler.step()
    for p in model.parameters():  # one SGD step with a unit gradient moves a parameter by its group's rate
        p.grad = torch.ones_like(p)
    raw = next(p for n, p in model.named_parameters() if n.endswith("raw_sigma"))
    weight = next(p for n, p in model.named_parameters() if n.endswith("conv1.weight"))
    before = raw.detach().clone(), weight.detach().clone()
    optimizer.step()
    assert torch.allclose(before[0] - raw.detach(), torch.full_like(raw, by_name["sigma"]["lr"]))
    assert torch.allclose(before[1] - weight.detach(), torch.full_like(weight, by_name["other"]["lr"]))
    with pytest.raises(ValueError, match="sigma_lr_scale"):
        _train_cfg(sigma_lr_scale=0)
