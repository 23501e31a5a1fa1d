"""MeanSparse: the operation, channel statistics, alpha selection on validation data, defended checkpoints."""

import pandas as pd
import pytest
import torch

from advneurons.models import checkpoint
from advneurons.defenses.meansparse import (
    MeanSparseReLU,
    attach,
    channel_stats,
    choose_alpha,
    meansparse_model,
    set_alpha,
)
from tiny_models import tiny_model


def test_activations_near_the_mean_become_the_mean():
    m = MeanSparseReLU(2)
    m.mean.copy_(torch.tensor([1.0, -1.0]))
    m.std.copy_(torch.tensor([0.5, 2.0]))
    m.alpha.fill_(1.0)
    x = torch.tensor([[[[1.4]], [[0.5]]], [[[1.6]], [[-3.5]]]])  # (2, 2, 1, 1)
    out = m(x).flatten().tolist()
    # ch0: |1.4-1| <= .5 -> 1; ch1: |0.5+1| <= 2 -> -1 -> relu 0; ch0 1.6 passes; ch1 |-3.5+1| > 2 -> relu 0
    assert out == pytest.approx([1.0, 0.0, 1.6, 0.0])
    m.alpha.fill_(0.0)
    assert torch.equal(m(x), torch.relu(x))


def _formula(m, x):
    """MeanSparse as its formula reads: ReLU(where(|x - mu| <= alpha * s, mu, x))."""
    mu, s = m.mean.view(1, -1, 1, 1), m.std.view(1, -1, 1, 1)
    return torch.relu(torch.where((x - mu).abs() <= m.alpha * s, mu.expand_as(x), x))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_the_fast_form_gives_the_formulas_values_and_gradients(alpha):
    torch.manual_seed(0)
    m = MeanSparseReLU(8)
    m.mean.copy_(torch.randn(8))
    m.std.copy_(torch.rand(8))
    m.alpha.fill_(alpha)
    mu, edge = m.mean.view(1, -1, 1, 1), m.alpha * m.std.view(1, -1, 1, 1)
    inf = torch.tensor(float("inf"))
    # random activations in both layouts, and activations exactly on, and one float beside, the band's edges
    x = torch.cat([torch.randn(6, 8, 5, 5) * 2, (mu + edge).expand(1, 8, 5, 5), (mu - edge).expand(1, 8, 5, 5),
                   torch.nextafter(mu + edge, inf).expand(1, 8, 5, 5), torch.nextafter(mu - edge, -inf).expand(1, 8, 5, 5),
                   mu.expand(1, 8, 5, 5), torch.zeros(1, 8, 5, 5)])
    for batch in (x, x.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(m(batch), _formula(m, batch))
        upstream = torch.randn_like(batch)
        grads = []
        for fn in (m, lambda b: _formula(m, b)):
            leaf = batch.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad((fn(leaf) * upstream).sum(), leaf)
            grads.append(grad)
        assert torch.equal(*grads)
    half = x.to(torch.bfloat16)  # activations in another dtype take the formula's own path (it promotes)
    assert m(half).dtype == torch.float32 and torch.equal(m(half), _formula(m, half))


def test_channel_stats_match_a_direct_computation():
    torch.manual_seed(0)
    model = tiny_model("resnet18").eval()
    x = torch.rand(20, 3, 32, 32)
    stats = channel_stats(model, x, batch_size=7)
    seen = {}
    relu = model.relus()["l2b1r2"]
    h = relu.register_forward_pre_hook(lambda _m, inp: seen.__setitem__("a", inp[0]))
    with torch.no_grad():
        model(x)
    h.remove()
    a = seen["a"].double()
    mean, std = stats["l2b1r2"]
    torch.testing.assert_close(mean.double(), a.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std.double(), a.std((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-6)


def test_alpha_zero_is_the_undefended_model_and_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("vgg16").eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
    stats = channel_stats(model, x)
    attach(model, stats, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain)
    set_alpha(model, 1.0)
    with torch.no_grad():
        defended = model(x)
    assert not torch.allclose(defended, plain)
    from advneurons.models.defended import meansparse_record

    checkpoint.save_model(model, tmp_path / "m.pt", "vgg16", "digits", 0.0625, 10, {}, defense=meansparse_record(stats, 1.0))
    loaded, ckpt = checkpoint.load_model(tmp_path / "m.pt")
    assert ckpt["defense"]["alpha"] == 1.0
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), defended)


def test_alpha_is_chosen_within_the_clean_accuracy_budget():
    sweep = pd.DataFrame({"alpha": [0, 0.5, 1, 2], "clean": [0.95, 0.948, 0.94, 0.80], "pgd": [0.5, 0.55, 0.6, 0.9]})
    assert choose_alpha(sweep, "pgd", max_clean_drop=1.0) == 1.0  # 0.94 within 1 point; 0.80 is not
    assert choose_alpha(sweep, "pgd", max_clean_drop=0.5) == 0.5
    tie = pd.DataFrame({"alpha": [0, 0.5, 1], "clean": [0.9, 0.9, 0.9], "pgd": [0.5, 0.6, 0.6]})
    assert choose_alpha(tie, "pgd", 1.0) == 0.5


def test_meansparse_step_selects_on_validation_and_writes_a_defended_checkpoint(tmp_path, trained_vgg_path, digits_files):
    attacks = {"pgd": {"type": "pgd", "eps": 32, "steps": 2}, "pgd_l2": {"type": "pgd_l2", "eps": 320, "steps": 2}}
    sweep = meansparse_model(trained_vgg_path, digits_files["train"], digits_files["test"], [0, 0.5, 1.0], attacks,
                             "pgd", 2.0, 40, 0, tmp_path / "m.pt", tmp_path / "s.csv", tmp_path / "s.md",
                             tmp_path / "s.json")
    assert list(sweep.columns) == ["alpha", "clean", "pgd", "pgd_l2", "chosen"] and sweep.chosen.sum() == 1
    chosen = float(sweep[sweep.chosen].alpha.iloc[0])
    model, ckpt = checkpoint.load_model(tmp_path / "m.pt")
    assert ckpt["defense"]["alpha"] == chosen and ckpt["meta"]["split_used_for_alpha"] == "val"
    assert "validation images" in (tmp_path / "s.md").read_text()
    with pytest.raises(ValueError, match="start at 0"):
        meansparse_model(trained_vgg_path, digits_files["train"], digits_files["test"], [0.5, 1.0], attacks, "pgd",
                         1.0, 10, 0, tmp_path / "x.pt", tmp_path / "x.csv", tmp_path / "x.md", tmp_path / "x.json")
    with pytest.raises(ValueError, match="already carries a defense"):
        meansparse_model(tmp_path / "m.pt", digits_files["train"], digits_files["test"], [0, 1.0], attacks, "pgd",
                         1.0, 10, 0, tmp_path / "y.pt", tmp_path / "y.csv", tmp_path / "y.md", tmp_path / "y.json")
