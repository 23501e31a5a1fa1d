"""Propagation-sensitive neurons (PSN): verification-based scores of single units (SPEC section 4).

A *unit* is one element (channel, h, w) of a *scored layer*; the scored layers are the inputs of the
model's ReLUs (:func:`scored_layers`). For one image and an L-inf ball of radius eps around it (clipped
to [0, 1]), linear bound propagation (CROWN, through auto_LiRPA) gives

* ``before_i = ||lA_i||_2 + ||uA_i||_2``: the lower / upper linear coefficients of unit i with respect
  to the input image (how strongly the input perturbation reaches the unit), and
* ``after_i = ||LA[:, i]||_2 + ||UA[:, i]||_2``: the coefficients of the 10 logit bounds with respect
  to unit i, norm taken over the logits (how strongly the unit reaches the output).

Per layer both terms are z-scored over all (image, unit) entries, and

    score_i = sqrt(max(z(before_i) * z(after_i), 0) + 1e-9)

averaged over the images. This is the reference's formula and the default (``variant="faithful"``).
Note what it implies: a unit whose two z-scores are *both negative* (weakly reached and weakly
propagating) gets a product as large as a unit with both positive, so it ranks as "sensitive" too.
``variant="positive"`` scores only units with both z-scores positive (the others get sqrt(1e-9)).

Layer names follow the papers and ``model.layers()``: the scored layer that is the (batch-normalised)
output of conv layer ``convN`` / ``lXbYcZ`` carries that conv's name (VGG ``conv1``..``conv13``, ResNet
stem ``conv1``, block ``l1b1c1``), and the residual sum of a block (the input of its second ReLU) is
``lXbYadd``. A ReLU after a hidden linear layer would be named after its ReLU module.

Bound methods (``bound_method``):

* ``"CROWN"`` (the reference's): every intermediate bound is a backward CROWN bound, so the
  coefficients recorded while CROWN computes the bounds of a scored layer *are* the before term;
  one ``compute_bounds`` call with a final pass that records the logits' coefficients at every ReLU
  input delivers both terms. Costs about one full-network CROWN bound.
* ``"CROWN-IBP"``: intermediate bounds by IBP, the ReLU relaxations fixed by them; the after term
  comes from the CROWN pass of the logits, the before term of layer l from a CROWN pass started at
  layer l (what ``compute_bounds(method="CROWN-IBP")`` of the network truncated after layer l gives,
  without building truncated networks). Its before terms need one backward pass per scored layer over
  all its units, exactly like CROWN's intermediate bounds, so it is *not* much cheaper than CROWN.

How the terms are obtained from auto_LiRPA 0.3 (checked against autograd Jacobians in the tests):

* after: ``compute_bounds(..., return_A=True, needed_A_dict={output: [ReLU node names]})``; the record
  kept under a *ReLU* node's name holds the coefficients with respect to that ReLU's *input* (a record
  under the BN node's own name would be with respect to the BN's input, off by the BN scale).
* before: while compute_bounds bounds a scored node, ``BoundedModule.backward_general`` is replaced
  (on the instance, for the duration of the call) by a wrapper that runs the same backward pass in
  chunks of units and reads the coefficients left at the input node (a graph root, which auto_LiRPA
  does not free). Patches-form coefficients (the first conv layers) are reduced with the library's
  own patch-times-image product applied to squared patches and an all-ones image, which counts only
  positions inside the image (padding excluded).
* Scored nodes are identified by value: the input of each auto_LiRPA ReLU node must equal exactly one
  scored layer's output on a probe image, and the counts must match.

auto_LiRPA's own batched CROWN (``crown_batch_size``) refuses ``return_A`` and is disabled with
``sparse_intermediate_bounds=False``, so this module chunks the specification itself: every backward
pass from a scored layer runs over chunks of at most :meth:`PSNBounder.rows_per_chunk` units, chosen
from the memory budget (a conservative estimate: 64 bytes per row and per element of the largest
activation the pass crosses; measured peaks stay below it), and each chunk's coefficients are reduced
to norms and dropped at once. All bound computation runs under ``torch.no_grad()``.

Cost (bench/bench_psn.py, trained digits models of width 0.125, one image, 2 shared cores): CROWN mode
takes about as long as one full-network CROWN bound of the output (VGG16 1.13x, ~32 s; ResNet18 0.76x,
~63 s) with peak memory under the 1024 MB budget; CROWN-IBP mode is *not* faster (0.84x / 0.93x of
CROWN's speed), because its before terms are the same backward passes; only the after term (the logits'
pass) is 10-300x cheaper under CROWN-IBP. Top-1% sets from disjoint image subsets overlap far above
chance already with very few images (mean Jaccard 0.67 for 2 vs 2 images on VGG16, 0.42 for 1 vs 1 on
ResNet18; random sets ~0.005), deep layers most.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .lirpa_compat import bounded_module, import_auto_lirpa

log = logging.getLogger("advneurons")

BOUND_METHODS = ("CROWN", "CROWN-IBP")
VARIANTS = ("faithful", "positive")
SCORE_FLOOR = 1e-9
UNIT_COLUMNS = ["layer", "depth", "block", "conv", "channel", "h", "w"]

# Bytes of working memory per specification row and per element of the largest activation a backward
# pass crosses: lA and uA, their positive / negative parts and relaxed products, and a second live copy
# on the two branches of a residual block. Measured peaks (bench/bench_psn.py) are about half of this
# estimate; patches mode needs less than dense mode.
_BYTES_PER_ELEMENT = 4 * 16


# ------------------------------------------------------------------------------------------ layers
@dataclass(frozen=True)
class ScoredLayer:
    """One ReLU input of a model.

    ``relu`` is the key of the ReLU in ``model.relus()``; ``conv`` names the conv layer (a key of
    ``model.layers()``) whose batch-normalised output this layer is, or the residual-branch conv for a
    residual sum (used to compare with channel-level sensitivity), None if there is none; ``block``
    groups layers for summaries (VGG: B1..B5 by pooling stage, FC; ResNet: stem, layer1..layer4);
    ``source`` is the module whose *input* serves as the Grad-CAM feature map of the layer's units.
    """

    name: str
    relu: str
    block: str
    conv: str | None
    source: nn.Module | None


def scored_layers(model: nn.Module) -> "OrderedDict[str, ScoredLayer]":
    """The inputs of the model's ReLUs, in forward order, with the papers' layer names."""
    relus = model.relus()
    out: "OrderedDict[str, ScoredLayer]" = OrderedDict()
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        # VGG: reluN in `features` follows convN -> bnN; the block is the pooling stage of the layer.
        # ReLUs outside `features` follow hidden linear layers of a classifier (block "FC").
        stage, stage_of = 1, {}
        for name, module in features.named_children():
            if isinstance(module, nn.MaxPool2d):
                stage += 1
            elif isinstance(module, nn.ReLU):
                stage_of[name] = stage
        for relu_name in relus:
            match = re.fullmatch(r"relu(\d+)", relu_name)
            if relu_name in stage_of and match and hasattr(features, f"conv{match.group(1)}"):
                n = match.group(1)
                out[f"conv{n}"] = ScoredLayer(
                    f"conv{n}", relu_name, f"B{stage_of[relu_name]}", f"conv{n}", getattr(features, f"conv{n}")
                )
            else:
                out[relu_name] = ScoredLayer(relu_name, relu_name, "FC", None, None)
        return out
    if hasattr(model, "blocks"):
        blocks = dict(model.blocks())
        for relu_name in relus:
            if relu_name == "relu1":
                out["conv1"] = ScoredLayer("conv1", relu_name, "stem", "conv1", model.conv1)
                continue
            match = re.fullmatch(r"(l(\d)b\d)r([12])", relu_name)
            if match is None:
                out[relu_name] = ScoredLayer(relu_name, relu_name, "other", None, None)
                continue
            prefix, stage, which = match.group(1), match.group(2), match.group(3)
            block = blocks[prefix]
            if which == "1":
                out[f"{prefix}c1"] = ScoredLayer(f"{prefix}c1", relu_name, f"layer{stage}", f"{prefix}c1", block.conv1)
            else:
                out[f"{prefix}add"] = ScoredLayer(f"{prefix}add", relu_name, f"layer{stage}", f"{prefix}c2", block.conv1)
        return out
    # Any other model exposing relus(): name the layers after their ReLUs.
    for relu_name in relus:
        out[relu_name] = ScoredLayer(relu_name, relu_name, "all", None, None)
    return out


class ActivationRecorder:
    """Forward pre-hooks that keep the input of every scored layer's ReLU (the scored layer output).

    ``edit`` (optional) maps a layer name to a function ``f(name, tensor) -> tensor`` whose result
    replaces the ReLU input, which is how noise is injected into chosen units.
    """

    def __init__(self, model: nn.Module, layers: "OrderedDict[str, ScoredLayer]", keep: bool = True, edit=None):
        self.model, self.layers, self.keep, self.edit = model, layers, keep, edit or {}
        self.values: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._handles = []

    def __enter__(self):
        relus = self.model.relus()
        for name, layer in self.layers.items():
            self._handles.append(relus[layer.relu].register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name):
        def hook(_module, inputs):
            value = inputs[0]
            if name in self.edit:
                value = self.edit[name](name, value)
            if self.keep:
                self.values[name] = value
            if name in self.edit:
                return (value,)
            return None

        return hook


@torch.no_grad()
def layer_activations(model: nn.Module, x: torch.Tensor, layers=None) -> "OrderedDict[str, torch.Tensor]":
    """Outputs of the scored layers (ReLU inputs) for a batch."""
    layers = layers if layers is not None else scored_layers(model)
    with ActivationRecorder(model, layers) as rec:
        model(x)
    return OrderedDict((name, rec.values[name]) for name in layers)


# ------------------------------------------------------------------------------------------ bounds
@dataclass
class LayerTerms:
    """Per image and unit of one scored layer: the two PSN terms and the unit's bounds."""

    before: torch.Tensor  # (N, *shape)
    after: torch.Tensor  # (N, *shape)
    lower: torch.Tensor  # (N, *shape) bounds of the unit over the ball (CROWN or CROWN-IBP)
    upper: torch.Tensor


