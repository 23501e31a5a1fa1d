"""Models from outside the pipeline: any PyTorch network built by a factory function, or a RobustBench model-zoo
entry (advneurons.models.zoo), behind the interface the analyses use (models.architectures): [0, 1] images in,
normalisation inside, layers addressed by name.

Layer names are the networks' own qualified module names (e.g. ``layer2.0.conv1``): every Conv2d and Linear, in
the order the forward pass runs them, unless the config lists them; a final Linear layer (the logits) is "fc", as in
the built-in models, since the analyses read the logits under that name. Where each layer is read (the measurement
sites of models.architectures) is found by a probe: one forward pass with hooks that follows tensors from module
to module. A conv's "bn" site is the BatchNorm that consumes exactly the conv's output; its "relu" site the
ReLU module that consumes that output (or the conv's own, without BatchNorm). A layer without a BatchNorm after it
is read at its conv output for "bn"; asking for a "relu" site that does not exist, or whose ReLU module is
shared by several layers (called more than once per pass), is an error naming the layer.

An external model's checkpoint in the pipeline (``import_model``) stores how to rebuild the network (factory and
keyword arguments, or zoo entry), the normalisation and the probed layer map, beside the weights; rebuilding
runs the factory again, so its module must be importable wherever the jobs run.
"""

from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from advneurons.models.architectures import Normalize, check_site

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
INPUT_SHAPE = (3, 32, 32)  # both datasets of the pipeline (digits are upscaled to CIFAR-10's shape)


class ExternalModelError(ValueError):
    """An external model cannot be used as configured; the message names the entry, the file or the layer."""


# --------------------------------------------------------------------------------------------- building
def resolve_factory(path: str):
    """The function named by "package.module:function"."""
    if not isinstance(path, str) or not FACTORY_PATTERN.match(path):
        raise ExternalModelError(f"factory {path!r} is not of the form 'package.module:function'")
    module_name, function = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExternalModelError(f"factory {path!r}: cannot import module {module_name!r} ({exc})") from exc
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ExternalModelError(f"factory {path!r}: module {module_name!r} has no function {function!r}")
    return factory


def build_network(source: dict) -> nn.Module:
    """The untrained network a source describes (factory with kwargs, or a zoo architecture)."""
    if "robustbench" in source:
        from advneurons.models import zoo

        return zoo.architecture(**source["robustbench"])
    network = resolve_factory(source["factory"])(**dict(source.get("kwargs") or {}))
    if not isinstance(network, nn.Module):
        raise ExternalModelError(f"factory {source['factory']!r} returned a {type(network).__name__}, not an nn.Module")
    return network


