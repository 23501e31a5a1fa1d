"""Propagation-sensitive neurons: CROWN terms against independent answers, score formula, steps."""

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny_model, with_bn_stats
from torch import nn

from advneurons.models.architectures import BasicBlock
from advneurons.psn.scores import (
    PSNBounder,
    layer_activations,
    psn_score,
    score_table,
    scored_layers,
    top_units_table,
    zscore,
)
from advneurons.psn import analysis as pa

EPS_TINY = 1e-6  # every ReLU stable, no max-pool tie: CROWN coefficients = Jacobian


# --------------------------------------------------------------------------------- tiny networks
class TinyVGG(nn.Module):
    """conv-BN-ReLU-maxpool x2, a hidden linear layer with ReLU, a linear head; 3x16x16 input."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(4), relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 6, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(6), relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
        ))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.features((x - self.mean) / self.std)
        return self.fc(self.relu3(self.fc1(self.flatten(x))))

    def relus(self):
        return OrderedDict(relu1=self.features.relu1, relu2=self.features.relu2, relu3=self.relu3)


class TinyResNet(nn.Module):
    """Stem conv-BN-ReLU, an identity-shortcut block, a projection-shortcut block, avgpool, linear."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(4, 4, 1))
        self.layer2 = nn.Sequential(BasicBlock(4, 6, 2))
        self.avgpool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1((x - self.mean) / self.std)))
        return self.fc(self.flatten(self.avgpool(self.layer2(self.layer1(out)))))

    def blocks(self):
        yield "l1b1", self.layer1[0]
        yield "l2b1", self.layer2[0]

    def relus(self):
        named = OrderedDict(relu1=self.relu1)
        for prefix, block in self.blocks():
            named[f"{prefix}r1"] = block.relu1
            named[f"{prefix}r2"] = block.relu2
        return named


def _with_bn_stats(model, seed=0):
    # 8x8 noise upscaled to 32x32, so the statistics come from smooth images
    return with_bn_stats(
        model,
        lambda gen: torch.rand(8, 3, 8, 8, generator=gen).repeat_interleave(2, 2).repeat_interleave(2, 3),
        seed,
    )


def _net(kind):
    torch.manual_seed(1)
    return _with_bn_stats(TinyVGG() if kind == "vgg" else TinyResNet())


@pytest.fixture(scope="module")
def nets():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    return {kind: _net(kind) for kind in ("vgg", "resnet")}, x


@pytest.fixture(scope="module")
def bounders(nets):
    models, x = nets
    return {(k, m): PSNBounder(models[k], x, m, 256) for k in models for m in ("CROWN", "CROWN-IBP")}


@pytest.fixture(scope="module")
def all_node_bounders(nets):
    models, x = nets
    return {(k, m): PSNBounder(models[k], x, m, 256, scored_layers(models[k], "all"))
            for k in models for m in ("CROWN", "CROWN-IBP")}


# ------------------------------------------------------------------------------- independent answers
def _jacobian_terms(model, x, name, layers):
    """before = 2 ||d a_i / d z||, z = (x - mean) / std the normalised input the reference bounds;
    after = 2 ||d logits / d a_i|| (norm over logits, all paths from a_i to the logits), by autograd."""
    from advneurons.psn.graph import ActivationRecorder

    def unit_fn(z):
        with ActivationRecorder(model, layers) as rec:
            model(z * model.std + model.mean)  # the pixel image whose normalisation is z
        return rec.values[name].reshape(-1)

    z = (x - model.mean) / model.std
    jac_in = torch.autograd.functional.jacobian(unit_fn, z).reshape(-1, x.numel())  # (units, input)
    with torch.enable_grad(), ActivationRecorder(model, layers) as rec:
        logits = model(x)
        act = rec.values[name]
        rows = [torch.autograd.grad(logits[0, k], act, retain_graph=True)[0].reshape(-1) for k in range(10)]
    jac_out = torch.stack(rows)  # (logits, units)
    return 2 * jac_in.norm(dim=1), 2 * jac_out.norm(dim=0)