def _prod(shape) -> int:
    return int(math.prod(int(s) for s in shape))


class PSNBounder:
    """auto_LiRPA bound computation that collects the PSN terms of every scored layer.

    Built once per model (tracing is the slow part) and reused for every image batch. The node of
    each scored layer is found by value: on a probe input, the input of each auto_LiRPA ReLU node
    must equal exactly one scored layer's output, and every scored layer must be matched.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, method: str = "CROWN", mem_budget_mb: float = 2048,
                 layers: "OrderedDict[str, ScoredLayer] | None" = None):
        if method not in BOUND_METHODS:
            raise ValueError(f"unknown bound method {method!r}; choose one of {', '.join(BOUND_METHODS)}")
        if not mem_budget_mb > 0:
            raise ValueError(f"memory budget must be positive, got {mem_budget_mb} MB")
        self.lirpa = import_auto_lirpa()
        self.model = model.eval()
        self.method = method
        self.mem_budget_bytes = float(mem_budget_mb) * 2**20
        self.layers = layers if layers is not None else scored_layers(model)
        example = example[:1].detach().cpu()
        self.bm = bounded_module(model, example, bound_opts={"sparse_intermediate_bounds": False})
        self.input_name = self.bm.input_name[0]
        self.output_name = self.bm.output_name[0]
        self.node_of, self.relu_node_of = self._match_nodes(example)
        self.layer_of_node = {node: name for name, node in self.node_of.items()}
        self._largest_before = self._largest_ancestor_sizes()
        self._orig_backward = self.bm.backward_general
        self._recording: dict[str, tuple] | None = None

    # -- graph ---------------------------------------------------------------------------------
    def _match_nodes(self, example):
        gen = torch.Generator().manual_seed(12345)
        probe = torch.rand(example.shape, generator=gen)
        acts = layer_activations(self.model, probe, self.layers)
        with torch.no_grad():
            self.bm(probe)
        relu_cls = self.lirpa.bound_ops.BoundRelu
        relu_nodes = [n for n in self.bm._modules.values() if isinstance(n, relu_cls)]
        if len(relu_nodes) != len(self.layers):
            raise RuntimeError(
                f"auto_LiRPA graph has {len(relu_nodes)} ReLU nodes but the model lists {len(self.layers)} "
                "scored layers (a ReLU used twice or a functional relu?)"
            )
        node_of, relu_node_of = {}, {}
        for relu in relu_nodes:
            value = relu.inputs[0].forward_value
            hits = [
                name for name, act in acts.items()
                if act.shape == value.shape and torch.allclose(act, value, rtol=1e-4, atol=1e-5)
            ]
            if len(hits) != 1:
                raise RuntimeError(f"ReLU node {relu.name} matches {len(hits)} scored layers ({hits}) by value")
            if hits[0] in node_of:
                raise RuntimeError(f"scored layer {hits[0]} matched by two ReLU nodes")
            node_of[hits[0]] = relu.inputs[0].name
            relu_node_of[hits[0]] = relu.name
        missing = [n for n in self.layers if n not in node_of]
        if missing:
            raise RuntimeError(f"scored layers without an auto_LiRPA node: {missing}")
        return OrderedDict((n, node_of[n]) for n in self.layers), OrderedDict((n, relu_node_of[n]) for n in self.layers)

    def _largest_ancestor_sizes(self) -> dict[str, int]:
        """Per scored node, the largest element count (per image) among the nodes a backward pass
        from it visits: what the per-row memory of that pass scales with."""
        sizes = {}
        for node_name in self.layer_of_node:
            seen, stack, largest = set(), [self.bm[node_name]], 0
            while stack:
                node = stack.pop()
                if node.name in seen:
                    continue
                seen.add(node.name)
                shape = getattr(node, "output_shape", None)
                # Parameters and buffers are graph roots without inputs; only activations count.
                if shape is not None and len(shape) > 1 and (node.inputs or node.name == self.input_name):
                    largest = max(largest, _prod(shape[1:]))
                stack.extend(node.inputs)
            sizes[node_name] = largest
        return sizes

    def rows_per_chunk(self, node_name: str, batch: int) -> int:
        """Specification rows per backward pass from a scored node that fit the memory budget."""
        per_row = _BYTES_PER_ELEMENT * max(1, self._largest_before[node_name]) * batch
        return max(1, int(self.mem_budget_bytes // per_row))

    # -- backward passes -------------------------------------------------------------------------
    def _chunk_specs(self, node, batch, rows):
        """(C, unstable_idx) chunks covering every unit of ``node``, built as auto_LiRPA's batched
        CROWN builds them."""
        L = self.lirpa
        shape = list(node.output_shape[1:])
        dim = _prod(shape)
        for start in range(0, dim, rows):
            flat = torch.arange(start, min(dim, start + rows))
            k = len(flat)
            if getattr(node, "patches_start", False) and getattr(node, "mode", None) == "patches":
                idx = tuple(torch.unravel_index(flat, tuple(shape)))
                C = L.patches.Patches(
                    shape=[k, batch, *shape[:-2], 1, 1], identity=1, unstable_idx=idx,
                    output_shape=[batch, *shape],
                )
                yield C, idx
            elif isinstance(node, (L.bound_ops.BoundAdd, L.bound_ops.BoundSub)) and getattr(node, "mode", None) == "patches":
                idx = tuple(torch.unravel_index(flat, tuple(shape)))
                channels = shape[0]
                eye = torch.eye(channels).view(channels, 1, 1, 1, channels, 1, 1)
                eye = eye.expand(-1, 1, shape[1], shape[2], -1, 1, 1)
                pieces = eye[idx[0], :, idx[1], idx[2]].expand(-1, batch, -1, -1, -1)
                C = L.patches.Patches(pieces, 1, 0, pieces.shape, unstable_idx=idx, output_shape=[batch, *shape])
                yield C, idx
            elif isinstance(node, (L.bound_ops.BoundLinear, L.bound_ops.BoundMatMul)):
                yield L.utils.OneHotC([batch, k, *shape], self.bm.device, flat, None), flat
            else:
                C = torch.zeros(1, k, dim)
                C[0, torch.arange(k), flat] = 1.0
                yield C.expand(batch, -1, -1).reshape(batch, k, *shape), flat

    def _input_row_norms(self, A, batch) -> torch.Tensor:
        """L2 norm of each specification row of a root coefficient record, shape (batch, rows)."""
        if A is None:
            raise RuntimeError("auto_LiRPA left no coefficient at the input node")
        root = self.bm[self.input_name]
        in_shape = root.center.shape if getattr(root, "center", None) is not None else root.value.shape
        if isinstance(A, self.lirpa.patches.Patches):
            # sum of squared patch entries over the positions that fall inside the image (padding
            # excluded): the library's own patch-times-image product with an all-ones image.
            squares = A.create_similar(patches=A.patches.pow(2))
            sq = squares.matmul(torch.ones(in_shape, dtype=A.patches.dtype), input_shape=in_shape)
            return sq.reshape(batch, -1).clamp_min(0).sqrt()
        if isinstance(A, torch.Tensor):  # (spec, batch, *input)
            return A.reshape(A.shape[0], A.shape[1], -1).norm(dim=2).transpose(0, 1)
        raise TypeError(f"unexpected coefficient type {type(A).__name__} at the input")

    def _backward_from(self, node, full_C=None):
        """Bounds of every unit of ``node`` by a backward pass over chunks of units, recording the
        L2 norms of the lower / upper input coefficients of each unit. Returns (lb, ub, before)."""
        batch = self.bm.batch_size
        shape = list(node.output_shape[1:])
        dim = _prod(shape)
        rows = self.rows_per_chunk(node.name, batch)
        keep_return_A = self.bm.return_A
        # return_A=False lets auto_LiRPA free each node's coefficients as soon as it has passed them
        # on; the input node's coefficients (a graph root) stay available after the pass.
        self.bm.return_A = False
        lbs, ubs, norms = [], [], []
        try:
            if rows >= dim and full_C is not None:
                chunks = [(full_C, None)]
            else:
                chunks = self._chunk_specs(node, batch, min(rows, dim))
            for C, idx in chunks:
                lb, ub = self._orig_backward(C=C, node=node, unstable_idx=idx)
                root = self.bm[self.input_name]
                norms.append(self._input_row_norms(root.lA, batch) + self._input_row_norms(root.uA, batch))
                lbs.append(lb.reshape(batch, -1))
                ubs.append(ub.reshape(batch, -1))
                root.lA = root.uA = None
        finally:
            self.bm.return_A = keep_return_A
        lb = torch.cat(lbs, 1).reshape(batch, *shape)
        ub = torch.cat(ubs, 1).reshape(batch, *shape)
        before = torch.cat(norms, 1).reshape(batch, *shape)
        return lb, ub, before

    def _wrapped_backward(self, *args, **kwargs):
        """Stands in for ``BoundedModule.backward_general`` during compute_bounds: intermediate bounds
        of scored nodes go through :meth:`_backward_from` (recording the before term); other
        intermediate nodes run without keeping coefficients."""
        node = kwargs.get("node")
        wants_A = self.bm.return_A
        if node is None or node.name == self.bm.final_node_name:
            return self._orig_backward(*args, **kwargs)
        if self._recording is not None and node.name in self.layer_of_node:
            C = kwargs.get("C", args[0] if args else None)
            full_C = C if kwargs.get("unstable_idx") is None and not isinstance(C, str) else None
            lb, ub, before = self._backward_from(node, full_C)
            self._recording[node.name] = (lb, ub, before)
            return (lb, ub, self.bm.A_dict) if wants_A else (lb, ub)
        self.bm.return_A = False
        try:
            lb, ub = self._orig_backward(*args, **kwargs)
        finally:
            self.bm.return_A = wants_A
        return (lb, ub, self.bm.A_dict) if wants_A else (lb, ub)

    def _ball(self, x, eps):
        L = self.lirpa
        ptb = L.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
        return L.BoundedTensor(x, ptb)

    @torch.no_grad()
    def terms(self, x: torch.Tensor, eps: float) -> "OrderedDict[str, LayerTerms]":
        """PSN terms (and unit bounds) of every scored layer for a batch of images and ball radius eps."""
        x = x.detach().cpu().float()
        need = {self.output_name: list(self.relu_node_of.values())}
        self._recording = {}
        self.bm.backward_general = self._wrapped_backward
        try:
            _, _, a_dict = self.bm.compute_bounds(
                x=(self._ball(x, eps),), method=self.method, return_A=True, needed_A_dict=need
            )
            after = {}
            records = a_dict[self.output_name]
            for name, relu_name in self.relu_node_of.items():
                rec = records[relu_name]
                # (batch, logits, *shape): norm over the logits.
                after[name] = rec["lA"].norm(dim=1) + rec["uA"].norm(dim=1)
            # Scored nodes whose bounds compute_bounds did not get by a backward pass (all of them
            # under CROWN-IBP; under CROWN any that auto_LiRPA bounded another way) get one now,
            # with the intermediate bounds compute_bounds left in place.
            for name, node_name in self.node_of.items():
                if node_name not in self._recording:
                    self._recording[node_name] = self._backward_from(self.bm[node_name])
            out = OrderedDict()
            for name, node_name in self.node_of.items():
                lb, ub, before = self._recording[node_name]
                out[name] = LayerTerms(before=before, after=after[name].reshape(before.shape), lower=lb, upper=ub)
            return out
        finally:
            self._recording = None
            del self.bm.backward_general  # back to the class method
            for node in self.bm._modules.values():
                node.lA = node.uA = None


# ------------------------------------------------------------------------------------------ scores
def zscore(values: np.ndarray) -> np.ndarray:
    """(v - mean) / std over all entries (population std); all zeros when the entries are constant."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    if not np.isfinite(std) or std == 0:
        return np.zeros_like(values)
    return (values - values.mean()) / std