def weights_file(source: dict) -> Path:
    if "robustbench" in source:
        from advneurons.models import zoo

        return zoo.weights_path(**source["robustbench"])
    return Path(source["checkpoint"])


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights in a user's checkpoint file, loaded with weights_only=True: a state dict, or a dict holding
    one under "state_dict" or "model"; a DataParallel "module." prefix is removed."""
    from advneurons.models.checkpoint import CheckpointError, safe_load

    path = Path(path)
    if not path.is_file():
        raise ExternalModelError(f"weights file {path} does not exist")
    try:
        obj = safe_load(path)
    except CheckpointError as exc:
        raise ExternalModelError(str(exc)) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ExternalModelError(f"{path} holds no tensors (expected a state dict)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_weights(network: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `network`, strictly; a mismatch names the file and the first differing keys/shapes."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of other shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise ExternalModelError(f"{path} does not match the network: {'; '.join(parts)}")
    network.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------- the probe
# Functional ReLUs and residual sums have no module to hook; the probe sees them as torch functions.
_RELU_FUNCTIONS = {torch.nn.functional.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
_ADD_FUNCTIONS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
                  torch.Tensor.__radd__}
_NODE_KINDS = ((nn.Conv2d, "conv"), (nn.Linear, "linear"), (nn.BatchNorm2d, "bn"), (nn.BatchNorm1d, "bn"),
               (nn.ReLU, "relu"), ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d), "pool"), (nn.Flatten, "flatten"))


class _TensorFunctions(torch.overrides.TorchFunctionMode):
    """Reports the functional ReLUs and the additions a forward pass runs (``on_relu(input)``,
    ``on_add(output)``); calls made inside a module's forward (``busy`` > 0) are the module's own business."""

    def __init__(self, on_relu, on_add):
        super().__init__()
        self.on_relu, self.on_add, self.busy = on_relu, on_add, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.busy and args and isinstance(args[0], torch.Tensor):
            if func in _RELU_FUNCTIONS:
                self.on_relu(args[0])
            elif func in _ADD_FUNCTIONS and isinstance(out, torch.Tensor):
                self.on_add(out)
        return out


def probe_layers(network: nn.Module, input_shape=INPUT_SHAPE) -> "OrderedDict[str, dict]":
    """Every Conv2d and Linear of `network` in execution order -> {kind, channels, bn, relu}: the qualified
    names of the BatchNorm and ReLU modules that read its output (None where there is none), found by one
    forward pass of a random batch of two in eval mode. Under the key "" it also returns the names of the ReLU
    modules called more than once (shared) and of those called once, and the graph nodes PSN can score
    (:func:`psn_nodes`)."""
    calls: dict[str, int] = {}
    produced: dict[int, str] = {}  # id of an output tensor -> module (or "+N", the N-th addition) that produced it
    readers: dict[str, list[str]] = {}  # module or addition -> modules that read its output
    sum_reads: dict[str, list[tuple[str, int]]] = {}  # addition -> (ReLU module, which call of it) reading it
    relu_fed: set[str] = set()  # modules and additions whose output a ReLU (module or functional) reads
    order: list[str] = []
    keep: list[torch.Tensor] = []  # holding every tensor keeps ids from being reused during the pass
    names = {module: name for name, module in network.named_modules() if name}
    watched = tuple(cls for classes, _ in _NODE_KINDS for cls in (classes if isinstance(classes, tuple) else (classes,)))

    def on_relu(tensor):
        source = produced.get(id(tensor))
        if source is not None:
            relu_fed.add(source)

    def on_add(tensor):
        keep.append(tensor)
        name = f"+{sum(1 for n in order if n.startswith('+'))}"
        order.append(name)
        produced[id(tensor)] = name

    functions = _TensorFunctions(on_relu, on_add)

    def pre_hook(module, inputs):
        functions.busy += 1

    def hook(module, inputs, output):
        functions.busy -= 1
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if calls[name] == 1:
            order.append(name)
        if inputs and isinstance(inputs[0], torch.Tensor):
            keep.append(inputs[0])
            # looked up now: an in-place ReLU returns its input object, which then maps to the ReLU itself
            source = produced.get(id(inputs[0]))
            if source is not None and source != name:
                readers.setdefault(source, []).append(name)
                if isinstance(module, nn.ReLU):
                    relu_fed.add(source)
                    if source.startswith("+"):
                        sum_reads.setdefault(source, []).append((name, calls[name] - 1))
        if isinstance(output, torch.Tensor):
            keep.append(output)
            produced[id(output)] = name

    handles = [h for m in names if isinstance(m, watched)
               for h in (m.register_forward_pre_hook(pre_hook), m.register_forward_hook(hook))]
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad(), functions:
            output = network(torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)))
    except Exception as exc:  # the factory's network cannot take the dataset's images
        raise ExternalModelError(f"a forward pass of a {tuple(input_shape)} batch failed: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    modules = dict(network.named_modules())

    def follower(name: str, kind) -> str | None:
        found = [r for r in readers.get(name, []) if isinstance(modules[r], kind)]
        return found[0] if len(found) == 1 else None

    layers: "OrderedDict[str, dict]" = OrderedDict()
    for name in order:
        module = modules.get(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        bn = follower(name, (nn.BatchNorm2d, nn.BatchNorm1d)) if isinstance(module, nn.Conv2d) else None
        relu = follower(bn or name, nn.ReLU)
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        layers[name] = {"kind": "conv" if isinstance(module, nn.Conv2d) else "linear", "channels": int(channels),
                        "bn": bn, "relu": relu}
    if not layers:
        raise ExternalModelError("the network has no Conv2d or Linear module that runs in its forward pass")
    relus = [n for n in order if isinstance(modules.get(n), nn.ReLU)]
    logits = produced.get(id(output)) if isinstance(output, torch.Tensor) else None
    nodes, gaps = psn_nodes(order, modules, calls, sum_reads, relu_fed, layers, logits)
    layers[""] = {"relus": [n for n in relus if calls[n] == 1], "shared_relus": [n for n in relus if calls[n] > 1],
                  "psn_nodes": nodes, "psn_gaps": gaps}
    return layers


def psn_nodes(order, modules, calls, sum_reads, relu_fed, layers, logits) -> tuple[list[dict], list[str]]:
    """The nodes of an external network that PSN can score (advneurons.psn.graph), in execution order: the output
    of every conv, linear, BatchNorm, ReLU, pooling and flatten module called once, except the one that gives the
    logits, and each sum a ReLU module reads (a residual sum; read at that module's input and named
    "<relu module>.input", or "<relu module>.input<k>" when the module runs several times per pass and its k-th
    call, from 0, reads the sum). Each is {name, kind, module, hook, call, conv, relu_input}: `call` that k (None:
    every call), `conv` the analysed layer it belongs to (a conv itself, its BatchNorm, its ReLU), `relu_input`
    whether a ReLU, module or functional, reads it. Also returns what PSN cannot score among the ReLU inputs (a sum
    read by a functional ReLU only), each said in words."""
    conv_of = {}
    for layer, info in layers.items():
        if info["kind"] == "conv":
            conv_of.update({site: layer for site in (layer, info["bn"], info["relu"]) if site})
    nodes, gaps, previous = [], [], "the input"
    for name in order:
        previous = previous if name.startswith("+") else name
        if name.startswith("+"):  # a sum: scored where a ReLU module reads it
            for relu, k in sum_reads.get(name, [])[:1]:
                shared = calls[relu] > 1
                nodes.append({"name": f"{relu}.input{k if shared else ''}", "kind": "add", "module": relu,
                              "hook": "input", "call": k if shared else None, "conv": None, "relu_input": True})
            if name in relu_fed and name not in sum_reads:
                gaps.append(f"the sum computed after {previous} feeds a functional ReLU (make that ReLU a module to "
                            "score the sum)")
            continue
        if calls[name] != 1 or name == logits:
            continue
        kind = next(k for classes, k in _NODE_KINDS if isinstance(modules[name], classes))
        nodes.append({"name": name, "kind": kind, "module": name, "hook": "output", "call": None,
                      "conv": conv_of.get(name),
                      "relu_input": name in relu_fed})
    return nodes, gaps


# ------------------------------------------------------------------------------------------ the model
class ExternalModel(nn.Module):
    """An outside network behind the pipeline's model interface (see the module docstring)."""

    def __init__(self, network: nn.Module, normalization: dict | str, layer_map: dict, selected=None):
        super().__init__()
        if normalization == "inside":
            self.normalize = nn.Identity()
        else:
            self.normalize = Normalize(normalization["mean"], normalization["std"])
        self.network = network
        self.layer_map = {k: v for k, v in layer_map.items() if k}
        self.relu_map = dict(layer_map.get("", {"relus": [], "shared_relus": []}))
        # The logit layer is "fc" in every table of the pipeline (the analyses read the logits there): a final
        # Linear layer goes by that name, whatever its module is called.
        last = list(self.layer_map)[-1]
        self.head_name = last if self.layer_map[last]["kind"] == "linear" and "fc" not in self.layer_map else None
        chosen = [self.head_name if n == "fc" and self.head_name else n for n in (selected or [])]
        unknown = [n for n in chosen if n not in self.layer_map]
        if unknown:
            raise ExternalModelError(f"layers {unknown} are not Conv2d/Linear modules run by the network; it has "
                                     f"{', '.join(list(self.layer_map)[:8])}...")
        self.selected = chosen or list(self.layer_map)

    def display_name(self, name: str) -> str:
        """A layer's name in tables: its qualified module name, "fc" for the final Linear layer."""
        return "fc" if name == self.head_name else name

    def forward(self, x):
        return self.network(self.normalize(x))

    def _module(self, name: str) -> nn.Module:
        return self.network.get_submodule(name)

    def layers(self, site: str = "conv") -> "OrderedDict[str, nn.Module]":
        """Layer name -> the module read at `site` (module docstring); Linear layers at every site."""
        check_site(site)
        out = OrderedDict()
        for name in self.selected:
            info = self.layer_map[name]
            if info["kind"] == "linear" or site == "conv":
                module = self._module(name)
            elif site == "bn":
                module = self._module(info["bn"] or name)
            else:
                if info["relu"] is None or info["relu"] in self.relu_map.get("shared_relus", []):
                    raise ExternalModelError(f"layer {name} has no ReLU module of its own after it (functional or "
                                             f"shared ReLU); read it at the 'bn' or 'conv' site")
                module = self._module(info["relu"])
            out[self.display_name(name)] = module
        return out

    def relus(self) -> "OrderedDict[str, nn.Module]":
        """The ReLU modules called once per forward pass, by qualified name (MeanSparse replaces these)."""
        return OrderedDict((name, self._module(name)) for name in self.relu_map.get("relus", []))

    def activation_sites(self) -> "OrderedDict[str, str]":
        """Analysed conv layer -> where its activation is read or scaled (SNS suppression): the ReLU module of its own
        after it, else the module (its BatchNorm, or the conv itself) whose output a ReLU reads directly, functional or
        shared; ReLU(beta * z) = beta * ReLU(z) for beta >= 0, so scaling there scales the activation alike. Conv
        layers no ReLU reads directly (e.g. before a residual sum) have none and are left out."""
        shared = set(self.relu_map.get("shared_relus", []))
        fed = {n["name"] for n in self.relu_map.get("psn_nodes", []) if n["relu_input"] and n["hook"] == "output"}
        out = OrderedDict()
        for name in self.selected:
            info = self.layer_map[name]
            if info["kind"] != "conv":
                continue
            if info["relu"] is not None and info["relu"] not in shared:
                out[name] = info["relu"]
            elif (info["bn"] or name) in fed:
                out[name] = info["bn"] or name
        return out

    def psn_nodes(self) -> list[dict]:
        """The nodes PSN can score (:func:`psn_nodes`); raises when a ReLU input cannot be scored or the checkpoint
        predates the record."""
        if "psn_nodes" not in self.relu_map:
            raise ExternalModelError("this checkpoint's layer record predates PSN on external models; re-import it "
                                     "(delete it and re-run import_model)")
        if self.relu_map["psn_gaps"]:
            raise ExternalModelError(f"PSN cannot score every ReLU input: {'; '.join(self.relu_map['psn_gaps'])}")
        return list(self.relu_map["psn_nodes"])

    def unreachable_relus(self) -> list[str]:
        """ReLU modules shared by several layers (one module cannot hold per-layer statistics)."""
        return list(self.relu_map.get("shared_relus", []))

    @property
    def fc(self) -> nn.Module | None:
        """The last layer when it is a Linear (the head IG-Defense needs), else None."""
        return self._module(self.head_name) if self.head_name else None

    def penultimate(self) -> nn.Module:
        """A module whose output is the head's input: a view of the head that records what enters it."""
        if self.fc is None:
            raise ExternalModelError("the network's last layer is not a Linear head on pooled features")
        return _HeadInput(self.fc)


