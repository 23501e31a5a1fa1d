"""Sensitivity ratios (TIP Eq 11), Table II layout, and the sensitivity curves step."""

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from advneurons.models.layer_names import arch_of
from advneurons.sns.ratios import (
    default_ratio_layers,
    default_table_layers,
    layer_mean_ratios,
    pair_ratios,
    ratio_report,
    ratio_table,
    sensitivity_curves,
    compute_sensitivity_ratios,
)
from tiny_models import tiny_model


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(x)


def shift(delta: float):
    """Deterministic perturbation: x + delta everywhere (clipped)."""

    def perturb(model, x, y, generator):
        return (x + delta).clamp(0, 1)

    return perturb


def test_ratio_hand_computed_with_zero_clean_map_excluded():
    clean = torch.tensor(
        [
            [[[1.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
            [[[2.0, 2.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]],
        ]
    )
    pert = torch.tensor(
        [
            [[[1.0, 0.0], [2.0, 1.0]], [[5.0, 0.0], [0.0, 0.0]]],
            [[[2.0, 2.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]],
        ]
    )
    model = OneLayer()
    ((ratio, valid),) = pair_ratios(model, clean, pert, OrderedDict(layer=model.layer), batch_size=1).values()
    # channel 0: pair 1 |diff| = 2 over ||clean|| = 4 -> 0.5; pair 2: 4 / 4 = 1.0 -> mean 0.75
    # channel 1: pair 1 has an all-zero clean map (excluded); pair 2: 1 / 2 = 0.5
    np.testing.assert_allclose(ratio, [0.75, 0.5])
    assert valid.tolist() == [2, 1]


def test_ratios_of_vgg_layer_match_direct_computation(tiny_vgg):
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    table = compute_sensitivity_ratios(
        tiny_vgg,
        x,
        torch.zeros(5, dtype=torch.long),
        {"shift": [shift(0.05), shift(0.1)]},
        layers=["conv5", "relu5"],
        batch_size=2,
    )
    outs = {}
    tiny_vgg.features.conv5.register_forward_hook(lambda m, i, o: outs.setdefault("conv", []).append(o))
    tiny_vgg.features.relu5.register_forward_hook(lambda m, i, o: outs.setdefault("relu", []).append(o))
    with torch.no_grad():
        tiny_vgg(x), tiny_vgg((x + 0.1).clamp(0, 1))
    for key, layer in (("conv", "conv5"), ("relu", "relu5")):
        a, b = outs[key]
        num = (a - b).abs().flatten(2).sum(2)
        den = a.abs().flatten(2).sum(2)
        per_pair = torch.where(den > 0, num / den.clamp_min(1e-30), torch.nan)
        expected = torch.nanmean(per_pair.double(), 0).numpy()
        got = table[(table["layer"] == layer) & (table["level"] == 2)].sort_values("channel")["ratio"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, equal_nan=True)
    assert set(table["kind"]) == {"conv", "relu"} and set(table["conv"]) == {"conv5"}
    assert table[table["level"] == 1]["strength"].iloc[0] == "level 1"


def test_default_layers_vgg_and_resnet():
    vgg = tiny_model("vgg16")
    assert default_ratio_layers(vgg)[:4] == ["conv1", "relu1", "conv2", "relu2"]
    res = tiny_model("resnet18")
    layers = default_ratio_layers(res)
    assert layers[:6] == ["conv1", "relu1", "l1b1c1", "l1b1r1", "l1b1c2", "l1b1r2"]
    assert "l2b1sc" not in layers
    fake = pd.DataFrame(
        {
            "layer": layers,
            "kind": ["conv", "relu"] * (len(layers) // 2),
            "conv": [n for n in layers[::2] for _ in range(2)],
            "position": range(len(layers)),
        }
    )
    assert default_table_layers(fake) == [
        "l4b1c1",
        "l4b1r1",
        "l4b1c2",
        "l4b1r2",
        "l4b2c1",
        "l4b2r1",
        "l4b2c2",
        "l4b2r2",
    ]
    assert arch_of(layers) == "resnet18" and arch_of(default_ratio_layers(vgg)) == "vgg16"


def test_layer_means_and_table_layout(tiny_vgg):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(4, dtype=torch.long)
    attacks = {"fgsm": [{"type": "fgsm", "eps": 4}, {"type": "fgsm", "eps": 8}]}
    ratios = compute_sensitivity_ratios(tiny_vgg, x, y, attacks, batch_size=4)
    table = ratio_table({"vanilla": ratios, "pat": ratios}, "fgsm")
    assert table.columns.tolist() == ["model", "layer", "kind", "eps=4", "eps=8"]
    expected_layers = ["conv10", "relu10", "conv11", "relu11", "conv12", "relu12", "conv13", "relu13"]
    assert table[table["model"] == "vanilla"]["layer"].tolist() == expected_layers
    conv10 = ratios[(ratios["layer"] == "conv10") & (ratios["strength"] == "eps=8")]["ratio"].mean()
    assert table.iloc[0]["eps=8"] == pytest.approx(conv10)
    # Means over sensitive channels only: channel 0 and 1 of conv10 -> conv10 and relu10 rows average those two.
    sensitive = pd.DataFrame({"layer": ["conv10", "conv10"], "channel": [0, 1]})
    means = layer_mean_ratios(ratios, sensitive)
    assert set(means["layer"]) == {"conv10", "relu10"}
    relu10 = ratios[(ratios["layer"] == "relu10") & (ratios["strength"] == "eps=4") & ratios["channel"].isin([0, 1])][
        "ratio"
    ].mean()
    assert means[(means["layer"] == "relu10") & (means["strength"] == "eps=4")]["ratio"].iloc[0] == pytest.approx(
        relu10
    )
    with pytest.raises(ValueError, match="no perturbation family 'pgd'"):
        ratio_table({"vanilla": ratios}, "pgd")


def test_ratio_report_and_curves_steps(tiny_vgg, tmp_path):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ratios = compute_sensitivity_ratios(
        tiny_vgg,
        x,
        torch.zeros(4, dtype=torch.long),
        {"pgd": [{"type": "pgd", "eps": 4, "steps": 2}, {"type": "pgd", "eps": 8, "steps": 2}], "noise": [shift(0.02)]},
        batch_size=4,
    )
    ratios.to_csv(tmp_path / "v.csv", index=False)
    (ratios.assign(ratio=ratios["ratio"] / 2)).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"layer": ["conv1", "conv13"], "channel": [0, 3]}).to_csv(tmp_path / "top.csv", index=False)
    out = {k: tmp_path / k for k in ("t2.csv", "t2.md", "means.csv", "f13.png", "f14.png", "meta.json")}
    table = ratio_report(
        {"vanilla": tmp_path / "v.csv", "pat": tmp_path / "p.csv"},
        "pgd",
        *out.values(),
        top_csvs={"vanilla": tmp_path / "top.csv"},
    )
    assert len(table) == 16 and "eps=8" in out["t2.md"].read_text()
    means = pd.read_csv(out["means.csv"])
    assert means[(means["model"] == "vanilla") & (means["layer"] == "conv5")]["ratio_sensitive"].isna().all()
    assert means[(means["model"] == "vanilla") & (means["layer"] == "conv13")]["n_channels_sensitive"].eq(1).all()
    assert out["f13.png"].stat().st_size > 1000 and out["f14.png"].stat().st_size > 1000

    rows = [
        {"layer": f"conv{i}", "depth": i - 1, "channel": c, "sensitivity": float(c + i)}
        for i in range(1, 14)
        for c in range(10)
    ]
    van = pd.DataFrame(rows)
    pat = van.assign(sensitivity=van["sensitivity"] / 4)
    van.to_csv(tmp_path / "sv.csv", index=False)
    pat.to_csv(tmp_path / "sp.csv", index=False)
    summary = sensitivity_curves(
        {"vanilla": tmp_path / "sv.csv", "pat": tmp_path / "sp.csv"},
        tmp_path / "f10.png",
        tmp_path / "f10.csv",
        tmp_path / "f10.md",
        tmp_path / "f10.json",
    )
    conv1 = summary[(summary["layer"] == "conv1") & (summary["model"] == "vanilla")].iloc[0]
    assert conv1["mean_sensitivity"] == pytest.approx(np.mean(np.arange(10) + 1.0))
    assert conv1["mean_top10pct"] == pytest.approx(10.0)  # top 1 of 10 channels: 9 + 1
    assert (tmp_path / "f10.png").exists()
    with pytest.raises(ValueError, match="lacks layer"):
        sensitivity_curves(
            {"vanilla": tmp_path / "sv.csv"},
            tmp_path / "x.png",
            tmp_path / "x.csv",
            tmp_path / "x.md",
            tmp_path / "x.json",
            layers=["conv99"],
        )
