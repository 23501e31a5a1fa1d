"""Measurement sites of neuron sensitivity and SNS (conv output, BatchNorm output, ReLU output)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from advneurons.models import checkpoint
from advneurons.models.architectures import DEFAULT_SITE, SITES, layer_channels
from advneurons.evaluation.pairs import PairSet, save_pairs
from advneurons.evaluation.sensitivity import compute_neuron_sensitivity, neuron_sensitivity
from advneurons.training.sns import StabilityLoss, selected_layers, sns_batch_loss
from advneurons.training.loop import TrainConfig
from tiny_models import random_bn_stats, tiny_model


def pairs(seed: int = 1, n: int = 6):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, 3, 32, 32, generator=gen)
    return clean, (clean + 0.1 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)


def rescale_filter(model: nn.Module, layer: str, channel: int, s: float) -> None:
    """Multiply one conv filter by ``s`` and compensate in its BatchNorm so that the BN output is unchanged:
    with z' = s z, mu' = s mu, var' = s^2 var and gamma' = gamma sqrt(var' + eps) / (s sqrt(var + eps)),
    gamma' (z' - mu') / sqrt(var' + eps) = gamma (z - mu) / sqrt(var + eps) exactly (eps stays as it is)."""
    conv, bn = model.layers("conv")[layer], model.layers("bn")[layer]
    with torch.no_grad():
        var = bn.running_var[channel].clone()
        conv.weight[channel] *= s
        bn.running_mean[channel] *= s
        bn.running_var[channel] = var * s**2
        bn.weight[channel] *= torch.sqrt(var * s**2 + bn.eps) / (s * torch.sqrt(var + bn.eps))


@pytest.mark.parametrize("arch, layer", [("vgg16", "conv5"), ("resnet18", "l2b1c2")])
def test_rescaling_a_filter_moves_only_the_conv_site(arch, layer):
    torch.manual_seed(0)
    model = random_bn_stats(tiny_model(arch))
    clean, perturbed = pairs()
    before = {site: compute_neuron_sensitivity(model, [(clean, perturbed)], site=site) for site in SITES}
    with torch.no_grad():
        logits = model(clean)
    channel, s = 2, 7.0
    rescale_filter(model, layer, channel, s)
    after = {site: compute_neuron_sensitivity(model, [(clean, perturbed)], site=site) for site in SITES}
    with torch.no_grad():
        torch.testing.assert_close(model(clean), logits, rtol=1e-4, atol=1e-5)
    for site in ("bn", "relu"):
        for name in before[site]:
            np.testing.assert_allclose(after[site][name], before[site][name], rtol=1e-4, atol=1e-6, err_msg=name)
    expected = before["conv"][layer].copy()
    expected[channel] *= s
    np.testing.assert_allclose(after["conv"][layer], expected, rtol=1e-4)
    assert after["conv"][layer][channel] > 5 * before["conv"][layer][channel]  # the conv site is not scale-free
    for name in before["conv"]:
        if name != layer:  # every later layer reads the unchanged BN output
            np.testing.assert_allclose(after["conv"][name], before["conv"][name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("arch", ["vgg16", "resnet18"])
def test_every_site_has_the_same_layers_and_channels(arch):
    torch.manual_seed(0)
    model = random_bn_stats(tiny_model(arch))
    counts = layer_channels(model)
    clean, perturbed = pairs(n=2)
    for site in SITES:
        assert list(model.layers(site)) == list(counts)
        sens = compute_neuron_sensitivity(model, [(clean, perturbed)], site=site)
        assert {name: len(values) for name, values in sens.items()} == dict(counts), site
    assert model.layers()["fc"] is model.layers("relu")["fc"] is model.fc


def test_which_module_each_site_reads():
    vgg = tiny_model("vgg16")
    for site, kind in (("conv", nn.Conv2d), ("bn", nn.BatchNorm2d), ("relu", nn.ReLU)):
        modules = vgg.layers(site)
        assert modules["conv7"] is getattr(vgg.features, f"{site}7")
        assert all(isinstance(m, kind) for name, m in modules.items() if name != "fc")
    res = tiny_model("resnet18")
    block = dict(res.blocks())["l3b1"]
    assert [res.layers(site)["conv1"] for site in SITES] == [res.conv1, res.bn1, res.relu1]
    assert [res.layers(site)["l3b1c1"] for site in SITES] == [block.conv1, block.bn1, block.relu1]
    assert [res.layers(site)["l3b1c2"] for site in SITES] == [block.conv2, block.bn2, block.relu2]
    assert [res.layers(site)["l3b1sc"] for site in SITES] == [block.shortcut.conv, block.shortcut.bn, block.shortcut.bn]
    assert DEFAULT_SITE == "bn" and res.layers()["l3b1c1"] is block.conv1


def test_an_unknown_site_is_refused_naming_the_sites(tiny_vgg):
    allowed = "choose one of conv, bn, relu"
    with pytest.raises(ValueError, match=allowed):
        tiny_vgg.layers("pre")
    with pytest.raises(ValueError, match=allowed):
        tiny_model("resnet18").layers("output")
    with pytest.raises(ValueError, match=allowed):
        compute_neuron_sensitivity(tiny_vgg, [pairs(n=1)], site="BN")
    with pytest.raises(ValueError, match=allowed):
        selected_layers(tiny_vgg, "vgg16", None, site="relu6")
    with pytest.raises(ValueError, match=allowed):
        TrainConfig(method="sns", base="vanilla", site="post")
    with pytest.raises(ValueError, match="not both"):
        compute_neuron_sensitivity(tiny_vgg, [pairs(n=1)], tiny_vgg.layers("bn"), site="bn")


@pytest.mark.parametrize("site, kind", [("bn", nn.BatchNorm2d), ("conv", nn.Conv2d), ("relu", nn.ReLU)])
def test_the_stability_loss_hooks_the_modules_of_its_site(site, kind):
    torch.manual_seed(0)
    model = random_bn_stats(tiny_model("vgg16"))
    layers = selected_layers(model, "vgg16", ["conv9", "conv12"], site)
    assert all(isinstance(m, kind) for m in layers.values())
    channels = {"conv9": torch.tensor([0, 5]), "conv12": torch.tensor([3])}
    x, x_adv = pairs(n=3)
    feats = {}
    hooks = [getattr(model.features, f"{site}{i}").register_forward_hook(
        lambda _m, _i, o, i=i: feats.__setitem__(f"conv{i}", o)) for i in (9, 12)]
    with torch.no_grad():
        model(torch.cat([x, x_adv]))
    for h in hooks:
        h.remove()
    expected = sum((feats[n][:3, c] - feats[n][3:, c]).abs().mean((2, 3)).sum(1).mean().item() for n, c in channels.items())
    with StabilityLoss(layers, channels) as stab, torch.no_grad():
        assert all(len(m._forward_hooks) == 1 for m in layers.values())
        _, _, _, l_sns = sns_batch_loss(model, stab, x, torch.zeros(3, dtype=torch.long), x_adv, 1.0, "sen")
    assert l_sns.item() == pytest.approx(expected, rel=1e-5)
    assert all(not m._forward_hooks for m in layers.values())


def test_sensitivity_from_pairs_reads_and_records_its_site(tmp_path):
    torch.manual_seed(0)
    model = random_bn_stats(tiny_model("vgg16"))
    checkpoint.save_model(model, tmp_path / "model.pt", "vgg16", "digits", 0.0625, 10, {})
    clean, perturbed = pairs(n=4)
    labels = np.zeros(4, dtype=np.int64)
    save_pairs(PairSet(clean.numpy(), perturbed.numpy(), labels, labels, labels, np.arange(4)), tmp_path / "pairs.npz")
    for site in ("conv", "relu"):
        table = neuron_sensitivity(tmp_path / "model.pt", tmp_path / "pairs.npz", True, 2,
                                       tmp_path / f"{site}.csv", tmp_path / f"{site}.json", site=site)
        assert json.loads((tmp_path / f"{site}.json").read_text())["params"]["site"] == site
        direct = compute_neuron_sensitivity(model, [(clean, perturbed)], site=site)
        np.testing.assert_allclose(table[table.layer == "conv4"].sensitivity, direct["conv4"], rtol=1e-5)
    with pytest.raises(ValueError, match="choose one of conv, bn, relu"):
        neuron_sensitivity(tmp_path / "model.pt", tmp_path / "pairs.npz", True, 2,
                               tmp_path / "x.csv", tmp_path / "x.json", site="relu1")


@pytest.mark.parametrize("variant", ["sen", "dyn"])
def test_the_sns_channel_choice_is_measured_at_the_sns_site(variant):
    # A filter scaled up 1000x dominates the conv-site ranking of its layer, but leaves the BN-site choice as it was.
    from advneurons.training.loop import _sns_channels

    x, y = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.arange(8)
    cfg = {"method": "sns", "base": "vanilla", "variant": variant, "eps": 16, "steps": 1, "top_percent": 10,
           "select_images": None, "dyn_images": 8}

    def choice(model, site):
        layers = selected_layers(model, "vgg16", ["conv9"], site)
        return _sns_channels(model, layers, TrainConfig(**cfg, site=site), x, y, torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    model = random_bn_stats(tiny_model("vgg16"))
    bn_before = choice(model, "bn")["conv9"]
    channel = next(c for c in range(layer_channels(model)["conv9"]) if c not in choice(model, "conv")["conv9"])
    rescale_filter(model, "conv9", channel, 1000.0)
    assert channel in choice(model, "conv")["conv9"]
    assert torch.equal(choice(model, "bn")["conv9"], bn_before)
