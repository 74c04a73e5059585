"""Training, evaluation and linear probing: the ``envconv train`` / ``eval`` / ``probe`` workflow."""

from .engine import EpochStats, NonFiniteLossError, evaluate, train_one_epoch
from .trainer import train

__all__ = ["EpochStats", "NonFiniteLossError", "evaluate", "train", "train_one_epoch"]
