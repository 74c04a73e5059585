"""Small configs and IDX files for the data and training tests (seconds on 2 CPU cores)."""

import gzip
import struct

from envconv.recipes.config import validate_config


def tiny_config(run_dir, **sections):
    """A full config for a 2-epoch run on 256 synthetic 28x28 grey images; ``sections`` update it."""
    config = {
        "name": "tiny",
        "model": {"name": "small_resnet20", "num_classes": 4, "in_chans": 1, "options": {"sigma_init": 0.0}},
        "data": {"dataset": "synthetic", "synthetic_size": [256, 64], "image_size": 28, "mean": [0.0], "std": [1.0],
                 "workers": 0},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "base_batch_size": 256, "schedule": "step",
                  "step_size": 1, "gamma": 0.5, "weight_decay": 1e-4, "log_every": 2, "device": "cpu"},
        "output": {"dir": str(run_dir), "progress": "off", "tensorboard": False},
    }
    for section, values in sections.items():
        config[section].update(values)
    return validate_config(config)


def write_idx(path, array):
    """Write a uint8 tensor as a gzip IDX file (the format of the Fashion-MNIST files)."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(struct.pack(">i", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())