@pytest.mark.parametrize("nodes", ["relu_inputs", "all"])
@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("method", ["CROWN", "CROWN-IBP"])
def test_terms_equal_jacobian_norms_when_every_relu_is_stable(nets, bounders, all_node_bounders, kind, method, nodes):
    models, x = nets
    model = models[kind]
    bounder = (bounders if nodes == "relu_inputs" else all_node_bounders)[(kind, method)]
    terms = bounder.terms(x, EPS_TINY)
    layers = scored_layers(model, nodes)
    assert list(terms) == list(layers)
    acts = layer_activations(model, x, layers)
    for name, t in terms.items():
        # precondition of the independent answer: every unit's sign is fixed over the ball (checked on the
        # nodes ReLUs read; ReLU outputs and the poolings of them are >= 0 by construction)
        if layers[name].kind not in ("relu", "pool", "flatten"):
            assert ((t.lower > 0) | (t.upper < 0)).all(), name
        before, after = _jacobian_terms(model, x, name, layers)
        torch.testing.assert_close(t.before.reshape(-1), before, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(t.after.reshape(-1), after, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(t.lower, acts[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("method", ["CROWN", "CROWN-IBP"])
def test_unit_bounds_contain_activations_over_the_ball(nets, bounders, kind, method):
    models, x = nets
    model, bounder = models[kind], bounders[(kind, method)]
    eps = 8 / 255
    terms = bounder.terms(x, eps)
    gen = torch.Generator().manual_seed(7)
    corners = x + eps * (2 * torch.randint(0, 2, (64, *x.shape[1:]), generator=gen) - 1)
    inside = x + eps * (2 * torch.rand(64, *x.shape[1:], generator=gen) - 1)
    points = torch.cat([x, corners, inside]).clamp(0, 1)
    acts = layer_activations(model, points, scored_layers(model))
    unstable = 0
    for name, t in terms.items():
        assert (acts[name] >= t.lower - 1e-4).all(), name
        assert (acts[name] <= t.upper + 1e-4).all(), name
        unstable += int(((t.lower < 0) & (t.upper > 0)).sum())
        assert (t.before > 0).all() and (t.after >= 0).all()
    assert unstable > 0  # the ball is large enough for relaxations to matter


def test_crown_and_crown_ibp_agree_where_only_linear_layers_precede(nets, bounders):
    models, x = nets
    crown = bounders[("vgg", "CROWN")].terms(x, 8 / 255)
    ibp = bounders[("vgg", "CROWN-IBP")].terms(x, 8 / 255)
    torch.testing.assert_close(crown["conv1.bn"].before, ibp["conv1.bn"].before)  # no ReLU before conv1
    # behind unstable ReLUs CROWN's tighter intermediate bounds give tighter unit bounds
    width_crown = crown["fc1"].upper - crown["fc1"].lower
    width_ibp = ibp["fc1"].upper - ibp["fc1"].lower
    assert (width_crown <= width_ibp + 1e-5).all() and width_crown.mean() < width_ibp.mean()


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_chunked_backward_equals_single_pass(nets, bounders, kind):
    models, x = nets
    full = bounders[(kind, "CROWN")].terms(x, 8 / 255)
    small = PSNBounder(models[kind], x, "CROWN", mem_budget_mb=10)
    rows = {n: small.rows_per_chunk(node, 1) for n, node in small.node_of.items()}
    assert rows["conv1.bn"] < full["conv1.bn"].before[0].numel() / 3  # several chunks really are used
    if kind == "vgg":  # a hidden linear layer's units in chunks too (one-hot specifications)
        fc_node = small.node_of["fc1"]
        budget = small.rows_per_chunk
        small.rows_per_chunk = lambda node, batch: 5 if node == fc_node else budget(node, batch)
    chunked = small.terms(x, 8 / 255)
    for name in full:
        for field in ("before", "after", "lower", "upper"):
            torch.testing.assert_close(getattr(chunked[name], field), getattr(full[name], field), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- naming
def test_scored_layers_of_the_papers_models():
    vgg = scored_layers(tiny_model("vgg16"))
    assert list(vgg) == [f"conv{i}.bn" for i in range(1, 14)]
    assert [l.block for l in vgg.values()] == ["B1"] * 2 + ["B2"] * 2 + ["B3"] * 3 + ["B4"] * 3 + ["B5"] * 3
    assert vgg["conv7.bn"].conv == "conv7" and vgg["conv7.bn"].kind == "bn"
    res = scored_layers(tiny_model("resnet18"))
    expected = ["conv1.bn"] + [f"l{s}b{b}{k}" for s in range(1, 5) for b in (1, 2) for k in ("c1.bn", "add")]
    assert list(res) == expected
    assert res["l3b2add"].block == "layer3" and res["l3b2add"].conv == "l3b2c2" and res["conv1.bn"].block == "stem"
    # the all-node set extends the same names; the ReLU inputs are a subset of it
    every = scored_layers(tiny_model("resnet18"), "all")
    assert set(res) < set(every)
    assert list(every)[:3] == ["conv1", "conv1.bn", "conv1.relu"] and list(every)[-2:] == ["avgpool", "flatten"]
    assert [n for n in every if n.startswith("l2b1")] == [
        "l2b1c1", "l2b1c1.bn", "l2b1c1.relu", "l2b1c2", "l2b1c2.bn", "l2b1sc", "l2b1sc.bn", "l2b1add", "l2b1add.relu"]
    vgg_all = scored_layers(tiny_model("vgg16"), "all")
    assert list(vgg_all)[:7] == ["conv1", "conv1.bn", "conv1.relu", "conv2", "conv2.bn", "conv2.relu", "pool1"]
    assert list(vgg_all)[-2:] == ["pool5", "flatten"] and len(vgg_all) == 13 * 3 + 5 + 1


def test_tiny_nets_naming_and_node_matching(bounders, all_node_bounders):
    b = bounders[("vgg", "CROWN")]
    assert list(b.node_of) == ["conv1.bn", "conv2.bn", "fc1"]
    assert [l.block for l in b.layers.values()] == ["B1", "B2", "FC"]
    r = bounders[("resnet", "CROWN")]
    assert list(r.node_of) == ["conv1.bn", "l1b1c1.bn", "l1b1add", "l2b1c1.bn", "l2b1add"]
    assert len(set(r.node_of.values())) == 5
    a = all_node_bounders[("vgg", "CROWN")]
    assert list(a.node_of) == ["conv1", "conv1.bn", "conv1.relu", "pool1", "conv2", "conv2.bn", "conv2.relu",
                               "pool2", "flatten", "fc1", "fc1.relu"]


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_all_nodes_are_the_graph_nodes_between_normalised_input_and_logits(nets, all_node_bounders, kind):
    """Independent of the bounder's own matching: every auto_LiRPA node that is neither a parameter /
    buffer / input, nor part of the normalisation (the Sub and Div on the input), nor the logits."""
    models, x = nets
    b = all_node_bounders[(kind, "CROWN")]
    ops = b.lirpa.bound_ops
    roots = set(b.bm.root_name)
    normalisation = {n.name for n in b.bm._modules.values()
                     if isinstance(n, (ops.BoundSub, ops.BoundDiv)) and n.inputs[0].name in roots}
    normalisation |= {n.name for n in b.bm._modules.values()
                      if isinstance(n, ops.BoundDiv) and any(i.name in normalisation for i in n.inputs)}
    graph = {n.name for n in b.bm._modules.values()
             if n.name not in roots and n.name not in normalisation and n.name != b.output_name}
    assert len(normalisation) == 2
    assert set(b.node_of.values()) == graph
    acts = layer_activations(models[kind], x, b.layers)
    for name, node in b.node_of.items():  # each with its unit count
        assert tuple(b.bm[node].output_shape[1:]) == tuple(acts[name].shape[1:]), name


@pytest.mark.parametrize("kind", ["vgg", "resnet"])
@pytest.mark.parametrize("method", ["CROWN", "CROWN-IBP"])
def test_shared_passes_equal_passes_of_their_own(nets, all_node_bounders, kind, method):
    """Conv outputs from their BatchNorm's pass, ReLU outputs from their input's, flatten from its input's:
    equal to a backward pass from the node itself, at an eps with unstable ReLUs."""
    models, x = nets
    b = all_node_bounders[(kind, method)]
    plan = b.derivation_plan()
    assert {r for r, _ in plan.values()} == {"bn", "relu", "flatten"}
    shared, own = b.terms(x, 8 / 255), b.terms(x, 8 / 255, share=False)
    unstable = 0
    for name in shared:
        for field in ("before", "before_lower", "before_upper", "after", "lower", "upper"):
            torch.testing.assert_close(getattr(shared[name], field), getattr(own[name], field), rtol=1e-4, atol=1e-5)
        if b.layers[name].relu_input:
            unstable += int(((own[name].lower < 0) & (own[name].upper > 0)).sum())
    assert unstable > 0


def test_after_term_of_a_node_with_several_consumers_covers_all_of_them(nets, all_node_bounders):
    """The stem ReLU output feeds the identity shortcut and the block's first conv; the first block's
    output feeds the projection shortcut and the next conv. The after term is the Jacobian's (both
    branches), not one consumer's."""
    models, x = nets
    model, b = models["resnet"], all_node_bounders[("resnet", "CROWN")]
    consumers = {name: len(b._consumers[node]) for name, node in b.node_of.items()}
    assert consumers["conv1.relu"] == 2 and consumers["l1b1add.relu"] == 2
    terms = b.terms(x, EPS_TINY)
    for name in ("conv1.relu", "l1b1add.relu"):
        _, after = _jacobian_terms(model, x, name, b.layers)
        torch.testing.assert_close(terms[name].after.reshape(-1), after, rtol=1e-4, atol=1e-6)
        # a single branch (here: the shortcut alone, the reference's first consumer may be either) is less
        assert terms[name].after.sum() > 0


def test_bounder_rejects_bad_arguments(nets):
    models, x = nets
    with pytest.raises(ValueError, match="bound method"):
        PSNBounder(models["vgg"], x, "alpha-CROWN")
    with pytest.raises(ValueError, match="memory budget"):
        PSNBounder(models["vgg"], x, "CROWN", mem_budget_mb=0)


# ----------------------------------------------------------------------------------- formula
def test_zscore_and_score_on_hand_values():
    # the reference's z: (v - mean) / (unbiased std + 1e-9); [1, 2, 3] has unbiased std 1
    np.testing.assert_allclose(zscore([1.0, 2.0, 3.0]), [-1 / (1 + 1e-9), 0.0, 1 / (1 + 1e-9)])
    np.testing.assert_array_equal(zscore([2.0, 2.0]), [0.0, 0.0])
    np.testing.assert_array_equal(zscore([5.0]), [0.0])  # one entry: no spread
    torch_z = lambda v: ((v - v.mean()) / (v.std() + 1e-9)).numpy()  # noqa: E731 -- the reference's line
    v = torch.tensor([0.3, 1.7, 2.2, 0.9, 4.1], dtype=torch.float64)
    np.testing.assert_allclose(zscore(v.numpy()), torch_z(v), rtol=1e-12)
    before = np.array([1.0, 2.0, 3.0, 2.0])
    after = np.array([1.0, 2.0, 3.0, 2.0])
    # unbiased std sqrt(2/3): z = [-sqrt(3/2), 0, sqrt(3/2), 0], products [1.5, 0, 1.5, 0]
    s = psn_score(before, after)
    np.testing.assert_allclose(s, np.sqrt([1.5 + 1e-9, 1e-9, 1.5 + 1e-9, 1e-9]), rtol=1e-7)
    # faithful formula: both z negative scores as high as both positive; "positive" does not
    assert s[0] == pytest.approx(s[2])
    np.testing.assert_allclose(psn_score(before, after, "positive"), np.sqrt([1e-9, 1e-9, 1.5 + 1e-9, 1e-9]), rtol=1e-7)
    # opposite signs: floor
    np.testing.assert_allclose(psn_score([1.0, 3.0], [3.0, 1.0]), np.sqrt([1e-9, 1e-9]))
    with pytest.raises(ValueError):
        psn_score([1.0], [1.0], "bogus")
    with pytest.raises(ValueError, match="population"):
        psn_score([1.0], [1.0], population="bogus")


def _layer(name="conv1.bn"):
    from advneurons.psn.scores import ScoredLayer

    return OrderedDict([(name, ScoredLayer(name, "bn", "B1", "conv1", None))])


def test_score_table_z_scores_over_all_entries_then_averages():
    from advneurons.psn.scores import LayerTerms

    before = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 2.0]]]])  # 2 images, (1, 1, 2)
    after = before.clone()
    t = LayerTerms(before, after, before, before)
    table = score_table(OrderedDict([("conv1.bn", t)]), _layer(), population="all")
    # entries 1,2,3,2 -> z -sqrt1.5,0,sqrt1.5,0 -> scores per image; unit (0,0,0): mean(sqrt1.5, sqrt1.5)
    assert list(table["w"]) == [0, 1] and list(table["kind"]) == ["bn", "bn"]
    np.testing.assert_allclose(table["score"], [np.sqrt(1.5 + 1e-9), np.sqrt(1e-9)], rtol=1e-7)
    np.testing.assert_allclose(table["before"], [2.0, 2.0])