def psn_score(before: np.ndarray, after: np.ndarray, variant: str = "faithful") -> np.ndarray:
    """Per (image, unit) entry: sqrt(max(z(before) * z(after), 0) + 1e-9), z over all entries given.

    ``variant="positive"`` keeps the product only where both z-scores are positive.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown score variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if np.shape(before) != np.shape(after):
        raise ValueError(f"before {np.shape(before)} and after {np.shape(after)} differ in shape")
    zb, za = zscore(before), zscore(after)
    product = zb * za
    if variant == "positive":
        product = np.where((zb > 0) & (za > 0), product, 0.0)
    return np.sqrt(np.maximum(product, 0.0) + SCORE_FLOOR)


def _unit_index(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """channel, h, w of every unit of a (C,), (C, H, W) layer, in flattening order."""
    if len(shape) == 1:
        c = np.arange(shape[0])
        return c, np.zeros_like(c), np.zeros_like(c)
    if len(shape) != 3:
        raise ValueError(f"scored layers must be (C,) or (C, H, W), got {shape}")
    c, h, w = np.unravel_index(np.arange(_prod(shape)), tuple(shape))
    return c, h, w


def score_table(terms: "OrderedDict[str, LayerTerms]", layers: "OrderedDict[str, ScoredLayer]",
                variant: str = "faithful") -> pd.DataFrame:
    """Long table, one row per unit: layer, depth, block, conv, channel, h, w, score, before, after
    (score and terms averaged over the images)."""
    frames = []
    for depth, (name, t) in enumerate(terms.items()):
        before = t.before.double().numpy()
        after = t.after.double().numpy()
        score = psn_score(before, after, variant).mean(0).reshape(-1)
        c, h, w = _unit_index(before.shape[1:])
        layer = layers[name]
        frames.append(pd.DataFrame({
            "layer": name, "depth": depth, "block": layer.block, "conv": layer.conv or "",
            "channel": c, "h": h, "w": w, "score": score,
            "before": before.mean(0).reshape(-1), "after": after.mean(0).reshape(-1),
        }))
    return pd.concat(frames, ignore_index=True)


def concat_terms(parts: "list[OrderedDict[str, LayerTerms]]") -> "OrderedDict[str, LayerTerms]":
    """Join the terms of several image batches along the image axis."""
    out = OrderedDict()
    for name in parts[0]:
        out[name] = LayerTerms(*(torch.cat([getattr(p[name], f) for p in parts]) for f in ("before", "after", "lower", "upper")))
    return out


def compute_terms(bounder: PSNBounder, images: torch.Tensor, eps: float, progress: bool = True) -> "OrderedDict[str, LayerTerms]":
    """Terms of every scored layer for each image, one image per bound computation."""
    from tqdm import tqdm

    parts = []
    for i in tqdm(range(len(images)), desc=f"PSN {bounder.method}", disable=not progress):
        parts.append(bounder.terms(images[i : i + 1], eps))
    return concat_terms(parts)


def select_images(n_available: int, n_images: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``n_images`` images drawn without replacement (all if None)."""
    if n_images is None or n_images >= n_available:
        return np.arange(n_available)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    from .runtime import generator

    perm = torch.randperm(n_available, generator=generator(seed))[:n_images]
    return np.sort(perm.numpy())


