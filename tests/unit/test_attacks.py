import pytest
import torch

from advneurons.attacks import AttackSpec, fgsm, pgd_linf


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    x[:, :, :4] = 0.0  # saturated pixels exercise the [0, 1] clamp
    x[:, :, -4:] = 1.0
    y = torch.randint(0, 10, (8,), generator=g)
    return x, y


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_ball_and_box(tiny_vgg, batch, random_start):
    x, y = batch
    eps = 8 / 255
    adv = pgd_linf(tiny_vgg, x, y, eps, steps=5, random_start=random_start, generator=torch.Generator().manual_seed(3))
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6
    assert (adv - x).abs().max() > eps / 2  # it actually moved


def test_fgsm_stays_in_ball_and_box(tiny_vgg, batch):
    x, y = batch
    eps = 16 / 255
    adv = fgsm(tiny_vgg, x, y, eps)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6


def test_pgd_increases_loss_and_targeted_decreases_it(tiny_vgg, batch):
    x, y = batch
    loss = lambda inp, lab: torch.nn.functional.cross_entropy(tiny_vgg(inp), lab).item()  # noqa: E731
    with torch.no_grad():
        base = loss(x, y)
    adv = pgd_linf(tiny_vgg, x, y, 8 / 255, steps=10)
    target = (y + 1) % 10
    tgt = pgd_linf(tiny_vgg, x, target, 8 / 255, steps=10, targeted=True)
    with torch.no_grad():
        assert loss(adv, y) > base
        assert loss(tgt, target) < loss(x, target)


def test_attack_restores_training_mode(tiny_vgg, batch):
    tiny_vgg.train()
    pgd_linf(tiny_vgg, *batch, 4 / 255, steps=1)
    assert tiny_vgg.training


def test_seeded_random_start_is_reproducible(tiny_vgg, batch):
    runs = [pgd_linf(tiny_vgg, *batch, 4 / 255, 2, random_start=True, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_attack_spec_from_config_uses_255_units():
    spec = AttackSpec.from_config({"type": "pgd", "eps": 32, "steps": 10, "step_size": None})
    assert spec.eps == pytest.approx(32 / 255)
    assert "eps=32/255" in spec.describe() and "10 steps" in spec.describe()
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec.from_config({"type": "pgdd", "eps": 8})
    with pytest.raises(ValueError, match="non-negative"):
        AttackSpec.from_config({"type": "fgsm", "eps": -1})