class _HeadInput:
    """Stands for "the module whose output feeds the head" (models.hooks.captured_outputs registers a forward
    hook on it): its hook receives the head's input as the output."""

    def __init__(self, head: nn.Module):
        self.head = head

    def register_forward_hook(self, hook):
        return self.head.register_forward_hook(lambda module, inputs, output: hook(module, inputs, inputs[0]))


def build_external(record: dict) -> ExternalModel:
    """The model (untrained) a checkpoint's `external` record describes; the caller loads the state dict."""
    network = build_network(record["source"])
    return ExternalModel(network, record["normalization"], record["layer_map"], record.get("layers"))


def check_psn_entry(model: ExternalModel, psn: dict, node_set: str) -> None:
    """An entry's `psn` settings against the probed nodes: with `node_set` "relu_inputs" every ReLU input must be
    scorable, and each of `heatmap_layers` must be a node of that set with a spatial feature map (a conv, its
    BatchNorm or ReLU, a pooling module)."""
    nodes = {n["name"]: n for n in model.psn_nodes()}  # raises when a ReLU input cannot be scored
    scored = [n for n, node in nodes.items() if node_set == "all" or node["relu_input"]]
    for layer in psn.get("heatmap_layers", []):
        if layer not in scored:
            raise ExternalModelError(f"psn.heatmap_layers: {layer!r} is not a node psn.nodes={node_set} scores; "
                                     f"those are {', '.join(scored)}")
        if nodes[layer]["conv"] is None and nodes[layer]["kind"] != "pool":
            raise ExternalModelError(f"psn.heatmap_layers: {layer!r} has no spatial feature map for Grad-CAM (choose "
                                     "a conv layer, its BatchNorm or ReLU)")