def test_per_image_z_scores_equal_scoring_images_one_at_a_time_and_averaging():
    from advneurons.psn.scores import LayerTerms

    gen = torch.Generator().manual_seed(4)
    before = torch.rand(5, 3, 4, 4, generator=gen, dtype=torch.float64) * torch.arange(1, 6).view(5, 1, 1, 1)
    after = torch.rand(5, 3, 4, 4, generator=gen, dtype=torch.float64) ** 2
    whole = score_table(OrderedDict([("conv1.bn", LayerTerms(before, after, before, before))]), _layer())
    singles = [score_table(OrderedDict([("conv1.bn", LayerTerms(before[i:i + 1], after[i:i + 1], before, before))]),
                           _layer())["score"].to_numpy() for i in range(5)]
    np.testing.assert_allclose(whole["score"], np.mean(singles, axis=0), rtol=1e-12)
    pooled = score_table(OrderedDict([("conv1.bn", LayerTerms(before, after, before, before))]), _layer(), population="all")
    assert not np.allclose(pooled["score"], whole["score"])  # the image scale differs: populations matter
    one = OrderedDict([("conv1.bn", LayerTerms(before[:1], after[:1], before, before))])
    np.testing.assert_allclose(score_table(one, _layer())["score"], score_table(one, _layer(), population="all")["score"])


