"""Layer names of the two architectures and the papers' choices among them, known without building a model
(no torch import), so that configs are checked and plans are made before anything runs. Tests keep them
equal to what the built models report (model.layers(), psn.graph.scored_layers).
"""

from __future__ import annotations

from typing import Sequence

# Conv layers of each architecture in forward order (model.layers() without fc and shortcuts).
CONV_LAYERS = {
    "vgg16": [f"conv{i}" for i in range(1, 14)],
    "resnet18": ["conv1"] + [f"l{s}b{b}c{c}" for s in range(1, 5) for b in (1, 2) for c in (1, 2)],
}

# The SNS papers' fine-tuned layers: VGG16 conv8..conv13; ResNet18 from the second block of layer3 to the end.
SNS_LAYERS = {
    "vgg16": [f"conv{i}" for i in range(8, 14)],
    "resnet18": ["l3b2c1", "l3b2c2", "l4b1c1", "l4b1c2", "l4b2c1", "l4b2c2"],
}

# Layers of the sorted-sensitivity curves (TIP Fig 10) and of ratio vs eps (TIP Fig 14).
FIG10_LAYERS = {"vgg16": ["conv1", "conv4", "conv7", "conv13"], "resnet18": ["l1b1c1", "l2b1c1", "l3b1c2", "l4b1c1"]}
FIG14_LAYERS = {"vgg16": ["conv3", "conv7", "conv10", "conv13"], "resnet18": ["l1b1c1", "l2b1c1", "l3b1c2", "l4b1c1"]}


def _vgg16_psn_nodes() -> list[str]:
    names, pools_after = [], {2, 4, 7, 10, 13}
    for i in range(1, 14):
        names += [f"conv{i}", f"conv{i}.bn", f"conv{i}.relu"]
        if i in pools_after:
            names.append(f"pool{len([p for p in pools_after if p <= i])}")
    return names + ["flatten"]


def _resnet18_psn_nodes() -> list[str]:
    names = ["conv1", "conv1.bn", "conv1.relu"]
    for s in range(1, 5):
        for b in (1, 2):
            p = f"l{s}b{b}"
            names += [f"{p}c1", f"{p}c1.bn", f"{p}c1.relu", f"{p}c2", f"{p}c2.bn"]
            if s > 1 and b == 1:
                names += [f"{p}sc", f"{p}sc.bn"]
            names += [f"{p}add", f"{p}add.relu"]
    return names + ["avgpool", "flatten"]


# Names of the PSN scored nodes by node set (psn.graph.scored_layers).
PSN_LAYERS = {
    "relu_inputs": {
        "vgg16": [f"conv{i}.bn" for i in range(1, 14)],
        "resnet18": ["conv1.bn"] + [f"l{s}b{b}{part}" for s in range(1, 5) for b in (1, 2) for part in ("c1.bn", "add")],
    },
    "all": {"vgg16": _vgg16_psn_nodes(), "resnet18": _resnet18_psn_nodes()},
}


def arch_of(layer_names: Sequence[str]) -> str:
    """'vgg16' or 'resnet18' from the layer names a table holds."""
    names = set(layer_names)
    if "conv13" in names:
        return "vgg16"
    if any(n.startswith("l1b1") for n in names):
        return "resnet18"
    raise ValueError(f"cannot tell the architecture from layers {sorted(names)[:6]}...; pass the layers explicitly")