def import_external(name: str, entry: dict, num_classes: int, psn_nodes: str | None = None) -> tuple[ExternalModel, dict]:
    """Build an external model entry (config `external_models.<name>`) with its weights, probe its layers and
    check that it classifies the dataset's images into `num_classes` classes, and (`psn_nodes`: the run's PSN node
    set, when PSN runs on it) that PSN can name the nodes it scores. Returns the model (eval mode) and the record
    a pipeline checkpoint stores to rebuild it."""
    source = entry["source"]
    try:
        network = build_network(source)
        path = weights_file(source)
        load_weights(network, read_state_dict(path), path)
        layer_map = probe_layers(network)
        record = {"name": name, "source": source, "normalization": entry["normalization"], "layer_map": layer_map,
                  "layers": entry.get("layers")}
        model = ExternalModel(network, entry["normalization"], layer_map, entry.get("layers")).eval()
        with torch.no_grad():
            out = model(torch.rand(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0)))
        if psn_nodes is not None and entry.get("psn"):
            check_psn_entry(model, entry["psn"], psn_nodes)
    except ExternalModelError as exc:
        raise ExternalModelError(f"external model {name!r}: {exc}") from exc
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ExternalModelError(f"external model {name!r} returns outputs of shape {tuple(out.shape)} for a batch of "
                                 f"2 images; the dataset has {num_classes} classes")
    return model, record