def test_top_units_table_ranks_and_breaks_ties():
    scores = pd.DataFrame({
        "layer": ["a"] * 4 + ["b"] * 2, "depth": [0] * 4 + [1] * 2, "block": "B1", "conv": "",
        "channel": [0, 0, 1, 1, 0, 1], "h": [0, 1, 0, 1, 0, 0], "w": 0,
        "score": [0.5, 2.0, 2.0, 1.0, 0.1, 0.3],
    })
    top = top_units_table(scores, 50)
    assert list(zip(top["layer"], top["channel"], top["h"], top["rank"])) == [("a", 0, 1, 1), ("a", 1, 0, 2), ("b", 1, 0, 1)]
    assert list(top_units_table(scores, 1)["rank"]) == [1, 1]  # at least one per layer
    assert list(top_units_table(scores, 60)["rank"]) == [1, 2, 1]  # floor(4 * 0.6) = 2, floor(2 * 0.6) = 1
    with pytest.raises(ValueError):
        top_units_table(scores, 0)


def test_scores_and_top_sets_equal_the_reference_pipeline_on_the_same_terms(nets, all_node_bounders):
    """The reference's steps, restated in torch: per image, z = (v - mean) / (std + 1e-9) over the node's
    units, score = sqrt(clamp(z_b * z_a, 0) + 1e-9); scores stacked over images and averaged; the top
    int(N * p) units by descending score."""
    from advneurons.psn.scores import compute_terms

    models, _ = nets
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    b = all_node_bounders[("resnet", "CROWN")]
    terms = compute_terms(b, images, 8 / 255, progress=False)
    ours = score_table(terms, b.layers)
    top = top_units_table(ours, 1)
    compared = 0
    for name, t in terms.items():
        per_image = []
        for i in range(len(images)):
            zb = (t.before[i].flatten() - t.before[i].mean()) / (t.before[i].flatten().std() + 1e-9)
            za = (t.after[i].flatten() - t.after[i].mean()) / (t.after[i].flatten().std() + 1e-9)
            per_image.append(torch.sqrt(torch.clamp(zb * za, min=0.0) + 1e-9))
        ref = torch.stack(per_image).mean(0)
        mine = ours[ours.layer == name]
        np.testing.assert_allclose(mine["score"].to_numpy(), ref.double().numpy(), rtol=1e-4, atol=1e-6)
        k = max(1, int(len(ref) * 0.01))
        ref_top = set(torch.sort(ref, descending=True, stable=True).indices[:k].tolist())
        picked = top[top.layer == name]
        shape = t.before.shape[1:]
        flat = np.ravel_multi_index((picked.channel, picked.h, picked.w), shape) if len(shape) == 3 else picked.channel
        ordered = torch.sort(ref, descending=True).values
        if k == len(ref) or ordered[k - 1] - ordered[k] > 1e-4:  # no tie at the cut: the sets agree exactly
            assert set(np.asarray(flat).tolist()) == ref_top, name
            compared += 1
    assert compared >= len(terms) // 2


