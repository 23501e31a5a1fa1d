"""One figure style for the package: PNG + PDF beside it, no unlabelled axes, wrapped panel grids."""

import numpy as np
import pandas as pd
import pytest
import torch

from advneurons.report import figures

plt, _ = figures.plotting()


def _labelled_line():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set_xlabel("eps (1/255)")
    ax.set_ylabel("robust accuracy (%)")
    return fig


def test_save_figure_writes_png_and_pdf_and_the_pdf_reruns_byte_identical(tmp_path):
    figures.save_figure(_labelled_line(), tmp_path / "a.png")
    png, pdf = (tmp_path / "a.png").read_bytes(), (tmp_path / "a.pdf").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and pdf[:5] == b"%PDF-"
    figures.save_figure(_labelled_line(), tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == png and (tmp_path / "a.pdf").read_bytes() == pdf
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pdf", "a.png"]  # no temporary files left
    assert plt.get_fignums() == []


def test_save_figure_refuses_an_unlabelled_axis_and_writes_nothing(tmp_path):
    fig, (left, right) = plt.subplots(1, 2)
    left.plot([0, 1], [0, 1])
    left.set_xlabel("layer")
    left.set_ylabel("ratio")
    right.plot([0, 1], [0, 1])
    right.set_title("noise")
    right.set_ylabel("ratio")
    with pytest.raises(ValueError, match=r"b\.png.*axes 1 \('noise'\): no x label"):
        figures.save_figure(fig, tmp_path / "b.png")
    assert list(tmp_path.iterdir()) == [] and plt.get_fignums() == []
    with pytest.raises(ValueError, match=r"end in \.png"):
        figures.save_figure(_labelled_line(), tmp_path / "b.svg")


def test_picture_panels_colorbars_and_shared_labels():
    fig, (picture, heat) = plt.subplots(1, 2)
    picture.imshow(np.zeros((4, 4, 3)))
    picture.axis("off")
    image = heat.imshow(np.arange(16.0).reshape(4, 4), cmap="viridis")
    heat.set_xlabel("w (pixels)")
    heat.set_ylabel("h (pixels)")
    assert figures.unlabelled_axes(fig) == ["axes 1: heatmap without a colorbar"]
    bar = fig.colorbar(image, ax=heat)
    assert figures.unlabelled_axes(fig) == ["axes 2: colorbar without a label"]
    bar.set_label("score")
    assert figures.unlabelled_axes(fig) == []
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, sharey=True)
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("beta")
    assert len(figures.unlabelled_axes(fig)) == 2
    fig.supylabel("accuracy (%)")
    assert figures.unlabelled_axes(fig) == []
    plt.close(fig)


@pytest.mark.parametrize(("n", "max_cols", "shape"), [(14, 3, (5, 3)), (14, 4, (4, 4)), (4, 3, (2, 2)), (2, 3, (1, 2))])
def test_grid_wraps_wide_rows(n, max_cols, shape):
    fig, axes = figures.grid(n, max_cols=max_cols)
    assert len(axes) == n
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    assert (grid.nrows, grid.ncols) == shape and grid.ncols <= max_cols
    assert sum(ax.get_visible() for ax in fig.axes) == n
    plt.close(fig)


# ------------------------------------------------------------------------------------- every figure
def _psn_scores(layer, shape, n_top_scores):
    idx = np.indices(shape).reshape(3, -1)
    score = np.full(idx.shape[1], np.sqrt(1e-9))  # the floor: ties everywhere below the top units
    score[:n_top_scores] = np.arange(n_top_scores, 0, -1)
    return pd.DataFrame({"layer": layer, "depth": 1, "block": "B1", "conv": "conv2", "channel": idx[0], "h": idx[1],
                         "w": idx[2], "score": score, "before": 1.0, "after": 1.0})


