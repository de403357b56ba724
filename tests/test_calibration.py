"""BatchNorm calibration of an untrained model scales its features like a trained BNNeck's."""
import torch
from torch import nn

from modeling.calibration import calibrate_batchnorm


def test_running_statistics_become_those_of_the_data_and_weights_stay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(4 * 6 * 6))
    weights = model[0].weight.clone()
    data = [torch.randn(8, 3, 8, 8) * 5 + 2 for _ in range(3)]
    assert calibrate_batchnorm(model, data) == 24
    conv_out = [model[0](x).detach() for x in data]
    expected_mean = torch.stack([out.mean(dim=(0, 2, 3)) for out in conv_out]).mean(dim=0)
    expected_var = torch.stack([out.var(dim=(0, 2, 3)) for out in conv_out]).mean(dim=0)
    assert torch.allclose(model[1].running_mean, expected_mean, atol=1e-4)
    assert torch.allclose(model[1].running_var, expected_var, rtol=1e-3)
    assert model[1].momentum == 0.1 and not model.training
    assert torch.equal(model[0].weight, weights)
    features = torch.cat([model(x) for x in data]).detach()
    assert abs(float(features.var(dim=0).mean()) - 1.0) < 0.05