def test_top_count_is_the_references_floor():
    from advneurons.psn.scores import top_count

    # the reference: max(1, int(N * p)); e.g. VGG conv11 at width 1/8 has 64 x 2 x 2 = 256 units: 2 at 1%
    for n, percent in [(256, 1), (50, 1), (1000, 0.1), (2900, 1), (2048, 0.1), (65536, 1), (29, 100), (7, 10)]:
        assert top_count(n, percent) == max(1, int(n * (percent / 100))), (n, percent)
    assert top_count(256, 1) == 2 and top_count(50, 1) == 1 and top_count(2048, 0.1) == 2


# ----------------------------------------------------------------------------------- analyses
def test_random_units_avoid_chosen_and_are_seeded():
    shapes = OrderedDict(a=(2, 2, 2))
    chosen = OrderedDict(a=np.array([0, 3]))
    r1 = pa.random_units(chosen, shapes, 5)
    assert len(r1["a"]) == 2 and not set(r1["a"]) & {0, 3}
    np.testing.assert_array_equal(r1["a"], pa.random_units(chosen, shapes, 5)["a"])


def test_mean_abs_deviation_and_tables_by_hand(nets):
    models, _ = nets
    model = models["vgg"]
    layers = scored_layers(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=gen)
    xp = (x + 0.05).clamp(0, 1)
    dev = pa.mean_abs_deviation(model, x, xp, layers, batch_size=2)
    a, b = layer_activations(model, x, layers), layer_activations(model, xp, layers)
    for name in layers:
        expected = (a[name] - b[name]).abs().flatten(1).mean(0).double()
        torch.testing.assert_close(dev[name], expected)
    chosen = OrderedDict([("conv1.bn", np.array([0, 1])), ("fc1", np.array([2]))])
    base = OrderedDict([("conv1.bn", np.array([5, 6])), ("fc1", np.array([4]))])
    per_layer, per_block = pa.deviation_tables(layers, chosen, base, {"noise": dev})
    row = per_layer[(per_layer.layer == "conv1.bn") & (per_layer.group == "psn")].iloc[0]
    assert row["deviation"] == pytest.approx(float(dev["conv1.bn"][[0, 1]].mean()))
    assert set(per_block["block"]) == {"B1", "FC"}


