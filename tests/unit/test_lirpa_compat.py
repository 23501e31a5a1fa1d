"""Bounds from auto_LiRPA 0.3 (imported through advneurons.psn.lirpa_compat) are sound and sensible."""

import pytest
import torch
from tiny_models import tiny_model, with_bn_stats
from torch import nn

from advneurons.psn.lirpa_compat import (
    METHODS,
    bounded_module,
    import_auto_lirpa,
    linf_bounds,
    linf_linear_bounds,
)

TOL = 1e-4


class SmallVGG(nn.Module):
    """Two conv-BN-ReLU-max-pool stages, two conv-BN-ReLU, Flatten, Linear-ReLU-Linear; it
    normalises its [0, 1] input with buffers. The last convs see a 4x4 map, so auto_LiRPA turns
    their patches into dense A matrices before the max-pool (the case of compat fix 8).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.flatten = nn.Flatten()
        self.head = nn.Sequential(
            nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10)
        )

    def forward(self, x):
        return self.head(self.flatten(self.features((x - self.mean) / self.std)))


def _with_bn_stats(model, shape, seed=0):
    """Give every BatchNorm non-trivial running stats and affine parameters, then eval mode."""
    return with_bn_stats(model, lambda gen: torch.rand(8, *shape, generator=gen) * 0.8 + 0.1, seed)


def _ball_points(x, eps, n, seed=0):
    """n corners and n uniform points of the L-inf ball around x (batch of one), clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *x.shape[1:])
    corners = x + eps * (2 * torch.randint(0, 2, shape, generator=gen) - 1)
    uniform = x + eps * (2 * torch.rand(shape, generator=gen) - 1)
    return torch.cat([x, corners, uniform]).clamp(0, 1)


def _assert_contains(model, x, eps, lower, upper, n=256):
    assert lower.shape == upper.shape == (x.shape[0], 10)
    assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
    with torch.no_grad():
        for i in range(x.shape[0]):
            ys = model(_ball_points(x[i : i + 1], eps, n, seed=i))
            assert (ys >= lower[i] - TOL).all(), (ys.min(0).values - lower[i]).min()
            assert (ys <= upper[i] + TOL).all(), (upper[i] - ys.max(0).values).min()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = _with_bn_stats(SmallVGG(), (3, 16, 16))
    # A batch of two exercises compat fixes 7 and 8; pixels at 0 and 1 the clipping to [0, 1].
    x = torch.rand(2, 3, 16, 16)
    x[0, 0, :4] = 0.0
    x[1, 1, :4] = 1.0
    return net, bounded_module(net, x), x


def test_import_is_idempotent():
    lirpa = import_auto_lirpa()
    assert import_auto_lirpa() is lirpa
    assert lirpa.__version__ == "0.3"
    assert hasattr(lirpa, "BoundedModule") and hasattr(lirpa, "PerturbationLpNorm")


@pytest.mark.parametrize("method", METHODS)
def test_small_net_bounds_contain_outputs(small, method):
    net, bnet, x = small
    eps = 4 / 255
    lower, upper = linf_bounds(bnet, x, eps, method)
    assert (lower <= upper).all()
    _assert_contains(net, x, eps, lower, upper)


def test_small_net_crown_tighter_than_ibp(small):
    _, bnet, x = small
    eps = 2 / 255
    l_ibp, u_ibp = linf_bounds(bnet, x, eps, "IBP")
    l_crown, u_crown = linf_bounds(bnet, x, eps, "CROWN")
    assert (l_crown >= l_ibp - TOL).all() and (u_crown <= u_ibp + TOL).all()
    assert (u_crown - l_crown).mean() < (u_ibp - l_ibp).mean()


@pytest.mark.parametrize("method", METHODS)
def test_small_net_bounds_collapse_as_eps_vanishes(small, method):
    net, bnet, x = small
    with torch.no_grad():
        y = net(x)
    widths = []
    for eps in (1e-2, 1e-3, 1e-4, 1e-5, 1e-7):
        lower, upper = linf_bounds(bnet, x, eps, method)
        assert (lower <= y + TOL).all() and (y <= upper + TOL).all()
        widths.append((upper - lower).max().item())
    assert all(a > b for a, b in zip(widths, widths[1:])), widths
    assert widths[-1] < 1e-3, widths


