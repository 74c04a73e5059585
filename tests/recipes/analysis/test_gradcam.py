import numpy as np
import pytest
import torch

from envconv import create_model
from envconv.recipes.analysis import default_target_layer, gradcam_maps

pytest.importorskip("pytorch_grad_cam")


@pytest.mark.parametrize("name, shape", [("small_resnet20", (3, 1, 28, 28)), ("resnet18", (2, 3, 128, 128))])
def test_gradcam_maps_have_the_input_size_and_vary(name, shape):
    if name == "resnet18":
        pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=shape[1], method="gaussian")
    maps = gradcam_maps(model, torch.randn(shape), targets=list(range(shape[0])))
    assert maps.shape == (shape[0], *shape[2:])
    assert np.isfinite(maps).all()
    assert all(m.max() - m.min() > 1e-3 for m in maps)
    assert default_target_layer(model) is (model.layer4[-1] if name == "resnet18" else model.layer3[-1])
