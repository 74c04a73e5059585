"""Checkpoint I/O: safe reading of state dicts and checkpoints, atomic writing."""

import math

import pytest
import torch
from torch import nn

import envconv
from envconv import DisentangledConv2d
from envconv import state_dict as ckpt_module
from envconv.state_dict import atomic_save, load_state_dict_file


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
    rows = envconv.envelopes(load_state_dict_file(path))
    assert [(r.name, r.path, r.channels, r.size) for r in rows] == [("0", "stem", 3, 9)]
    expected = [math.sqrt(math.log1p(math.exp(v))) for v in (-1.0, 0.0, 3.0)]
    assert rows[0].sigmas == pytest.approx(expected, rel=1e-7)


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