def test_linf_bounds_wraps_plain_module(small):
    net, bnet, x = small
    expected = linf_bounds(bnet, x, 1 / 255, "IBP")
    got = linf_bounds(net, x, 1 / 255, "IBP")
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    with pytest.raises(ValueError):
        linf_bounds(bnet, x, 1 / 255, "alpha-CROWN")


def test_crown_return_A_is_input_jacobian(small):
    """compute_bounds(return_A=True, needed_A_dict=...) gives the output's linear bounds in the
    input; at tiny eps (no unstable ReLU, no max-pool tie) both equal the Jacobian."""
    net, bnet, x = small
    x = x[:1]
    lirpa = import_auto_lirpa()
    eps = 1e-6
    ptb = lirpa.PerturbationLpNorm(
        norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
    )
    need = {bnet.output_name[0]: [bnet.input_name[0]]}
    with torch.no_grad():
        lower, upper, A = bnet.compute_bounds(
            x=(lirpa.BoundedTensor(x, ptb),),
            method="CROWN",
            return_A=True,
            needed_A_dict=need,
        )
    entry = A[bnet.output_name[0]][bnet.input_name[0]]
    assert isinstance(entry["lA"], torch.Tensor)
    assert entry["lA"].shape == (1, 10, 3, 16, 16)
    jac = torch.autograd.functional.jacobian(net, x)[0, :, 0]  # (10, 3, 16, 16)
    torch.testing.assert_close(entry["lA"][0], jac, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entry["uA"][0], jac, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        y = net(x)
    torch.testing.assert_close(lower, y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(upper, y, atol=1e-4, rtol=1e-4)
    # The raw lbias omits the (x - mean) buffer's term, so lA . x + lbias is not the output.
    raw = torch.einsum("noi,ni->no", entry["lA"].flatten(2), x.flatten(1))
    raw = raw + entry["lbias"]
    assert (raw - y).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["CROWN", "CROWN-IBP"])
def test_linf_linear_bounds_are_sound(small, method):
    net, bnet, x = small
    eps = 2 / 255
    lA, lbias, uA, ubias, lower, upper = linf_linear_bounds(bnet, x, eps, method)
    assert lA.shape == uA.shape == (2, 10, 3, 16, 16)
    assert lbias.shape == ubias.shape == (2, 10)
    expected = linf_bounds(bnet, x, eps, method)
    torch.testing.assert_close(lower, expected[0])
    torch.testing.assert_close(upper, expected[1])
    with torch.no_grad():
        for i in range(2):
            pts = _ball_points(x[i : i + 1], eps, 128, seed=i)
            ys = net(pts)
            lin_l = pts.flatten(1) @ lA[i].flatten(1).T + lbias[i]
            lin_u = pts.flatten(1) @ uA[i].flatten(1).T + ubias[i]
            assert (lin_l <= ys + TOL).all() and (ys <= lin_u + TOL).all()
            assert (lin_l >= lower[i] - TOL).all() and (lin_u <= upper[i] + TOL).all()
    # At tiny eps the linear bounds are the first-order Taylor expansion of the model.
    lA, lbias, _, _, _, _ = linf_linear_bounds(bnet, x[:1], 1e-6)
    with torch.no_grad():
        y = net(x[:1])
    torch.testing.assert_close(
        torch.einsum("noi,ni->no", lA.flatten(2), x[:1].flatten(1)) + lbias,
        y,
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_real_models_bounds_contain_outputs(arch):
    torch.manual_seed(1)
    model = _with_bn_stats(
        tiny_model(arch), (3, 32, 32), seed=1
    )
    x = torch.rand(1, 3, 32, 32)
    bnet = bounded_module(model, x)
    eps = 1 / 255
    widths = {}
    for method in METHODS:
        lower, upper = linf_bounds(bnet, x, eps, method)
        _assert_contains(model, x, eps, lower, upper, n=64)
        widths[method] = (upper - lower).mean().item()
    assert widths["CROWN"] <= widths["IBP"], widths