def _builders(tiny_vgg):
    from advneurons.defenses import ig_defense
    from advneurons.defenses import tables as defense_tables
    from advneurons.evaluation import robustness
    from advneurons.sns import layer_range as sns_layer_range
    from advneurons.sns import ratios as sns_ratios
    from advneurons.sns import similarity as sns_similarity
    from advneurons.sns import suppression as sns_suppression
    from advneurons.psn import analysis as pa
    from advneurons.psn.graph import scored_layers

    layers = ["conv1", "conv2.bn", "conv2.relu", "fc1"]
    per_layer = pd.DataFrame([
        {"layer": name, "depth": d, "perturbation": p, "group": g, "deviation": 0.1 * d + (g == "psn")}
        for d, name in enumerate(layers) for p in ("noise", "pgd") for g in ("psn", "random")
    ])
    yield "psn deviation", pa.plot_deviation(per_layer, "tiny")
    attack = pd.DataFrame([{"ratio_percent": r, "group": g, "clean_accuracy": 0.9, "accuracy": 0.9 - r / 100}
                           for r in (1, 10, 30) for g in ("psn", "random")])
    yield "psn attack", pa.attack_figure(attack, 50, "tiny")
    agreement = pd.DataFrame({"layer": ["conv1.bn", "conv2.bn"], "spearman": [0.3, -0.1], "jaccard": [0.5, 0.0]})
    yield "psn agreement", pa.agreement_figure(agreement, 10)
    nodes = scored_layers(tiny_vgg)
    scores = _psn_scores("conv2.bn", (4, 32, 32), 3)
    high, low = pa.extreme_units(scores, "conv2.bn", 1)
    units = pd.concat([high.assign(extreme="high"), low.assign(extreme="low")], ignore_index=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    yield "psn focus", pa.focus_figure(tiny_vgg, nodes, "conv2.bn", units, x, torch.arange(4), lambda a, b: a, 2)

    sweep = pd.DataFrame([{"model": m, "sweep": "eps", "eps_255": e, "steps": 10, "n_images": 100,
                           "accuracy": 0.8 - e / 40} for m in ("a", "b") for e in (2, 4, 8)])
    yield "pgd sweep", robustness.sweep_figure(sweep, "eps_255", "eps (1/255)", "PGD")

    range_table = pd.DataFrame([{"arch": "vgg16", "first_layer": f, "column": c, "accuracy_pct": 50.0,
                                 "ci_low_pct": 45.0, "ci_high_pct": 55.0} for f in ("conv8", "conv11")
                                for c in ("Clean", "PGD")])
    yield "layer range", sns_layer_range.layer_range_figure(range_table)

    means = pd.DataFrame([{"model": m, "family": fam, "level": lvl, "strength": f"eps={4 * lvl}", "layer": f"conv{i}",
                           "kind": "conv", "conv": f"conv{i}", "position": i, "ratio_all": 0.1 * i * lvl,
                           "ratio_sensitive": 0.2 * i * lvl} for m in ("vanilla", "pat") for fam in ("pgd", "noise")
                          for lvl in (1, 2) for i in range(1, 14)])
    yield "fig 13", sns_ratios.ratio_layer_figure(means, "tiny")
    yield "fig 14", sns_ratios.ratio_strength_figure(means, "pgd", ["conv1", "conv4", "conv7", "conv13"], "tiny")
    sens = pd.DataFrame([{"layer": f"conv{i}", "depth": i - 1, "channel": c, "sensitivity": float(c + i)}
                         for i in range(1, 14) for c in range(8)])
    curves = {"vanilla": sens, "pat": sens.assign(sensitivity=sens.sensitivity / 2)}
    yield "fig 10", sns_ratios.sensitivity_curves_plot(curves, ["conv1", "conv4", "conv7", "conv13"], 10, "tiny")

    per_class = pd.DataFrame({"target": range(10), "spearman": 0.3, "levenshtein_similarity": 0.2, "jaccard": 0.1})
    yield "importance", sns_similarity.importance_figure(per_class, "tiny")
    similarity = pd.DataFrame({"layer": [f"conv{i}" for i in range(1, 14)], "depth": range(13), "total_jaccard": 0.1,
                               "avg_pair_jaccard": 0.2, "avg_pair_levenshtein": 0.3})
    yield "layer similarity", sns_similarity.layer_similarity_figure(similarity, "tiny")

    rows = [{"selection": s, "repeat": r, "beta": b, "perturbation": p, "accuracy": 0.5 + 0.1 * b, "n_images": 40}
            for p in ("clean", "pgd") for b in (1.0, 0.8, 0.6)
            for s, r in [("sensitive", 0), ("random", 0), ("random", 1)]]
    suppression = pd.DataFrame(rows)
    yield "suppression", sns_suppression.suppression_figure(suppression, ["clean", "pgd"], "tiny")
    yield "suppression panel", sns_suppression.suppression_panel(suppression, "pgd")

    by_training = pd.DataFrame([{"training": t, "depth": i, "layer": f"conv{i + 1}", "sensitivity": 0.1 * (i + 1)}
                                for t in ("vanilla", "pat") for i in range(13)])
    yield "fig 17", defense_tables.sensitivity_by_training_figure(by_training, "vgg16")

    change = pd.DataFrame({"image": np.repeat(np.arange(5), 4), "group": list(ig_defense.GROUPS) * 5,
                           "relative_change": np.linspace(-0.2, 0.3, 20)})
    yield "ig defense", ig_defense.activation_change_figure(change, "vgg16-ig", "PGD")
    yield "ig defense, nothing fooled", ig_defense.activation_change_figure(change.iloc[:0], "vgg16-ig", "PGD")


def _texts(fig) -> str:
    sup = fig._suptitle.get_text() if fig._suptitle is not None else ""
    return " ".join([sup, *(ax.get_title() for ax in fig.axes), *(ax.get_title(loc="left") for ax in fig.axes)])


def test_every_figure_builder_labels_its_axes_and_states_its_bands(tiny_vgg):
    bands = {"psn attack": "Wilson 95% CI", "pgd sweep": "Wilson 95% CI", "layer range": "Wilson 95% CI",
             "suppression": "±1 SD over 2 random draws", "ig defense": "95% bootstrap CI",
             "psn deviation": "no band", "fig 13": "no band", "fig 10": "no band", "fig 17": "no band"}
    for name, fig in _builders(tiny_vgg):
        assert figures.unlabelled_axes(fig) == [], name
        assert bands.get(name, "") in _texts(fig), name
        if name == "psn focus":  # 4093 units share the floor score: the title says so and how they were chosen
            assert "lowest: 4093 of 4096 units tie at score" in _texts(fig).replace("\n", " ")
        plt.close(fig)


def test_extreme_units_count_the_ties_they_cut():
    from advneurons.psn import analysis as pa

    scores = _psn_scores("conv1.bn", (2, 2, 3), 2)  # 12 units, 10 at the floor
    high, low = pa.extreme_units(scores, "conv1.bn", 3)
    units = pd.concat([high.assign(extreme="high"), low.assign(extreme="low")], ignore_index=True)
    assert list(low[["channel", "h", "w"]].itertuples(index=False, name=None)) == [(0, 0, 2), (0, 1, 0), (0, 1, 1)]
    assert pa.selection_note(units, "low").startswith("lowest: 10 of 12 units tie at score 3.16e-05; shown: 3 of")
    # the top three reach into the floor too: 1 of the 10 tied units is shown
    assert pa.selection_note(units, "high").startswith("highest: 10 of 12 units tie at score 3.16e-05; shown: 1 of")
    assert pa.selection_note(units.assign(extreme="high").head(2), "high") == "highest: 2 of 12 units, no tie cut"
