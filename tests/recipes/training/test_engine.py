"""train_one_epoch / evaluate against hand computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from envconv.recipes.training.engine import NonFiniteLossError, evaluate, topk_correct, train_one_epoch


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4],   # target 1: the largest -> top-1 hit
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5],   # target 1: the smallest of 6 -> top-5 miss
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])  # target 2: 4th largest -> top-5 hit only
    targets = torch.tensor([1, 1, 2])
    assert topk_correct(logits, targets).tolist() == [1, 2]
    # 3 classes: top-5 is capped at top-3 (every row hits); top-1 hits rows 0 and 2
    assert topk_correct(logits[:, :3], targets).tolist() == [2, 3]


def test_evaluate_matches_numpy():
    torch.manual_seed(0)
    x, y = torch.randn(37, 8), torch.randint(0, 7, (37,))
    model = nn.Linear(8, 7)
    stats = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=10), device=torch.device("cpu"))
    logits = model(x).detach().double().numpy()
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss = -log_probs[np.arange(37), y.numpy()].mean()
    rank = (logits > logits[np.arange(37), y.numpy()][:, None]).sum(1)  # how many classes beat the target
    assert stats.images == 37
    assert stats.loss == pytest.approx(loss, rel=1e-6)
    assert stats.top1_err == pytest.approx(100 * np.mean(rank >= 1))
    assert stats.top5_err == pytest.approx(100 * np.mean(rank >= 5))


def test_one_epoch_equals_manual_sgd():
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    model = nn.Linear(5, 3)
    manual = nn.Linear(5, 3)
    manual.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    stats = train_one_epoch(model, DataLoader(TensorDataset(x, y), batch_size=4), optimizer,
                            device=torch.device("cpu"))
    losses = []
    for i in range(0, 12, 4):
        loss = nn.functional.cross_entropy(manual(x[i:i + 4]), y[i:i + 4])
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, list(manual.parameters()))
        with torch.no_grad():
            for p, g in zip(manual.parameters(), grads):
                p -= 0.5 * g
    for a, b in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b)
    assert stats.loss == pytest.approx(sum(losses) / 3, rel=1e-6)  # equal batches: mean of batch means
    assert stats.images == 12


def test_non_finite_loss_stops_with_a_clear_message():
    x = torch.randn(8, 4)
    x[5] = math.nan
    loader = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=2)
    model = nn.Linear(4, 2)
    with pytest.raises(NonFiniteLossError, match=r"not finite \(epoch 3, step 4\).*last finished checkpoint"):
        train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"),
                        log_every=2, epoch=3)
