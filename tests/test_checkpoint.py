"""Reading state dicts safely from files."""

import math

import pytest
import torch
from torch import nn

from envconv import DisentangledConv2d
from envconv.checkpoint import envelope_sigmas_from_file, load_state_dict_file


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