def test_noise_on_units_changes_accuracy_only_when_units_are_chosen(nets):
    models, _ = nets
    model = models["vgg"]
    layers = scored_layers(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 16, 16, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    none = OrderedDict((n, np.array([], dtype=np.int64)) for n in layers)
    assert pa.noisy_accuracy(model, layers, none, x, y, 0.8, torch.Generator().manual_seed(1)) == 1.0
    everything = OrderedDict((n, np.arange(4 * 16 * 16 if n == "conv1.bn" else 1)) for n in layers)
    assert pa.noisy_accuracy(model, layers, everything, x, y, 50.0, torch.Generator().manual_seed(1)) < 1.0
    # nodes read at a module's output (conv, ReLU output) are edited too, with either node set
    every = scored_layers(model, "all")
    relu_out = OrderedDict([("conv1.relu", np.arange(4 * 16 * 16))])
    assert pa.noisy_accuracy(model, every, relu_out, x, y, 50.0, torch.Generator().manual_seed(1)) < 1.0


def test_unit_gradcam_matches_its_definition(nets):
    models, _ = nets
    model = models["vgg"]
    layers = scored_layers(model)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cam = pa.unit_gradcam(model, layers["conv2.bn"], "conv2.bn", layers, x, (1, 2, 3))
    assert cam.shape == (2, 16, 16)
    # independent: the feature map is conv2's input (pool1 output), the target a[:, 1, 2, 3]
    f = model.features
    with torch.enable_grad():
        fmap = f.pool1(f.relu1(f.bn1(f.conv1((x - model.mean) / model.std)))).detach().requires_grad_(True)
        target = f.bn2(f.conv2(fmap))[:, 1, 2, 3].sum()
        (grad,) = torch.autograd.grad(target, fmap)
    raw = torch.relu((grad.mean((2, 3), keepdim=True) * fmap.detach()).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(raw, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    torch.testing.assert_close(cam, (up - lo) / (hi - lo))
    assert cam.amin() == 0 and cam.amax() == 1


def test_agreement_table_by_hand():
    scores = pd.DataFrame({
        "layer": ["conv1.bn"] * 6, "depth": 0, "block": "B1", "conv": "conv1",
        "channel": [0, 0, 1, 1, 2, 2], "h": [0, 1] * 3, "w": 0, "score": [1.0, 1.0, 3.0, 3.0, 2.0, 2.0],
    })
    sens = pd.DataFrame({"layer": "conv1", "depth": 0, "channel": [0, 1, 2], "sensitivity": [0.1, 0.2, 0.3]})
    table = pa.agreement_table(scores, sens, 34)  # k = ceil(3 * 0.34) = 2
    row = table.iloc[0]
    assert row["spearman"] == pytest.approx(0.5)
    # top-2 PSN channels {1, 2}, top-2 sensitivity {2, 1}
    assert row["k"] == 2 and row["jaccard"] == pytest.approx(1.0)
    assert pa.agreement_table(scores, sens, 1)["jaccard"].iloc[0] == pytest.approx(0.0)  # {1} vs {2}


# ----------------------------------------------------------------------------------- steps (files)
@pytest.fixture
def tiny_files(tmp_path, monkeypatch, nets):
    """A test split file and a load_model that returns the tiny VGG for any path."""
    from advneurons.psn import analysis, scores

    models, _ = nets
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(12, 3, 16, 16, generator=gen) * 255).to(torch.uint8).numpy()
    labels = np.arange(12) % 10
    # Split insists on 32x32 images; the tiny net takes 16x16, so bypass the check for this file.
    path = tmp_path / "test.npz"
    np.savez(path, images=images, labels=labels)
    for step_module in (scores, analysis):  # where the steps look the loader up
        monkeypatch.setattr(step_module, "load_model", lambda p: (models["vgg"], {"arch": "tiny"}))
    import advneurons.data as data

    monkeypatch.setattr(data, "read_split", lambda p: _RawSplit(np.load(p)))
    return tmp_path, path


class _RawSplit:
    def __init__(self, f):
        self.images, self.labels = f["images"], f["labels"].astype(np.int64)


def test_step_functions_write_their_files(tiny_files):
    from advneurons.psn.scores import psn_scores, read_scores, psn_top_units

    tmp, test = tiny_files
    table = psn_scores("model.pt", test, 2, 8, "CROWN-IBP", 64, 0, tmp / "s.csv.gz", tmp / "s.json")
    back = read_scores(tmp / "s.csv.gz")
    assert len(back) == len(table) == 4 * 16 * 16 + 6 * 8 * 8 + 12
    assert list(back["layer"].unique()) == ["conv1.bn", "conv2.bn", "fc1"]
    top = psn_top_units(tmp / "s.csv.gz", [1, 10], tmp / "top.csv")
    assert set(top["percent"]) == {1.0, 10.0}
    dev = pa.psn_deviation("model.pt", test, tmp / "top.csv", 10, 4, 0, tmp / "dl.csv", tmp / "db.csv",
                                  tmp / "d.png", tmp / "d.json", pgd_steps=2)
    assert set(dev["group"]) == {"psn", "random"} and (tmp / "d.png").stat().st_size > 0
    att = pa.psn_attack("model.pt", test, tmp / "s.csv.gz", None, 0, tmp / "a.csv", tmp / "a.md", tmp / "a.png",
                         tmp / "a.json", ratios=(1, 30))
    assert len(att) == 4 and (tmp / "a.md").read_text().count("\n") == 6  # title, blank line, 4 table lines
    assert "<table>" in (tmp / "a.html").read_text() and (tmp / "a.pdf").exists()
    pa.psn_heatmaps("model.pt", test, tmp / "s.csv.gz", ["conv2.bn"], [tmp / "f.png"], tmp / "f.json",
                      n_units=1, n_top=2, pgd_steps=2)
    assert (tmp / "f.png").stat().st_size > 0
    sens = pd.DataFrame({"layer": ["conv1"] * 4 + ["conv2"] * 6, "depth": [0] * 4 + [1] * 6,
                         "channel": list(range(4)) + list(range(6)), "sensitivity": np.arange(10.0)})
    sens.to_csv(tmp / "sens.csv", index=False)
    agree = pa.psn_agreement(tmp / "s.csv.gz", tmp / "sens.csv", 50, tmp / "m.csv", tmp / "m.md", tmp / "m.png")
    assert list(agree["conv"]) == ["conv1", "conv2"]
    with pytest.raises(ValueError, match="bound method"):
        psn_scores("model.pt", test, 2, 8, "IBP", 64, 0, tmp / "x.csv", tmp / "x.json")
    with pytest.raises(ValueError, match="node set"):
        psn_scores("model.pt", test, 2, 8, "CROWN", 64, 0, tmp / "x.csv", tmp / "x.json", nodes="relus")


def test_every_analysis_runs_on_an_all_node_score_table(tiny_files):
    from advneurons.psn.scores import psn_scores, psn_top_units

    tmp, test = tiny_files
    table = psn_scores("model.pt", test, 1, 8, "CROWN", 64, 0, tmp / "s.csv.gz", tmp / "s.json", nodes="all")
    assert list(table["layer"].unique()) == ["conv1", "conv1.bn", "conv1.relu", "pool1", "conv2", "conv2.bn",
                                             "conv2.relu", "pool2", "flatten", "fc1", "fc1.relu"]
    meta = __import__("json").loads((tmp / "s.json").read_text())
    assert meta["bound_device"] == "cpu" and meta["params"]["nodes"] == "all"
    psn_top_units(tmp / "s.csv.gz", [10], tmp / "top.csv")
    dev = pa.psn_deviation("model.pt", test, tmp / "top.csv", 10, 4, 0, tmp / "dl.csv", tmp / "db.csv",
                                  tmp / "d.png", tmp / "d.json", pgd_steps=2)
    assert set(dev["layer"]) == set(table["layer"])
    att = pa.psn_attack("model.pt", test, tmp / "s.csv.gz", None, 0, tmp / "a.csv", tmp / "a.md", tmp / "a.png",
                         tmp / "a.json", ratios=(30,))
    assert len(att) == 2
    pa.psn_heatmaps("model.pt", test, tmp / "s.csv.gz", ["conv2.relu", "pool1"], [tmp / "f.png", tmp / "g.png"],
                      tmp / "f.json", n_units=1, n_top=2, pgd_steps=2)
    sens = pd.DataFrame({"layer": ["conv1"] * 4 + ["conv2"] * 6, "depth": [0] * 4 + [1] * 6,
                         "channel": list(range(4)) + list(range(6)), "sensitivity": np.arange(10.0)})
    sens.to_csv(tmp / "sens.csv", index=False)
    agree = pa.psn_agreement(tmp / "s.csv.gz", tmp / "sens.csv", 50, tmp / "m.csv", tmp / "m.md", tmp / "m.png")
    assert list(agree["layer"]) == ["conv1", "conv1.bn", "conv1.relu", "conv2", "conv2.bn", "conv2.relu"]


def test_the_bounder_runs_on_the_device_the_job_sees(nets, monkeypatch):
    """CUDA when the job sees a GPU: the device comes from runtime.device(); on this CPU machine the same
    code runs with that device, and every tensor the bounder returns is on the CPU."""
    from advneurons.psn import scores

    models, x = nets
    asked = []
    monkeypatch.setattr(scores, "default_device", lambda: asked.append(1) or torch.device("cpu"))
    b = PSNBounder(models["resnet"], x, "CROWN", 64, scored_layers(models["resnet"], "all"))
    assert asked and b.device == torch.device("cpu")
    assert all(p.device == b.device for p in b.bm.parameters())
    terms = b.terms(x, 8 / 255)
    assert all(getattr(t, f).device.type == "cpu" for t in terms.values() for f in ("before", "after", "lower"))


def test_lowest_scoring_units_break_floor_ties_by_the_terms():
    floor = np.sqrt(1e-9)
    scores = pd.DataFrame({
        "layer": "conv1.bn", "depth": 0, "block": "B1", "conv": "conv1", "channel": [0, 1, 2, 3, 4], "h": 0, "w": 0,
        "score": [floor, floor, floor, 2.0, 1.0], "before": [1.0, 3.0, 2.0, 5.0, 1.0],
        "after": [0.5, 0.1, 0.1, 4.0, 1.0],
    })
    high, low = pa.extreme_units(scores, "conv1.bn", 2)
    assert list(high.channel) == [3, 4]
    # three units tie at the floor: the least propagating first (after 0.1, then before 2 < 3)
    assert list(low.channel) == [2, 1] and "_product" not in low.columns


# ------------------------------------------------------------------------------- a few late nodes
@pytest.mark.parametrize("kind", ["vgg", "resnet"])
def test_last_nodes_scores_the_last_nodes_with_their_jacobian_terms_and_sound_bounds(nets, kind):
    """psn.last_nodes (a rehearsal's count): only the last k nodes are scored, the rest bounded by IBP.
    Where every ReLU is stable the terms are still the Jacobian norms; at a larger ball the bounds stay
    sound, and they come from IBP upstream (not those of a CROWN run over every node)."""
    models, x = nets
    model = models[kind]
    layers = scored_layers(model, "all")
    k = 3
    bounder = PSNBounder(model, x, "CROWN", 256, scored_layers(model, "all"), last_nodes=k)
    assert list(bounder.node_of) == list(layers)[-k:] and list(bounder.layers) == list(layers)[-k:]
    terms = bounder.terms(x, EPS_TINY)
    assert list(terms) == list(layers)[-k:]
    for name, t in terms.items():
        before, after = _jacobian_terms(model, x, name, layers)
        torch.testing.assert_close(t.before.reshape(-1), before, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(t.after.reshape(-1), after, rtol=1e-4, atol=1e-6)

    eps = 8 / 255
    terms = bounder.terms(x, eps)
    full = PSNBounder(model, x, "CROWN", 256, scored_layers(model, "all")).terms(x, eps)
    gen = torch.Generator().manual_seed(7)
    points = (x + eps * (2 * torch.rand(64, *x.shape[1:], generator=gen) - 1)).clamp(0, 1)
    acts = layer_activations(model, torch.cat([x, points]), layers)
    for name, t in terms.items():
        assert (acts[name] >= t.lower - 1e-4).all() and (acts[name] <= t.upper + 1e-4).all(), name
    assert any(not torch.allclose(terms[n].upper, full[n].upper) for n in terms)  # IBP upstream is looser


def test_last_nodes_covering_every_node_equals_scoring_every_node(nets):
    models, x = nets
    model = models["resnet"]
    n = len(scored_layers(model, "all"))
    limited = PSNBounder(model, x, "CROWN", 256, scored_layers(model, "all"), last_nodes=n).terms(x, 8 / 255)
    every = PSNBounder(model, x, "CROWN", 256, scored_layers(model, "all")).terms(x, 8 / 255)
    assert list(limited) == list(every)
    for name in every:
        assert torch.equal(limited[name].before, every[name].before), name
        assert torch.equal(limited[name].after, every[name].after), name
    with pytest.raises(ValueError, match="last_nodes"):
        PSNBounder(model, x, "CROWN", 256, last_nodes=0)
