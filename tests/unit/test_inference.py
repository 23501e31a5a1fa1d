"""BatchNorm folding for eval-only jobs (advneurons.models.inference): the same function, fewer layers."""

import copy
import json

import pytest
import torch
from torch import nn

from advneurons.attacks import AttackSpec
from advneurons.data import Split, load_split, save_split
from advneurons.evaluation.robustness import evaluate_attack
from advneurons.models.checkpoint import load_model, save_model
from advneurons.models.defended import IGDefense, attach
from advneurons.models.inference import FOLDED, conv_bn_pairs, fold_batchnorm, for_attacks
from tiny_models import random_bn_stats, tiny_model

# conv/BN pairs: VGG16 has 13; ResNet18 has the stem, two per block (8 blocks) and three shortcut projections
PAIRS = {"vgg16": 13, "resnet18": 20}


def _model(arch):
    torch.manual_seed(0)
    return random_bn_stats(tiny_model(arch))


def _input_grad(model, x, y):
    """Gradient of the logit margin of class y over the next class (a cross-entropy saturates on
    confident random models, and its tiny gradient is all rounding)."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    other = (y + 1) % logits.shape[1]
    (grad,) = torch.autograd.grad((logits.gather(1, y[:, None]) - logits.gather(1, other[:, None])).sum(), x)
    return grad


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_folded_model_computes_the_same_logits_and_input_gradients(arch):
    # In float64, so that a ReLU input within float32 rounding of zero cannot switch a gradient path: the
    # comparison is of the functions, not of their rounding (float32 logits agree to ~1e-7).
    model = _model(arch).double()
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == PAIRS[arch]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert getattr(folded, FOLDED) == PAIRS[arch]
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32, generator=gen, dtype=torch.float64), torch.arange(16) % 10
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert ref.abs().max() > 0.1  # BatchNorm far from the identity: a dropped shift or scale would show
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(_input_grad(folded, x, y), _input_grad(model, x, y), rtol=1e-8, atol=1e-12)


def test_folding_keeps_a_meansparse_model_and_reaches_inside_a_wrapper():
    model = _model("resnet18")
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    # MeanSparse replaces ReLUs only: statistics of each ReLU's input, taken from the unfolded model
    inputs = {}
    hooks = [relu.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0]))
             for name, relu in model.relus().items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    stats = {name: (value.mean((0, 2, 3)), value.std((0, 2, 3))) for name, value in inputs.items()}
    defended = attach(copy.deepcopy(model), stats=stats, alpha=0.25)
    assert not any(isinstance(m, nn.ReLU) for m in defended.modules())
    folded = copy.deepcopy(defended)
    assert fold_batchnorm(folded) == PAIRS["resnet18"]
    with torch.no_grad():
        torch.testing.assert_close(folded(x), defended(x), rtol=1e-4, atol=1e-5)
    # IG-Defense wraps its base model: the base's pairs are found and folded
    wrapper = IGDefense(copy.deepcopy(model), torch.ones(10, model.penultimate_dim, dtype=torch.bool), 0.0, 100.0, 1)
    assert len(conv_bn_pairs(wrapper)) == PAIRS["resnet18"]
    assert fold_batchnorm(wrapper.eval()) == PAIRS["resnet18"]


def test_other_models_are_left_alone_and_training_mode_is_refused():
    external = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)).eval()
    assert fold_batchnorm(external) == 0
    assert isinstance(external[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(tiny_model("vgg16").train())


def test_for_attacks_freezes_parameters_without_changing_input_gradients():
    model = _model("vgg16")
    ready = for_attacks(copy.deepcopy(model))
    assert not ready.training
    assert not any(p.requires_grad for p in ready.parameters())
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(_input_grad(ready, x, y), _input_grad(model, x, y), rtol=1e-3, atol=1e-6)


def test_evaluation_job_runs_the_folded_model_and_records_it(tmp_path):
    """evaluate_attack loads through for_attacks: same clean accuracy as the checkpoint's own model, the count of
    folded pairs in the metadata, and PGD's robust accuracy equal to an attack on the unfolded model."""
    from advneurons.attacks import run_attack
    from advneurons.runtime import generator

    model = _model("vgg16")
    path = tmp_path / "model.pt"
    save_model(model, path, "vgg16", "digits", 0.0625, 10, meta={})
    gen = torch.Generator().manual_seed(4)
    pixels = (torch.rand(24, 3, 32, 32, generator=gen) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(pixels.float() / 255).argmax(1)  # the unfolded model gets every image right
    test = tmp_path / "test.npz"
    save_split(Split(pixels.numpy(), labels.numpy()), test)
    pgd = {"type": "pgd", "eps": 2, "steps": 5}
    records = evaluate_attack(path, test, {"pgd": pgd}, "m", None, 0, 24, tmp_path / "r.csv", tmp_path / "r.json")
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["batchnorm_folded"] == PAIRS["vgg16"]
    reference, _ = load_model(path)
    x, y = load_split(test)
    with torch.no_grad():
        clean = float((reference(x).argmax(1) == y).float().mean())
    x_adv = run_attack(AttackSpec.from_config(pgd), reference, x, y, generator=generator(0))
    with torch.no_grad():
        robust = float((reference(x_adv).argmax(1) == y).float().mean())
    row = records.set_index("attack")
    assert row.loc["clean", "accuracy"] == pytest.approx(clean)
    assert abs(row.loc["pgd", "accuracy"] - robust) <= 1 / 24 + 1e-9  # at most one image apart by rounding


def test_sensitivity_ratios_crafted_on_the_folded_model_equal_those_crafted_on_the_model():
    """sensitivity_ratios crafts its attacks on a folded copy and reads the ratios from the unfolded model's
    convolution outputs (which folding would change). In float64 the two crafters give the same perturbations."""
    from advneurons.sns.ratios import compute_sensitivity_ratios

    model = _model("vgg16").double()
    crafter = copy.deepcopy(model)
    fold_batchnorm(crafter)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(12, 3, 32, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    perturbations = {"linf_pgd": [{"type": "pgd", "eps": 4, "steps": 3}, {"type": "fgsm", "eps": 8}]}
    plain = compute_sensitivity_ratios(model, x, y, perturbations, ["conv1", "relu1", "conv5"], seed=0, batch_size=6)
    fast = compute_sensitivity_ratios(model, x, y, perturbations, ["conv1", "relu1", "conv5"], seed=0, batch_size=6,
                                      crafter=crafter)
    assert len(plain) == len(fast) and plain["ratio"].gt(0).any()
    torch.testing.assert_close(torch.tensor(fast["ratio"].to_numpy()), torch.tensor(plain["ratio"].to_numpy()),
                               rtol=1e-9, atol=1e-12)
    # and the crafter is what the attacks use: another network's perturbations give other ratios
    torch.manual_seed(9)
    other = random_bn_stats(tiny_model("vgg16"), seed=9).double()
    elsewhere = compute_sensitivity_ratios(model, x, y, perturbations, ["conv1", "relu1", "conv5"], seed=0,
                                           batch_size=6, crafter=other)
    assert not torch.allclose(torch.tensor(elsewhere["ratio"].to_numpy()), torch.tensor(plain["ratio"].to_numpy()))