# ------------------------------------------------------------------------------------------ steps
def psn_scores(model_path: Path, images_path: Path, n_images: int | None, eps: float, bound_method: str,
               mem_budget_mb: float, seed: int, out_path: Path, meta_path: Path,
               variant: str = "faithful") -> pd.DataFrame:
    """Workflow step: PSN score of every unit of every scored layer.

    ``images_path``: a split ``.npz`` (test split); ``n_images`` random images of it (seeded; None: all)
    are scored; ``eps`` in 1/255 units; ``bound_method`` "CROWN" or "CROWN-IBP"; ``mem_budget_mb``
    bounds the coefficient memory of one backward pass. Writes ``out_path`` (CSV, gzip-compressed when
    it ends in .gz; columns layer, depth, block, conv, channel, h, w, score, before, after) and a
    metadata JSON with per-layer summaries and timings.
    """
    import time

    from .attacks import from_255
    from .checkpoint import load_model
    from .data import load_split
    from .runtime import atomic_path, metadata, write_json

    if bound_method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {bound_method!r}; choose one of {', '.join(BOUND_METHODS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown score variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not eps > 0:
        raise ValueError(f"eps must be positive (1/255 units), got {eps}")
    if not mem_budget_mb > 0:
        raise ValueError(f"memory budget must be positive, got {mem_budget_mb} MB")
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be at least 1 (or None for all), got {n_images}")
    model, ckpt = load_model(model_path)
    images, labels = load_split(images_path)
    index = select_images(len(images), n_images, seed)
    layers = scored_layers(model)
    start = time.perf_counter()
    bounder = PSNBounder(model, images[:1], bound_method, mem_budget_mb, layers)
    terms = compute_terms(bounder, images[index], from_255(eps))
    seconds = time.perf_counter() - start
    table = score_table(terms, layers, variant)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False, compression="gzip" if str(out_path).endswith(".gz") else None)
    per_layer = table.groupby("layer", sort=False).agg(
        units=("score", "size"), score_mean=("score", "mean"), score_max=("score", "max"),
        before_mean=("before", "mean"), after_mean=("after", "mean"),
    )
    write_json(
        metadata(
            "psn_scores",
            {"model": str(model_path), "images": str(images_path), "n_images": n_images, "eps_255": eps,
             "bound_method": bound_method, "mem_budget_mb": mem_budget_mb, "variant": variant},
            seed=seed,
            arch=ckpt.get("arch"),
            image_indices=index.tolist(),
            seconds=round(seconds, 2),
            rows_per_chunk={name: bounder.rows_per_chunk(node, 1) for name, node in bounder.node_of.items()},
            per_layer=per_layer.to_dict(orient="index"),
        ),
        meta_path,
    )
    return table


def top_units_table(scores: pd.DataFrame, percent: float) -> pd.DataFrame:
    """The top ``percent``% units of each layer by score (at least one), ranked from 1; ties broken
    by (channel, h, w) so the selection is deterministic."""
    if not 0 < percent <= 100:
        raise ValueError(f"top percentage must be in (0, 100], got {percent}")
    picked = []
    for _, group in scores.groupby("depth", sort=True):
        k = max(1, int(math.ceil(len(group) * percent / 100.0)))
        best = group.sort_values(["score", "channel", "h", "w"], ascending=[False, True, True, True]).head(k).copy()
        best.insert(0, "percent", percent)
        best["rank"] = np.arange(1, k + 1)
        best["n_units"] = len(group)
        picked.append(best)
    return pd.concat(picked, ignore_index=True)


def read_scores(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in UNIT_COLUMNS + ["score"] if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not a PSN score table: missing columns {missing}")
    return table


def top_units(scores_path: Path, percents, out_path: Path) -> pd.DataFrame:
    """Workflow step: top-p% units per layer for every p in ``percents`` (e.g. [0.1, 1, 10]).

    Writes a CSV (gzip when it ends in .gz) with columns percent, layer, depth, block, conv, channel,
    h, w, score, before, after, rank, n_units.
    """
    from .runtime import atomic_path

    percents = [float(p) for p in percents]
    for p in percents:
        if not 0 < p <= 100:
            raise ValueError(f"top percentage must be in (0, 100], got {p}")
    scores = read_scores(scores_path)
    table = pd.concat([top_units_table(scores, p) for p in percents], ignore_index=True)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False, compression="gzip" if str(out_path).endswith(".gz") else None)
    return table
