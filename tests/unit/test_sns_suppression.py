"""Suppression of sensitive channels: hooks, channel selection, known-answer accuracies, the workflow step."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from advneurons.sns.common import activation_names
from advneurons.sns.suppression import (
    decode_counts,
    evaluate_variant_correct,
    random_selection,
    scaled_channels,
    sensitive_selection,
    suppression_curves,
    suppression_study,
    suppression_summary,
)
from sns_fixtures import gaussian_noise
from tiny_models import tiny_model


def fake_sensitivity(model) -> pd.DataFrame:
    """Sensitivity = channel index (so the top channels are the highest indices) for every layer."""
    rows = []
    for depth, (name, module) in enumerate(model.layers().items()):
        n = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        rows += [{"layer": name, "depth": depth, "channel": c, "sensitivity": float(c)} for c in range(n)]
    return pd.DataFrame(rows)


def test_scaled_channels_scales_only_listed_channels_and_cleans_up():
    relu = nn.ReLU()
    x = torch.arange(1.0, 1.0 + 2 * 3 * 2 * 2).view(2, 3, 2, 2)
    with scaled_channels({"r": relu}, {"r": [0, 2]}, 0.5):
        out = relu(x)
    np.testing.assert_allclose(out[:, 0], 0.5 * x[:, 0])
    np.testing.assert_allclose(out[:, 1], x[:, 1])
    np.testing.assert_allclose(out[:, 2], 0.5 * x[:, 2])
    assert torch.equal(relu(x), x)  # hook removed


def test_activation_names_vgg_and_resnet():
    vgg = tiny_model("vgg16")
    assert activation_names(vgg) == {f"conv{i}": f"relu{i}" for i in range(1, 14)}
    res = tiny_model("resnet18")
    names = activation_names(res)
    assert names["conv1"] == "relu1" and names["l1b1c1"] == "l1b1r1" and names["l4b2c2"] == "l4b2r2"
    assert "l2b1sc" not in names and "fc" not in names and len(names) == 1 + 8 * 2
    # The ReLU really acts on the BN'd output of the conv it is mapped to (ResNet block conv1 -> relu1).
    block = res.layer2[0]
    seen = {}
    block.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("conv", o))
    block.relu1.register_forward_hook(lambda m, i, o: seen.setdefault("relu_in", i[0]))
    res.eval()
    with torch.no_grad():
        res(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(seen["relu_in"], block.bn1(seen["conv"]))


def test_sensitive_and_random_selection(tiny_vgg):
    sens = fake_sensitivity(tiny_vgg)
    chosen = sensitive_selection(tiny_vgg, sens, 10)
    assert list(chosen) == [f"relu{i}" for i in range(1, 14)]
    assert chosen["relu1"] == [3]  # 4 channels -> ceil(0.4) = 1, the highest index
    assert chosen["relu13"] == [31, 30, 29, 28]  # 32 channels -> ceil(3.2) = 4
    rand = random_selection(tiny_vgg, chosen, seed=5)
    assert rand == random_selection(tiny_vgg, chosen, seed=5)
    assert rand != random_selection(tiny_vgg, chosen, seed=6)
    for name in chosen:
        assert len(rand[name]) == len(chosen[name])
        assert not set(rand[name]) & set(chosen[name])
    with pytest.raises(ValueError, match="conv3: sensitivity table has"):
        sensitive_selection(tiny_vgg, sens[~((sens["layer"] == "conv3") & (sens["channel"] == 0))], 10)
    with pytest.raises(ValueError, match="lacks conv layer"):
        sensitive_selection(tiny_vgg, sens[sens["layer"] != "conv7"], 10)


def test_zeroing_last_relu_leaves_bias_logits_and_attacks_see_the_suppressed_model(tiny_vgg):
    # With every channel of relu13 scaled by 0 the logits are fc.bias: every image gets argmax(bias).
    x = torch.rand(12, 3, 32, 32)
    y = torch.arange(12) % 10
    bias_class = int(tiny_vgg.fc.bias.argmax())
    seen = []

    def probe(model, xb, yb, generator):
        with torch.no_grad():
            seen.append(model(xb))
        return xb

    everything = {"relu13": list(range(tiny_vgg.features.conv13.out_channels))}
    with scaled_channels(tiny_vgg.relus(), everything, 0.0):
        result = evaluate_variant_correct(tiny_vgg, x, y, {"probe": probe}, seed=0, batch_size=5)
    assert result["clean"].mean() == pytest.approx(float((y == bias_class).float().mean()))
    for logits in seen:
        torch.testing.assert_close(logits, tiny_vgg.fc.bias.detach().expand_as(logits))


def test_suppression_curves_on_trained_model(trained_vgg, digits_files):
    from advneurons.data import load_split

    x, y = load_split(digits_files["test"])
    x, y = x[:40], y[:40]
    sens = fake_sensitivity(trained_vgg)
    chosen = sensitive_selection(trained_vgg, sens, 10)
    curves = suppression_curves(
        trained_vgg,
        x,
        y,
        chosen,
        {"fgsm": {"type": "fgsm", "eps": 8}, "noise": gaussian_noise(0.1)},
        betas=(1.0, 0.0),
        n_random=2,
        seed=0,
        batch_size=40,
    )
    assert len(curves) == 2 * (1 + 2) * 3  # betas x (sensitive + 2 random) x (clean, fgsm, noise)
    base = curves[curves["beta"] == 1.0].groupby("perturbation")["accuracy"].nunique()
    assert (base == 1).all()  # beta = 1 is one model, reported for every selection
    clean = curves[(curves["perturbation"] == "clean") & (curves["beta"] == 1.0)]["accuracy"].iloc[0]
    assert clean > 0.8
    # Switching off the top channels of every layer destroys the model (fake "sensitive" = highest indices).
    off = curves[(curves["perturbation"] == "clean") & (curves["beta"] == 0.0) & (curves["selection"] == "sensitive")]
    assert off["accuracy"].iloc[0] < clean
    # every row keeps its per-image results; its accuracy is their mean (the claims test the images)
    for row in curves.itertuples():
        assert len(row.correct_by_image) == 40 and set(row.correct_by_image) <= {"y", "n"}
        assert row.accuracy == pytest.approx(row.correct_by_image.count("y") / 40)
    # the summary counts, per image, the repeats that get it right: the random cell's mean over its 2 draws
    summary = suppression_summary(curves)
    for row in summary.itertuples():
        counts = decode_counts(row.correct_count_by_image)
        assert len(counts) == 40 and counts.max() <= row.n_repeats
        assert 100 * counts.sum() / (40 * row.n_repeats) == pytest.approx(row.accuracy_pct)


def test_suppression_study_step_writes_outputs(trained_vgg_path, trained_vgg, digits_files, tmp_path):
    sens_csv = tmp_path / "sens.csv"
    fake_sensitivity(trained_vgg).to_csv(sens_csv, index=False)
    out = {k: tmp_path / f"{k}" for k in ("curves.csv", "summary.csv", "table.md", "fig.png", "meta.json")}
    suppression_study(
        trained_vgg_path,
        digits_files["test"],
        sens_csv,
        {"fgsm": {"type": "fgsm", "eps": 8}, "noise": gaussian_noise(0.1)},
        out["curves.csv"],
        out["summary.csv"],
        out["table.md"],
        out["fig.png"],
        out["meta.json"],
        betas=(1.0, 0.8),
        n_random=2,
        n_images=30,
        seed=1,
        batch_size=30,
        panel_dir=tmp_path / "panels",
    )
    summary = pd.read_csv(out["summary.csv"])
    assert set(summary["perturbation"]) == {"clean", "fgsm", "noise"}
    assert summary[(summary["selection"] == "random") & (summary["beta"] == 0.8)]["n_repeats"].eq(2).all()
    md = out["table.md"].read_text()
    assert "clean sensitive" in md and "FGSM eps=8/255" in md
    assert out["fig.png"].stat().st_size > 1000 and (tmp_path / "panels" / "noise.png").exists()
    meta = json.loads(out["meta.json"].read_text())
    assert meta["n_images_used"] == 30 and meta["suppressed_channels"]["relu13"] == [31, 30, 29, 28]
    with pytest.raises(ValueError, match="betas must lie"):
        suppression_study(trained_vgg_path, digits_files["test"], sens_csv, {}, *out.values(), betas=(1.2,))
    with pytest.raises(ValueError, match="nope"):
        suppression_study(
            trained_vgg_path, digits_files["test"], sens_csv, {"x": {"type": "nope", "eps": 1}}, *out.values()
        )
