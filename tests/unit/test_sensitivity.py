from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from advneurons.evaluation.sensitivity import channel_distance, compute_neuron_sensitivity, sensitivity_table, top_channels


class Identity2(nn.Module):
    """Model whose only layer returns its input unchanged, so features are the images we write by hand."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(x)


def test_sensitivity_matches_hand_computed_example():
    # Two pairs, two channels of 2x2 maps.
    clean = torch.tensor(
        [
            [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]],
            [[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]],
        ]
    )
    perturbed = torch.tensor(
        [
            [[[1.0, 2.0], [3.0, 0.0]], [[1.0, 0.0], [0.0, -1.0]]],
            [[[0.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]],
        ]
    )
    model = Identity2()
    layers = OrderedDict(layer=model.layer)
    # channel 0: pair 1 |4-0| = 4 -> 4/4 = 1; pair 2 |0-2| = 2 -> 2/4 = 0.5; mean 0.75
    # channel 1: pair 1 |0-1| + |0+1| = 2 -> 0.5; pair 2 0 -> 0; mean 0.25
    tip = compute_neuron_sensitivity(model, [(clean, perturbed)], layers)["layer"]
    np.testing.assert_allclose(tip, [0.75, 0.25])
    eccv = compute_neuron_sensitivity(model, [(clean, perturbed)], layers, normalise=False)["layer"]
    np.testing.assert_allclose(eccv, [3.0, 1.0])


def test_streaming_over_batches_equals_one_batch(tiny_vgg):
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(10, 3, 32, 32, generator=g)
    adv = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    whole = compute_neuron_sensitivity(tiny_vgg, [(clean, adv)])
    streamed = compute_neuron_sensitivity(tiny_vgg, ((clean[i : i + 3], adv[i : i + 3]) for i in range(0, 10, 3)))
    assert list(whole) == [f"conv{i}" for i in range(1, 14)] + ["fc"]
    for name in whole:
        np.testing.assert_allclose(whole[name], streamed[name], rtol=1e-5, atol=1e-7)
    # Brute force for one layer: per-pair channel distances from a plain forward pass, at the default site.
    feats = {}
    handle = tiny_vgg.features.bn5.register_forward_hook(lambda m, i, o: feats.setdefault("o", []).append(o))
    with torch.no_grad():
        tiny_vgg(clean), tiny_vgg(adv)
    handle.remove()
    a, b = feats["o"]
    expected = (a - b).abs().mean(dim=(2, 3)).mean(0).numpy()
    np.testing.assert_allclose(whole["conv5"], expected, rtol=1e-5, atol=1e-7)


def test_identical_pairs_have_zero_sensitivity(tiny_vgg):
    x = torch.rand(4, 3, 32, 32)
    sens = compute_neuron_sensitivity(tiny_vgg, [(x, x.clone())])
    assert all(np.all(v == 0) for v in sens.values())


def test_linear_layer_distance_is_per_unit():
    a = torch.tensor([[1.0, -2.0, 3.0]])
    b = torch.tensor([[0.0, 2.0, 3.0]])
    assert channel_distance(a, b).tolist() == [[1.0, 4.0, 0.0]]


def test_top_channels_picks_ceil_percent_per_layer():
    table = sensitivity_table(
        OrderedDict(a=np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.4, 0.6, 0.8, 0.0, 1.0]), b=np.array([3.0, 1.0]))
    )
    top = top_channels(table, 20)
    a = top[top.layer == "a"]
    assert a.channel.tolist() == [10, 1, 8]  # ceil(11 * 0.2) = 3, best first
    assert a["rank"].tolist() == [1, 2, 3]
    assert top[top.layer == "b"].channel.tolist() == [0]  # at least one per layer
    with pytest.raises(ValueError):
        top_channels(table, 0)


def test_no_pairs_is_an_error(tiny_vgg):
    with pytest.raises(ValueError, match="no pairs"):
        compute_neuron_sensitivity(tiny_vgg, [])


def test_pairs_made_lazily_by_the_model_itself_are_measured_like_stored_pairs(tiny_vgg):
    """SNS chooses its channels from PGD pairs made batch by batch while the sensitivity hooks are in place:
    the attack's own forward passes are not pairs and must not be counted (an odd batch made them fail, an
    even one added the distance between two halves of unrelated images)."""
    from advneurons.attacks import pgd_linf

    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(7) % 10
    stored = []

    def lazy():
        for i in range(0, 7, 3):  # batches of 3, 3, 1: odd sizes
            adv = pgd_linf(tiny_vgg, x[i : i + 3], y[i : i + 3], 8 / 255, 2, None, random_start=True,
                           generator=torch.Generator().manual_seed(i))
            stored.append((x[i : i + 3], adv))
            yield stored[-1]

    from_lazy = compute_neuron_sensitivity(tiny_vgg, lazy())
    from_stored = compute_neuron_sensitivity(tiny_vgg, stored)
    assert list(from_lazy) == list(from_stored)
    for name in from_stored:
        np.testing.assert_array_equal(from_lazy[name], from_stored[name])
