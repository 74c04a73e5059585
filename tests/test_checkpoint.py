"""Checkpoint I/O: safe reading of state dicts and checkpoints, atomic writing."""

import math

import pytest
import torch
from torch import nn

import envconv
from envconv import DisentangledConv2d
from envconv import checkpoint as ckpt_module
from envconv.checkpoint import (
    atomic_save,
    envelope_sigmas_from_file,
    load_checkpoint,
    load_state_dict_file,
    model_from_checkpoint,
)
from envconv.config import validate_config


def _model():
    model = nn.Sequential(DisentangledConv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[0].envelope.raw_sigma.copy_(torch.tensor([-1.0, 0.0, 3.0]))
    return model


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_sigmas_from_state_dict_and_checkpoint(tmp_path, wrap):
    state = _model().state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    assert set(load_state_dict_file(path)) == set(state)
    sigmas = envelope_sigmas_from_file(path)
    assert list(sigmas) == ["0"]
    expected = [math.sqrt(math.log1p(math.exp(v))) for v in (-1.0, 0.0, 3.0)]
    assert sigmas["0"].tolist() == pytest.approx(expected, rel=1e-7)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_state_dict_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_state_dict_file(bad)
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict_file(notdict)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_refuses_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(ValueError, match="not a readable"):
        load_state_dict_file(path)
    assert "code ran" not in capsys.readouterr().out


def test_atomic_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)
    good = path.read_bytes()
    real_fsync = ckpt_module.os.fsync

    def crash(fd):  # the disk write dies after part of the new file was written
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.setattr(ckpt_module.os, "fsync", real_fsync)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_model_from_checkpoint_checks_the_weights(tmp_path):
    config = validate_config({"model": {"name": "small_resnet20", "num_classes": 3, "in_chans": 1}})
    model = envconv.create_model("small_resnet20", num_classes=3, in_chans=1)
    with torch.no_grad():
        model.conv1.envelope.raw_sigma.fill_(1.5)
    atomic_save({"model": model.state_dict(), "config": config, "epoch": 4}, tmp_path / "a.pt")
    loaded, ckpt = model_from_checkpoint(tmp_path / "a.pt")
    assert ckpt["epoch"] == 4 and not loaded.training
    assert torch.equal(loaded.conv1.envelope.raw_sigma, torch.tensor([1.5]))
    other = envconv.create_model("small_resnet20", num_classes=5, in_chans=1)
    atomic_save({"model": other.state_dict(), "config": config, "epoch": 4}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="do not fit the model its config describes"):
        model_from_checkpoint(tmp_path / "b.pt")
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_with_a_foreign_config_is_refused_naming_the_file(tmp_path):
    import torch

    from envconv.checkpoint import load_checkpoint

    for config in ({"model": {"name": 5}}, {"optimizer": "adam"}, "not a mapping"):
        path = tmp_path / "foreign.pt"
        torch.save({"model": {}, "config": config, "epoch": 1}, path)
        with pytest.raises(ValueError, match="foreign.pt: its config"):
            load_checkpoint(path)
