"""torchrun with 2 gloo processes on the CPU gives the weights of a 1-process run (DistributedDataParallel)."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from envconv.recipes.rundir import load_checkpoint
from envconv.recipes.training.distributed import pick_device
from envconv.recipes.training.trainer import train
from run_helpers import tiny_config


def _config(run_dir):
    # No BatchNorm, no augmentation: a sample's gradient does not depend on which process holds it.
    # float64: the two runs differ only in how a batch's gradient sum is split and rounded, which
    # float32 amplifies over 2 epochs to about 1e-5 and differently on each CPU; float64 keeps it
    # near 1e-12 on any x86-64 CPU.
    return tiny_config(run_dir, model={"model_kwargs": {"norm": "none"}}, data={"augment": "none",
                       "synthetic_size": [128, 40]}, train={"epochs": 2, "batch_size": 32, "lr": 0.2,
                                                             "dtype": "float64"})


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    train(_config(tmp_path / "one"), quiet=True)
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(_config(tmp_path / "two")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "envconv", "train", "--config", str(config_file)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on cpu x 2" in proc.stdout and proc.stdout.count("epoch 2/2") == 1  # rank 0 alone prints
    one = load_checkpoint(tmp_path / "one" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    assert one["epoch"] == two["epoch"] == 2
    for key, value in one["model"].items():
        if key.endswith("_extra_state"):  # the architecture records (int64): the same on both
            assert torch.equal(two["model"][key], value), key
            continue
        assert value.dtype == torch.float64, key
        torch.testing.assert_close(two["model"][key], value, rtol=1e-9, atol=1e-9, msg=key)
    sigma_change = sum(float(v.abs().sum()) for k, v in one["model"].items() if k.endswith("raw_sigma"))
    assert sigma_change > 1e-3  # raw sigma started at 0: the sigmas were trained (and agree)
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch: only rank 0 writes
    assert not [p for p in (tmp_path / "two").iterdir() if ".tmp-" in p.name]


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert pick_device("auto") == expected
    with pytest.raises(ValueError, match="not a device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.slow
def test_two_processes_recalibrate_batchnorm_over_both_shards(tmp_path):
    """train.recalibrate_bn under torchrun: each process averages its own shard's batches, then the processes
    average theirs: the statistics of the four half-batches both processes saw, as one process computes them."""
    from envconv.recipes.data import build_dataset
    from envconv.recipes.rundir import model_from_checkpoint
    from envconv.recipes.training.engine import recalibrate_batchnorm

    config = tiny_config(tmp_path / "two", data={"augment": "none", "synthetic_size": [128, 40]},
                         train={"epochs": 1, "batch_size": 32, "recalibrate_bn": 2})
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "envconv", "train", "--config", str(config_file)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved, _ = model_from_checkpoint(tmp_path / "two" / "last.pt")
    by_hand, _ = model_from_checkpoint(tmp_path / "two" / "last.pt")
    images = build_dataset(config["data"], "train", 1, 4)
    # rank r holds the images r, r + 2, ...: its two batches of 16 are r, r + 2, ..., r + 30 and r + 32, ..., r + 62
    batches = [torch.stack([images[i][0] for i in range(r + 32 * b, r + 32 * b + 32, 2)])
               for r in (0, 1) for b in (0, 1)]
    assert recalibrate_batchnorm(by_hand, [(x, torch.zeros(16)) for x in batches], 4) == 64
    compared = 0
    for (name, a), b in zip(saved.state_dict().items(), by_hand.state_dict().values()):
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
            compared += 1
    assert compared > 10
