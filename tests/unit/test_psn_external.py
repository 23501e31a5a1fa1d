"""PSN on external models: the nodes the probe finds (functional ReLUs, shared ReLU modules, residual sums read by
a ReLU module), their terms against autograd Jacobians, the errors that name what PSN or auto_LiRPA cannot handle,
and the config entry that turns PSN on for an external model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from advneurons.config import settings
from advneurons.models import external
from advneurons.psn.graph import ActivationRecorder, layer_activations, scored_layers
from advneurons.psn.scores import PSNBounder, UnsupportedModelError
from external_factory import MEAN, STD, small_cnn, write_trained_checkpoint
from tiny_models import with_bn_stats
from workflow_helpers import ROOT

EPS_TINY = 1e-6  # every ReLU stable: CROWN coefficients equal the Jacobian


class ResidualNet(nn.Module):
    """torchvision's BasicBlock pattern: one ReLU module used twice per block (after bn1 and after the sum), the
    shortcut added in place; module pooling and flatten; 3x16x16 input."""

    def __init__(self, relu_after_sum: str = "module"):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(True)
        self.b_conv1, self.b_bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b_conv2, self.b_bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b_relu = nn.ReLU(inplace=True)
        self.pool, self.flatten, self.fc = nn.AvgPool2d(16), nn.Flatten(), nn.Linear(4, 10)
        self.relu_after_sum = relu_after_sum

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        out = self.b_relu(self.b_bn1(self.b_conv1(x)))
        out = self.b_bn2(self.b_conv2(out))
        out += x
        out = self.b_relu(out) if self.relu_after_sum == "module" else F.relu(out)
        return self.fc(self.flatten(self.pool(out)))


def _external(net, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), shape=(3, 16, 16)):
    torch.manual_seed(1)
    net = with_bn_stats(net, lambda gen: torch.rand(8, *shape, generator=gen), 0).eval()
    layers = external.probe_layers(net, shape)
    return external.ExternalModel(net, {"mean": list(mean), "std": list(std)}, layers).eval()


def test_the_probe_marks_every_relu_input_functional_shared_or_after_a_sum():
    small = external.probe_layers(small_cnn(8))[""]
    relu_inputs = [n["name"] for n in small["psn_nodes"] if n["relu_input"]]
    # stem.1 feeds a ReLU module, norm_a / norm_b the shared one, plain a functional F.relu
    assert relu_inputs == ["stem.1", "norm_a", "norm_b", "plain"]
    assert "shared" not in [n["name"] for n in small["psn_nodes"]]  # run twice per pass: no node of its own
    assert "head" not in [n["name"] for n in small["psn_nodes"]]  # the logits
    assert {n["name"]: n["conv"] for n in small["psn_nodes"]}["stem.2"] == "stem.0"
    model = _external(ResidualNet())
    nodes = {n["name"]: n for n in model.psn_nodes()}
    assert [n for n, v in nodes.items() if v["relu_input"]] == ["bn1", "b_bn1", "b_relu.input1"]
    assert nodes["b_relu.input1"] == {"name": "b_relu.input1", "kind": "add", "module": "b_relu", "hook": "input",
                                      "call": 1, "conv": None, "relu_input": True}
    # b_bn2 is read by the sum, not by the ReLU: the probe sees the in-place addition
    assert not nodes["b_bn2"]["relu_input"] and model.layer_map["b_conv2"]["relu"] is None
    with pytest.raises(external.ExternalModelError, match="the sum computed after b_bn2 feeds a functional ReLU"):
        _external(ResidualNet("functional")).psn_nodes()
    with pytest.raises(external.ExternalModelError, match="PSN cannot score every ReLU input"):
        scored_layers(_external(ResidualNet("functional")))


def test_the_recorder_reads_the_right_call_and_keeps_values_in_place_ops_change_later():
    model = _external(ResidualNet())
    layers = scored_layers(model, "relu_inputs")
    x = torch.rand(2, 3, 16, 16)
    acts = layer_activations(model, x, layers)
    net = model.network
    with torch.no_grad():
        z = model.normalize(x)
        stem = net.bn1(net.conv1(z))
        h = F.relu(stem)
        bn2 = net.b_bn2(net.b_conv2(F.relu(net.b_bn1(net.b_conv1(h)))))
    torch.testing.assert_close(acts["bn1"], stem)  # not the in-place ReLU's output
    torch.testing.assert_close(acts["b_relu.input1"], bn2 + h)  # the second call of b_relu reads the sum
    # editing a node edits only that call of the shared module
    with ActivationRecorder(model, {"b_relu.input1": layers["b_relu.input1"]}, edit={
            "b_relu.input1": lambda _n, v: torch.zeros_like(v)}), torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, net.fc(torch.zeros(2, 4)).expand(2, 10))


def _jacobian_terms(model, x, name, layers):
    """before = 2 ||d a_i / d z|| (z the normalised input), after = 2 ||d logits / d a_i||, by autograd."""
    mean, std = model.normalize.mean, model.normalize.std

    def unit_fn(z):
        with ActivationRecorder(model, layers) as rec:
            model(z * std + mean)
        return rec.values[name].reshape(-1)

    jac_in = torch.autograd.functional.jacobian(unit_fn, (x - mean) / std).reshape(-1, x.numel())
    with torch.enable_grad(), ActivationRecorder(model, layers) as rec:
        logits = model(x)
        act = rec.values[name]
        rows = [torch.autograd.grad(logits[0, k], act, retain_graph=True)[0].reshape(-1) for k in range(10)]
    return 2 * jac_in.norm(dim=1), 2 * torch.stack(rows).norm(dim=0)


@pytest.mark.parametrize("net", ["residual", "small"])
def test_terms_of_an_external_model_equal_jacobian_norms_when_every_relu_is_stable(net):
    model = _external(ResidualNet()) if net == "residual" else _external(small_cnn(4), MEAN, STD, (3, 32, 32))
    shape = (1, 3, 16, 16) if net == "residual" else (1, 3, 32, 32)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    layers = scored_layers(model, "relu_inputs")
    terms = PSNBounder(model, x, "CROWN", 256, layers).terms(x, EPS_TINY)
    assert list(terms) == list(layers)
    for name, t in terms.items():
        assert ((t.lower > 0) | (t.upper < 0)).all(), name  # the precondition of the independent answer
        before, after = _jacobian_terms(model, x, name, layers)
        torch.testing.assert_close(t.before.reshape(-1), before, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(t.after.reshape(-1), after, rtol=1e-4, atol=1e-6)


def test_what_psn_cannot_bound_or_name_is_an_error_naming_the_operation():
    class OverlappingPool(nn.Module):  # torchvision's ResNet stem: auto_LiRPA 0.3 bounds no overlapping max-pool
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
            self.pool, self.fc = nn.MaxPool2d(3, 2, 1), nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))

    model = _external(OverlappingPool())
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(UnsupportedModelError, match=r"its MaxPool operation \(graph node"):
        PSNBounder(model, x, "CROWN", 256, scored_layers(model)).terms(x, 1 / 255)
    # every node: the small network's functional pooling and flatten have no module to name them by
    small = _external(small_cnn(4), MEAN, STD, (3, 32, 32))
    with pytest.raises(RuntimeError, match=r"without a scored node: .*\((MaxPool|GlobalAveragePool|Flatten|Relu)\)"):
        PSNBounder(small, torch.rand(1, 3, 32, 32), "CROWN", 256, scored_layers(small, "all"))


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    return write_trained_checkpoint(tmp_path_factory.mktemp("external") / "small.pt", epochs=1)


def _config(path, psn):
    config = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())
    config["external_models"] = {"small": {
        "source": {"factory": "external_factory:small_cnn", "kwargs": {"width": 8}, "checkpoint": str(path)},
        "normalization": {"mean": MEAN, "std": STD}, "psn": psn}}
    return config


def test_an_external_entry_turns_psn_on_with_its_own_images_node_set_and_heatmap_layers(tmp_path, small_weights,
                                                                                      monkeypatch):
    from advneurons.workflow import targets
    from advneurons.workflow.plan import Plan
    from advneurons.workflow.wiring import JobWiring

    monkeypatch.chdir(tmp_path)
    psn = {"n_images": 3, "nodes": "relu_inputs", "heatmap_layers": ["norm_b"]}
    config = settings.validate_config(_config(small_weights, psn))
    plan = Plan(config)
    (model_id,) = plan.external
    assert model_id in plan.psn_models and set(plan.analysed_of(config["psn"]["training"])) < set(plan.psn_models)
    files = [f for f in targets.psn(plan) if f"/{model_id}/" in f]
    ids = plan.psn_ids(plan.external[model_id])
    assert f"results/{plan.data_id}/psn/{model_id}/{ids['scores']}/{ids['heatmaps']}/norm_b.png" in files
    assert any(f.endswith(".png") and "agreement_" in f for f in files)
    wildcards = type("W", (), {"model": model_id})()
    score_settings = JobWiring(plan).psn_score_settings(wildcards)
    assert (score_settings["n_images"], score_settings["nodes"]) == (3, "relu_inputs")
    assert config["psn"]["nodes"] == "all"  # the run's own set stays for its built-in models
    # the scores' id hashes the entry's count and node set; the model stays the same model (same id, so nothing
    # computed on it before re-runs), as it does when its other analyses are turned on or off
    other = Plan(settings.validate_config(_config(small_weights, {**psn, "n_images": 4})))
    assert other.psn_ids(other.external[model_id])["scores"] != ids["scores"]
    assert JobWiring(other).external_settings(wildcards) == JobWiring(plan).external_settings(wildcards)
    config = _config(small_weights, psn)
    config["external_models"]["small"].update(meansparse=True, ig_defense=True)
    assert list(Plan(settings.validate_config(config)).external) == [model_id]
    # checked at parse time, naming the entry
    with pytest.raises(settings.ConfigError, match="external_models.small.*'stem.2' is not a node psn.nodes=relu_inputs"):
        settings.validate_config(_config(small_weights, {**psn, "heatmap_layers": ["stem.2"]}))
    with pytest.raises(settings.ConfigError, match="external_models.small.psn"):
        settings.validate_config(_config(small_weights, {"heatmap_layers": ["norm_b"]}))  # n_images is required
    # without psn, PSN leaves the external model alone
    config = _config(small_weights, psn)
    del config["external_models"]["small"]["psn"]
    assert model_id not in Plan(settings.validate_config(config)).psn_models
    with pytest.raises(settings.ConfigError, match="'training.external'.*reserved"):
        config = _config(small_weights, psn)
        config["training"]["external"] = config["training"]["vanilla"]
        settings.validate_config(config)


def test_suppression_scales_each_conv_layers_activation_where_a_relu_reads_it():
    from advneurons.sns.common import activation_modules, activation_names
    from advneurons.sns.suppression import scaled_channels

    model = _external(small_cnn(4), MEAN, STD, (3, 32, 32))
    # stem: its ReLU module; block_a / block_b: the BatchNorm the shared ReLU reads; plain: the conv F.relu reads
    assert activation_names(model) == {"stem.0": "stem.2", "block_a": "norm_a", "block_b": "norm_b", "plain": "plain"}
    assert activation_modules(model)["norm_a"] is model.network.norm_a
    residual = _external(ResidualNet())
    # b_conv2's output enters the sum, not a ReLU: no activation of its own to scale
    assert activation_names(residual) == {"conv1": "relu", "b_conv1": "b_bn1"}  # b_relu runs twice: shared
    # scaling the input of a ReLU by beta >= 0 is scaling its output: the suppressed model's activations are beta
    # times the unsuppressed ones in the chosen channels, exactly as after a ReLU module
    x = torch.rand(3, 3, 32, 32)
    net = model.network
    with torch.no_grad():
        z = model.normalize(x)
        stem = net.stem(z)
        want = net.shared(net.norm_a(net.block_a(stem)))
        want[:, [1, 3]] *= 0.7
        with scaled_channels(activation_modules(model), {"norm_a": [1, 3]}, 0.7):
            recorded = []
            handle = net.shared.register_forward_hook(lambda _m, _i, out: recorded.append(out.clone()))
            try:
                model(x)
            finally:
                handle.remove()
    torch.testing.assert_close(recorded[0], want)
