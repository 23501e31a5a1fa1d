"""The nodes that PSN scores, their names, and forward hooks that read or edit their values.

Two node sets (``psn.nodes``):

* ``"relu_inputs"``: the input of every ReLU, the cheaper set (the bound computation needs the bounds of
  these nodes anyway).
* ``"all"``: every node of the graph between the (normalised) input and the logits, as the reference
  code scores them: conv outputs, BatchNorm outputs, ReLU outputs, pooling, flatten, residual sums,
  hidden linear layers.

Names extend the papers' layer names: ``conv3`` is the output of conv layer 3 itself, ``conv3.bn`` its
BatchNorm output, ``conv3.relu`` the ReLU output after it; ``pool2`` a max-pool, ``flatten`` the
flattened features, ``fc1`` a hidden linear layer and ``fc1.relu`` its ReLU. ResNet blocks use
``lXbY`` prefixes: ``lXbYc1`` / ``.bn`` / ``.relu``, ``lXbYc2`` / ``.bn``, the shortcut projection
``lXbYsc`` / ``.bn``, the residual sum ``lXbYadd`` and the block output ``lXbYadd.relu``; the stem is
``conv1`` / ``.bn`` / ``.relu``; the head ``avgpool`` and ``flatten``. A node keeps its name in both
sets, so a ``relu_inputs`` table is a subset of an ``all`` table (VGG16: ``conv1.bn`` ..
``conv13.bn``; ResNet18: ``conv1.bn``, ``lXbYc1.bn`` and ``lXbYadd``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from advneurons.models.hooks import hooked

NODE_SETS = ("relu_inputs", "all")
KINDS = ("conv", "bn", "relu", "pool", "flatten", "add", "linear")


@dataclass(frozen=True)
class ScoredLayer:
    """One scored node of a model.

    ``kind`` is one of :data:`KINDS`; the node's value is the output (``hook="output"``) or the input
    (``hook="input"``, the residual sums, read at the block's second ReLU) of ``module``. ``conv`` names
    the conv layer (a key of ``model.layers()``) the node belongs to, for comparison with channel-level
    sensitivity (a residual sum and the block output belong to the block's second conv), None if none;
    ``block`` groups nodes for summaries (VGG: B1..B5 by pooling stage, FC; ResNet: stem, layer1..4,
    head); ``source`` is the module whose *input* serves as the Grad-CAM feature map of the node's units
    (None where there is no spatial map); ``relu_input`` marks the nodes of the ``relu_inputs`` set; ``call``
    which call of ``module`` in a forward pass gives the node, for a module run several times (an external
    model's shared ReLU reading a residual sum), None when it runs once.
    """

    name: str
    kind: str
    block: str
    conv: str | None
    module: nn.Module | None
    hook: str = "output"
    source: nn.Module | None = None
    relu_input: bool = False
    call: int | None = None  # a module run several times per pass: which call (from 0) gives the node


def check_node_set(nodes: str) -> str:
    if nodes not in NODE_SETS:
        raise ValueError(f"unknown PSN node set {nodes!r}; choose one of {', '.join(NODE_SETS)}")
    return nodes


def _vgg_nodes(model: nn.Module) -> "list[ScoredLayer]":
    """Feature extractor ``features`` (convN, bnN, reluN, poolK), then the head's modules in order."""
    out, stage, last = [], 1, None  # last: name of the latest conv / linear layer (for its bn / relu)
    for name, module in model.features.named_children():
        if isinstance(module, nn.Conv2d):
            last = name
            out.append(ScoredLayer(name, "conv", f"B{stage}", name, module, source=module))
        elif isinstance(module, nn.BatchNorm2d):
            out.append(ScoredLayer(f"{last}.bn", "bn", f"B{stage}", last, module, source=_conv_of(model, last)))
        elif isinstance(module, nn.ReLU):
            out.append(ScoredLayer(f"{last}.relu", "relu", f"B{stage}", last, module, source=_conv_of(model, last)))
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            out.append(ScoredLayer(name, "pool", f"B{stage}", None, module, source=module))
            stage += 1
    head = [(n, m) for n, m in model.named_children() if n not in ("features", "normalize")]
    final = _final_linear(model)
    for name, module in head:
        if module is final:
            continue
        if isinstance(module, nn.Flatten):
            out.append(ScoredLayer(name, "flatten", "FC", None, module))
        elif isinstance(module, nn.Linear):
            last = name
            out.append(ScoredLayer(name, "linear", "FC", None, module))
        elif isinstance(module, nn.ReLU):
            out.append(ScoredLayer(f"{last}.relu", "relu", "FC", None, module))
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            out.append(ScoredLayer(name, "pool", "FC", None, module, source=module))
    return out


def _conv_of(model, name):
    return getattr(model.features, name) if name is not None else None


def _final_linear(model: nn.Module) -> nn.Module | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _resnet_nodes(model: nn.Module) -> "list[ScoredLayer]":
    """Stem conv1 / bn1 / relu1, the blocks of ``model.blocks()``, then avgpool and flatten."""
    out = [
        ScoredLayer("conv1", "conv", "stem", "conv1", model.conv1, source=model.conv1),
        ScoredLayer("conv1.bn", "bn", "stem", "conv1", model.bn1, source=model.conv1),
        ScoredLayer("conv1.relu", "relu", "stem", "conv1", model.relu1, source=model.conv1),
    ]
    for prefix, block in model.blocks():
        group = f"layer{prefix[1]}"
        c1, c2 = f"{prefix}c1", f"{prefix}c2"
        out += [
            ScoredLayer(c1, "conv", group, c1, block.conv1, source=block.conv1),
            ScoredLayer(f"{c1}.bn", "bn", group, c1, block.bn1, source=block.conv1),
            ScoredLayer(f"{c1}.relu", "relu", group, c1, block.relu1, source=block.conv1),
            ScoredLayer(c2, "conv", group, c2, block.conv2, source=block.conv2),
            ScoredLayer(f"{c2}.bn", "bn", group, c2, block.bn2, source=block.conv2),
        ]
        if not isinstance(block.shortcut, nn.Identity):
            sc = f"{prefix}sc"
            out += [
                ScoredLayer(sc, "conv", group, sc, block.shortcut.conv, source=block.shortcut.conv),
                ScoredLayer(f"{sc}.bn", "bn", group, sc, block.shortcut.bn, source=block.shortcut.conv),
            ]
        # The sum enters the block's second ReLU: read it there. Its feature map for Grad-CAM is the
        # block's input (both branches start there).
        out += [
            ScoredLayer(f"{prefix}add", "add", group, c2, block.relu2, hook="input", source=block.conv1),
            ScoredLayer(f"{prefix}add.relu", "relu", group, c2, block.relu2, source=block.conv1),
        ]
    out.append(ScoredLayer("avgpool", "pool", "head", None, model.avgpool, source=model.avgpool))
    out.append(ScoredLayer("flatten", "flatten", "head", None, model.flatten))
    return out


def _external_nodes(model: nn.Module) -> "list[ScoredLayer]":
    """The nodes of an external model (advneurons.models.external) as its probe found them, named by their
    qualified module names; the ReLU inputs are marked by the probe, which also sees functional ReLUs. Nodes
    group into blocks by the first part of their names (e.g. ``layer2`` for ``layer2.0.bn1``)."""
    network = model.network
    out = []
    for node in model.psn_nodes():
        conv = node["conv"]
        source = network.get_submodule(conv) if conv else (
            network.get_submodule(node["module"]) if node["kind"] == "pool" else None)
        out.append(ScoredLayer(node["name"], node["kind"], node["name"].split(".")[0], conv,
                               network.get_submodule(node["module"]), hook=node["hook"], source=source,
                               relu_input=node["relu_input"], call=node.get("call")))
    return out


def _mark_relu_inputs(nodes: "list[ScoredLayer]") -> "list[ScoredLayer]":
    """relu_input=True on the nodes a ReLU reads: ``X.bn`` when ``X.relu`` exists (conv layers), ``fc1``
    when ``fc1.relu`` exists (hidden linear layers), ``lXbYadd`` (its ReLU is ``lXbYadd.relu``)."""
    from dataclasses import replace

    names = {n.name for n in nodes}
    marked = []
    for node in nodes:
        base = node.name[: -len(".bn")] if node.kind == "bn" else node.name
        feeds_relu = node.kind in ("bn", "linear", "add") and f"{base}.relu" in names
        marked.append(replace(node, relu_input=feeds_relu))
    return marked


def scored_layers(model: nn.Module, nodes: str = "relu_inputs") -> "OrderedDict[str, ScoredLayer]":
    """The scored nodes of ``model`` in forward order (``nodes``: "relu_inputs" or "all")."""
    check_node_set(nodes)
    if hasattr(model, "psn_nodes"):  # an external model: its probe marked the ReLU inputs
        found = _external_nodes(model)
    elif isinstance(getattr(model, "features", None), nn.Sequential):
        found = _mark_relu_inputs(_vgg_nodes(model))
    elif hasattr(model, "blocks"):
        found = _mark_relu_inputs(_resnet_nodes(model))
    else:
        raise ValueError(
            f"cannot name the PSN nodes of a {type(model).__name__}: PSN knows VGG-style models (a `features` "
            "Sequential of conv / BatchNorm / ReLU / pooling modules, then flatten and linear layers) and "
            "ResNet-style models (`blocks()` of BasicBlocks)"
        )
    if nodes == "relu_inputs":
        found = [n for n in found if n.relu_input]
    return OrderedDict((n.name, n) for n in found)


class ActivationRecorder:
    """Forward hooks that keep the value of every given scored node.

    ``edit`` (optional) maps a node name to a function ``f(name, tensor) -> tensor`` whose result
    replaces the node's value in the forward pass, which is how noise is injected into chosen units.
    """

    def __init__(self, model: nn.Module, layers: "OrderedDict[str, ScoredLayer]", keep: bool = True, edit=None):
        self.model, self.layers, self.keep, self.edit = model, layers, keep, edit or {}
        self.values: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._hooks = None
        self._calls: dict[str, int] = {}  # per node of a module run several times: its calls in this pass

    def __enter__(self):
        items = self.layers.items()
        reset = [(self.model, lambda _module, _inputs: self._calls.clear())]  # runs first: the model's own hook
        self._hooks = hooked(on_output=[(l.module, self._hook(n)) for n, l in items if l.hook != "input"],
                             on_input=reset + [(l.module, self._pre_hook(n)) for n, l in items if l.hook == "input"])
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self._hooks = None

    def _visit(self, name, value):
        """The value the forward pass goes on with, or None to leave it as it is."""
        edited = name in self.edit
        if edited:
            value = self.edit[name](name, value)
        if self.keep:
            # The pass goes on with a copy: a later in-place op (an inplace ReLU, `out += shortcut`) would otherwise
            # change the kept value; the copy depends on it, so gradients with respect to the kept value still flow.
            self.values[name] = value
            return value.clone()
        return value if edited else None

    def _this_call(self, name) -> bool:
        """Whether the module's current call gives the node (always, for a node without a call index)."""
        wanted = self.layers[name].call
        if wanted is None:
            return True
        k = self._calls.get(name, 0)
        self._calls[name] = k + 1
        return k == wanted

    def _pre_hook(self, name):
        def hook(_module, inputs):
            if not self._this_call(name):
                return None
            value = self._visit(name, inputs[0])
            return None if value is None else (value,) + tuple(inputs[1:])

        return hook

    def _hook(self, name):
        def hook(_module, _inputs, output):
            if not self._this_call(name):
                return None
            return self._visit(name, output)

        return hook


@torch.no_grad()
def layer_activations(model: nn.Module, x: torch.Tensor, layers=None) -> "OrderedDict[str, torch.Tensor]":
    """Values of the scored nodes for a batch."""
    layers = layers if layers is not None else scored_layers(model)
    with ActivationRecorder(model, layers) as rec:
        model(x)
    return OrderedDict((name, rec.values[name]) for name in layers)


def input_normalisation(model: nn.Module) -> "tuple[torch.Tensor, torch.Tensor] | None":
    """(mean, std), each shaped (1, C, 1, 1), of the normalisation the model applies to its [0, 1] input:
    a ``normalize`` module with ``mean`` / ``std`` buffers, or ``mean`` / ``std`` buffers on the model
    itself; None when the model has neither (its input is then taken as already normalised)."""
    for owner in (getattr(model, "normalize", None), model):
        if owner is None:
            continue
        buffers = dict(owner.named_buffers(recurse=False))
        if "mean" in buffers and "std" in buffers:
            return buffers["mean"].reshape(1, -1, 1, 1), buffers["std"].reshape(1, -1, 1, 1)
    return None