# ---------------------------------------------------------------------------------------- workflow step
def import_model(name: str, entry: dict, dataset: str, num_classes: int, out_model: Path, meta_path: Path) -> None:
    """Workflow step: an external model entry as a pipeline checkpoint (loaded by checkpoint.load_model like a
    trained one), with a metadata JSON naming its weights file and digest and the layers the probe found."""
    from advneurons.data import file_hash
    from advneurons.models.checkpoint import save_model
    from advneurons.runtime import metadata, write_json

    model, record = import_external(name, entry, num_classes)
    weights = weights_file(entry["source"])
    params = {"name": name, "entry": entry, "weights": str(weights), "weights_sha256": file_hash(weights, "sha256")}
    save_model(model, out_model, name, dataset, 1.0, num_classes, {"params": params}, external=record)
    layers = {k: v for k, v in record["layer_map"].items() if k}
    write_json(metadata("import_model", params, layers=layers, analysed_layers=model.selected,
                        relus=model.relu_map.get("relus", []), shared_relus=model.unreachable_relus()), meta_path)


# -------------------------------------------------------------------------------- check before any job
CHECK_CACHE = Path(".snakemake") / "advneurons" / "external_checks.json"


def _fingerprint(entry: dict, psn_nodes: str | None) -> str:
    import hashlib
    import json

    path = weights_file(entry["source"])
    stat = path.stat() if path.is_file() else None
    key = {"entry": entry, "psn_nodes": psn_nodes, "weights": str(path.resolve()) if stat else str(path),
           "size": stat.st_size if stat else None, "mtime_ns": stat.st_mtime_ns if stat else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def verify_cached(name: str, entry: dict, num_classes: int, cache: Path = CHECK_CACHE,
                  psn_nodes: str | None = None) -> None:
    """:func:`import_external` once per (entry, PSN node set, weights file size and mtime): a passed check is
    remembered in `cache`, so later parses of the workflow skip rebuilding the model. A failure raises
    ExternalModelError."""
    import json

    source = entry["source"]
    path = weights_file(source) if "robustbench" not in source else None
    if path is not None and not path.is_file():  # the cheap, common mistake: say it before importing anything
        raise ExternalModelError(f"weights file {path} does not exist")
    fingerprint = _fingerprint(entry, psn_nodes)
    try:
        passed = set(json.loads(cache.read_text()))
    except (OSError, ValueError):
        passed = set()
    if fingerprint in passed:
        return
    import_external(name, entry, num_classes, psn_nodes)
    passed.add(fingerprint)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{id(passed)}")
        tmp.write_text(json.dumps(sorted(passed)))
        tmp.replace(cache)
    except OSError:  # a read-only working directory only loses the cache
        pass
