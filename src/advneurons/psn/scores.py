"""Propagation-sensitive neurons (PSN): verification-based scores of single units (docs/methods.md, propagation-sensitive neurons).

A *unit* is one element (channel, h, w) of a *scored node*; the scored nodes are the ReLU inputs or
every node between the normalised input and the logits (``psn.nodes``; names and hooks in
:mod:`advneurons.psn.graph`). For one image and an L-inf ball of radius eps around it (clipped to
[0, 1]), linear bound propagation (CROWN, through auto_LiRPA) gives

* ``before_i = ||lA_i||_2 + ||uA_i||_2``: the lower / upper linear coefficients of unit i with respect
  to the *normalised* input, as the reference bounds the normalised image (the pixel-space coefficients
  times each input channel's std): how strongly the input perturbation reaches the unit;
* ``after_i = ||LA[:, i]||_2 + ||UA[:, i]||_2``: the coefficients of the 10 logit bounds with respect
  to unit i, norm over the logits: how strongly the unit reaches the output. For a node read by
  several consumers (a ResNet block output feeds the next block's conv and its shortcut) this is the
  total over all of them; the reference counts only its first consumer's branch.

Per node and image both terms are z-scored over the node's units (the reference's population, as its
scripts run one image per bound; ``zscore="all"`` pools all (image, unit) entries instead), with the
reference's ``(v - mean) / (std + 1e-9)`` and unbiased std, and

    score_i = sqrt(max(z(before_i) * z(after_i), 0) + 1e-9)

averaged over the images. This is the reference's formula and the default (``variant="faithful"``).
Note what it implies: a unit whose two z-scores are *both negative* (weakly reached and weakly
propagating) gets a product as large as a unit with both positive, so it ranks as "sensitive" too.
``variant="positive"`` scores only units with both z-scores positive (the others get sqrt(1e-9)).
The top p% of a node are its max(1, floor(N * p / 100)) best units, as the reference counts them.

Bound methods (``bound_method``):

* ``"CROWN"`` (the reference's): every intermediate bound is a backward CROWN bound, so the
  coefficients recorded while CROWN computes the bounds of a scored node *are* its before term; one
  ``compute_bounds`` call delivers the before terms of the nodes it bounds (ReLU inputs, pooling
  inputs) and, from its final pass, the after terms of all nodes. Costs about one full-network CROWN
  bound with ``nodes="relu_inputs"``.
* ``"CROWN-IBP"``: intermediate bounds by IBP, the ReLU relaxations fixed by them; the after term
  comes from the CROWN pass of the logits, the before term of node l from a CROWN pass started at
  node l. Its before terms need one backward pass per scored node over all its units, exactly like
  CROWN's intermediate bounds, so it is *not* much cheaper than CROWN.

How the terms are obtained from auto_LiRPA 0.3 (checked against autograd Jacobians in the tests):

* after: auto_LiRPA frees the coefficients it passes backwards only in intermediate passes; after the
  final pass each node still holds the logits' coefficients w.r.t. its own output, summed over its
  consumers (:meth:`PSNBounder._after_norms`).
* before: while compute_bounds bounds a scored node, ``BoundedModule.backward_general`` is replaced
  (on the instance, for the duration of the call) by a wrapper that runs the same backward pass in
  chunks of units and reads the coefficients left at the input node (a graph root, which auto_LiRPA
  does not free). Patches-form coefficients (the first conv layers) are reduced with the library's
  own patch-times-image product applied to squared patches and an image of squared stds, which
  counts only positions inside the image (padding excluded).
* Nodes that compute_bounds does not bound get a backward pass of their own, except where a pass is
  shared exactly (:meth:`PSNBounder.derivation_plan`): a conv output from its BatchNorm's pass (per
  channel scale), a ReLU output from its input's (the relaxation's slopes), a flatten from its input's.
  With ``nodes="all"`` this leaves one extra pass per pooling node and per shortcut BatchNorm.
* Scored nodes are matched to graph nodes of the same kind by value on a probe image; every ReLU input
  (or every node, with ``nodes="all"``) must be matched.

auto_LiRPA's own batched CROWN (``crown_batch_size``) refuses ``return_A`` and is disabled with
``sparse_intermediate_bounds=False``, so this module chunks the specification itself: every backward
pass from a scored node runs over chunks of at most :meth:`PSNBounder.rows_per_chunk` units, chosen
from the memory budget (a conservative estimate: 64 bytes per row and per element of the largest
activation the pass crosses; measured peaks stay below it), and each chunk's coefficients are reduced
to norms and dropped at once. All bound computation runs under ``torch.no_grad()``, on CUDA when the
job sees a GPU (the budget is then GPU memory).

Cost: bench/bench_psn.py measures it (README, "PSN cost").
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from advneurons.psn.lirpa_compat import bounded_module, import_auto_lirpa
from advneurons.psn.graph import (
    ScoredLayer,
    check_node_set,
    input_normalisation,
    layer_activations,
    scored_layers,
)
from advneurons.attacks import from_255
from advneurons.data import load_split
from advneurons.models.checkpoint import load_model
from advneurons.runtime import atomic_path, device as default_device, generator, metadata, write_json

log = logging.getLogger("advneurons")

BOUND_METHODS = ("CROWN", "CROWN-IBP")
VARIANTS = ("faithful", "positive")
ZSCORE_POPULATIONS = ("image", "all")
SCORE_FLOOR = 1e-9
UNIT_COLUMNS = ["layer", "depth", "block", "conv", "channel", "h", "w"]

# Bytes of working memory per specification row and per element of the largest activation a backward
# pass crosses: lA and uA, their positive / negative parts and relaxed products, and a second live copy
# on the two branches of a residual block. Measured peaks (bench/bench_psn.py) are about half of this
# estimate; patches mode needs less than dense mode.
_BYTES_PER_ELEMENT = 4 * 16



# ------------------------------------------------------------------------------------------ bounds
@dataclass
class LayerTerms:
    """Per image and unit of one scored node: the two PSN terms and the unit's bounds.

    ``before`` is ``before_lower + before_upper``, the norms of the lower / upper coefficients w.r.t.
    the normalised input (kept apart because a ReLU output's terms follow from its input's parts).
    """

    before: torch.Tensor  # (N, *shape)
    after: torch.Tensor  # (N, *shape)
    lower: torch.Tensor  # (N, *shape) bounds of the unit over the ball (CROWN or CROWN-IBP)
    upper: torch.Tensor
    before_lower: torch.Tensor | None = None
    before_upper: torch.Tensor | None = None


def _prod(shape) -> int:
    return int(math.prod(int(s) for s in shape))


def _kind_classes(lirpa) -> dict:
    """auto_LiRPA node classes of each node kind of psn_graph."""
    ops = lirpa.bound_ops
    return {
        "conv": (ops.BoundConv,), "bn": (ops.BoundBatchNormalization,), "relu": (ops.BoundRelu,),
        "pool": (ops.BoundMaxPool, ops.BoundAveragePool, ops.BoundGlobalAveragePool), "flatten": (ops.BoundFlatten, ops.BoundReshape),
        "add": (ops.BoundAdd,), "linear": (ops.BoundLinear, ops.BoundMatMul),
    }


class UnsupportedModelError(ValueError):
    """auto_LiRPA cannot bound the model; the message names the operation that failed."""


@contextmanager
def naming_failed_operation(lirpa, what: str):
    """Re-raise an error auto_LiRPA meets inside one of its bound operations as an UnsupportedModelError that names
    the operation (its class and graph node), which its own messages often do not."""
    try:
        yield
    except Exception as exc:
        op = None
        tb = exc.__traceback__
        while tb is not None:  # the innermost frame that runs a method of a bound operation
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, lirpa.bound_ops.Bound):
                op = owner
            tb = tb.tb_next
        if op is None:
            raise
        kind = type(op).__name__[len("Bound"):] if type(op).__name__.startswith("Bound") else type(op).__name__
        raise UnsupportedModelError(f"auto_LiRPA cannot {what} this model: its {kind} operation (graph node "
                                    f"{op.name}) failed: {type(exc).__name__}: {exc}") from exc


def relu_relaxation(lower: torch.Tensor, upper: torch.Tensor):
    """(lower slope, upper slope, upper intercept) of auto_LiRPA 0.3's default ("adaptive") CROWN
    relaxation of ReLU for input bounds [lower, upper]; tests check it against a backward pass."""
    lb_r = lower.clamp(max=0)
    ub_r = torch.maximum(upper.clamp(min=0), lb_r + 1e-8)
    upper_d = ub_r / (ub_r - lb_r)
    return (upper_d > 0.5).to(upper_d.dtype), upper_d, -lb_r * upper_d


class PSNBounder:
    """auto_LiRPA bound computation that collects the PSN terms of every scored node.

    Built once per model (tracing is the slow part) and reused for every image batch. Each scored node
    is matched to the graph node of the same kind (conv, BatchNorm, ReLU, ...) whose value equals the
    node's on a probe input; all of the ReLU inputs (``relu_inputs`` set) or all graph nodes between
    the normalised input and the logits (``all`` set) must be matched. Runs on ``device`` (default:
    :func:`advneurons.runtime.device`, CUDA when the job sees a GPU); results come back on the CPU.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, method: str = "CROWN", mem_budget_mb: float = 2048,
                 layers: "OrderedDict[str, ScoredLayer] | None" = None, device=None, last_nodes: int | None = None):
        if method not in BOUND_METHODS:
            raise ValueError(f"unknown bound method {method!r}; choose one of {', '.join(BOUND_METHODS)}")
        if not mem_budget_mb > 0:
            raise ValueError(f"memory budget must be positive, got {mem_budget_mb} MB")

        self.lirpa = import_auto_lirpa()
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.eval().to(self.device)
        self.method = method
        self.mem_budget_bytes = float(mem_budget_mb) * 2**20
        self.layers = layers if layers is not None else scored_layers(model)
        example = example[:1].detach().to(self.device).float()
        with naming_failed_operation(self.lirpa, "trace"):
            self.bm = bounded_module(self.model, example, bound_opts={"sparse_intermediate_bounds": False},
                                     device=self.device)
        self.input_name = self.bm.input_name[0]
        self.output_name = self.bm.output_name[0]
        norm = input_normalisation(self.model)
        # before terms are taken w.r.t. the normalised input, as the reference bounds the normalised image
        self.input_std = norm[1].to(self.device).float() if norm is not None else None
        matched = self._match_nodes(example)
        if last_nodes is not None and last_nodes < 1:
            raise ValueError(f"last_nodes must be at least 1 (or None for every node), got {last_nodes}")
        scored = list(matched)[-last_nodes:] if last_nodes is not None else list(matched)
        self.node_of = OrderedDict((name, matched[name]) for name in scored)
        # Nodes of the set left unscored (last_nodes) get IBP bounds instead of a CROWN pass of their own.
        self._ibp_nodes = [node for name, node in matched.items() if name not in self.node_of]
        self.layers = OrderedDict((name, self.layers[name]) for name in scored)
        self.layer_of_node = {node: name for name, node in self.node_of.items()}
        self._consumers = self._graph_consumers()
        self._largest_before = self._largest_ancestor_sizes()
        self._orig_backward = self.bm.backward_general
        self._recording: dict[str, tuple] | None = None

    # -- graph ---------------------------------------------------------------------------------
    def _graph_nodes(self, probe) -> list:
        """The graph nodes strictly between the normalised input and the logits, in graph order."""
        nodes = list(self.bm._modules.values())
        start = self.input_name
        norm = input_normalisation(self.model)
        if norm is not None:
            target = (probe - norm[0]) / norm[1]
            hits = [n.name for n in nodes if isinstance(getattr(n, "forward_value", None), torch.Tensor)
                    and n.forward_value.shape == target.shape and torch.allclose(n.forward_value, target, atol=1e-6)
                    and n.name != self.input_name]
            if not hits:
                raise RuntimeError("no auto_LiRPA node holds the model's normalised input")
            start = hits[-1]
        below, changed = {start}, True
        while changed:
            changed = False
            for n in nodes:
                if n.name not in below and any(i.name in below for i in n.inputs):
                    below.add(n.name)
                    changed = True
        return [n for n in nodes if n.name in below and n.name not in (start, self.output_name)]

    def _match_nodes(self, example):
        gen = torch.Generator().manual_seed(12345)
        probe = torch.rand(example.shape, generator=gen).to(self.device)
        acts = layer_activations(self.model, probe, self.layers)
        with torch.no_grad():
            self.bm(probe)
        eligible = self._graph_nodes(probe)
        classes = _kind_classes(self.lirpa)
        node_of = OrderedDict()
        for name, layer in self.layers.items():
            value = acts[name]
            hits = [
                n.name for n in eligible
                if isinstance(n, classes[layer.kind]) and n.forward_value.shape == value.shape
                and torch.allclose(n.forward_value, value, rtol=1e-4, atol=1e-5)
            ]
            if len(hits) != 1:
                raise RuntimeError(f"scored node {name} ({layer.kind}) matches {len(hits)} auto_LiRPA nodes by value")
            if hits[0] in node_of.values():
                raise RuntimeError(f"auto_LiRPA node {hits[0]} matched by two scored nodes")
            node_of[name] = hits[0]
        matched = set(node_of.values())
        if all(layer.relu_input for layer in self.layers.values()):
            relu_cls = self.lirpa.bound_ops.BoundRelu
            needed = {n.inputs[0].name for n in eligible if isinstance(n, relu_cls)}
            what = "ReLU inputs"
        else:
            needed = {n.name for n in eligible}
            what = "nodes between the normalised input and the logits"
        if needed - matched:
            missing = ", ".join(f"{n} ({type(self.bm[n]).__name__[len('Bound'):]})" for n in sorted(needed - matched))
            raise RuntimeError(f"auto_LiRPA {what} without a scored node: {missing} (a functional op or a module "
                               "the PSN naming does not know; with an external model, PSN scores modules called once "
                               "and the sums ReLU modules read)")
        return node_of

    def _graph_consumers(self) -> dict:
        consumers = {n.name: [] for n in self.bm._modules.values()}
        for n in self.bm._modules.values():
            for i in n.inputs:
                consumers[i.name].append(n)
        return consumers

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
        L, dev = self.lirpa, self.device
        shape = list(node.output_shape[1:])
        dim = _prod(shape)
        for start in range(0, dim, rows):
            flat = torch.arange(start, min(dim, start + rows), device=dev)
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
                eye = torch.eye(channels, device=dev).view(channels, 1, 1, 1, channels, 1, 1)
                eye = eye.expand(-1, 1, shape[1], shape[2], -1, 1, 1)
                pieces = eye[idx[0], :, idx[1], idx[2]].expand(-1, batch, -1, -1, -1)
                C = L.patches.Patches(pieces, 1, 0, pieces.shape, unstable_idx=idx, output_shape=[batch, *shape])
                yield C, idx
            elif isinstance(node, (L.bound_ops.BoundLinear, L.bound_ops.BoundMatMul)):
                yield L.utils.OneHotC([batch, k, *shape], self.bm.device, flat, None), flat
            else:
                C = torch.zeros(1, k, dim, device=dev)
                C[0, torch.arange(k, device=dev), flat] = 1.0
                yield C.expand(batch, -1, -1).reshape(batch, k, *shape), flat

    def _input_row_norms(self, A, batch) -> torch.Tensor:
        """L2 norm of each specification row of a root coefficient record w.r.t. the normalised input
        (the pixel-space coefficients times each input channel's std), shape (batch, rows)."""
        if A is None:
            raise RuntimeError("auto_LiRPA left no coefficient at the input node")
        root = self.bm[self.input_name]
        in_shape = root.center.shape if getattr(root, "center", None) is not None else root.value.shape
        if isinstance(A, self.lirpa.patches.Patches):
            # sum of squared patch entries over the positions that fall inside the image (padding
            # excluded): the library's own patch-times-image product with an image holding each
            # channel's squared std (all ones without a normalisation).
            weights = torch.ones(in_shape, dtype=A.patches.dtype, device=self.device)
            if self.input_std is not None:
                weights = weights * self.input_std.pow(2)
            squares = A.create_similar(patches=A.patches.pow(2))
            sq = squares.matmul(weights, input_shape=in_shape)
            return sq.reshape(batch, -1).clamp_min(0).sqrt()
        if isinstance(A, torch.Tensor):  # (spec, batch, *input)
            if self.input_std is not None:
                A = A * self.input_std.unsqueeze(0)
            return A.reshape(A.shape[0], A.shape[1], -1).norm(dim=2).transpose(0, 1)
        raise TypeError(f"unexpected coefficient type {type(A).__name__} at the input")

    def _backward_from(self, node, full_C=None):
        """Bounds of every unit of ``node`` by a backward pass over chunks of units, recording the
        L2 norms of the lower / upper input coefficients of each unit. Returns
        (lb, ub, before_lower, before_upper)."""
        batch = self.bm.batch_size
        shape = list(node.output_shape[1:])
        dim = _prod(shape)
        rows = self.rows_per_chunk(node.name, batch)
        keep_return_A = self.bm.return_A
        # return_A=False lets auto_LiRPA free each node's coefficients as soon as it has passed them
        # on; the input node's coefficients (a graph root) stay available after the pass.
        self.bm.return_A = False
        lbs, ubs, lnorms, unorms = [], [], [], []
        try:
            if rows >= dim and full_C is not None:
                chunks = [(full_C, None)]
            else:
                chunks = self._chunk_specs(node, batch, min(rows, dim))
            for C, idx in chunks:
                lb, ub = self._orig_backward(C=C, node=node, unstable_idx=idx)
                root = self.bm[self.input_name]
                lnorms.append(self._input_row_norms(root.lA, batch))
                unorms.append(self._input_row_norms(root.uA, batch))
                lbs.append(lb.reshape(batch, -1))
                ubs.append(ub.reshape(batch, -1))
                root.lA = root.uA = None
        finally:
            self.bm.return_A = keep_return_A
        return tuple(torch.cat(parts, 1).reshape(batch, *shape) for parts in (lbs, ubs, lnorms, unorms))

    def _wrapped_backward(self, *args, **kwargs):
        """Stands in for ``BoundedModule.backward_general`` during compute_bounds: intermediate bounds
        of scored nodes go through :meth:`_backward_from` (recording the before term); other
        intermediate nodes run without keeping coefficients."""
        node = kwargs.get("node")
        wants_A = self.bm.return_A
        if node is None or node.name == self.bm.final_name:
            return self._orig_backward(*args, **kwargs)
        if self._recording is not None and node.name in self.layer_of_node:
            C = kwargs.get("C", args[0] if args else None)
            full_C = C if kwargs.get("unstable_idx") is None and not isinstance(C, str) else None
            recorded = self._backward_from(node, full_C)
            self._recording[node.name] = recorded
            lb, ub = recorded[:2]
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

    def _after_norms(self, node) -> torch.Tensor:
        """After the final (logits) pass auto_LiRPA keeps at every node the logits' coefficients with
        respect to that node's output, summed over all the node's consumers (it frees them only in
        intermediate passes): the after term, norm over the logits."""
        if node.lA is None or node.uA is None:
            raise RuntimeError(f"the logits' backward pass left no coefficients at node {node.name}")
        if not isinstance(node.lA, torch.Tensor) or not isinstance(node.uA, torch.Tensor):
            raise TypeError(f"unexpected coefficient type {type(node.lA).__name__} at node {node.name}")
        return node.lA.norm(dim=0) + node.uA.norm(dim=0)  # (spec, batch, *shape) -> (batch, *shape)

    def derivation_plan(self) -> dict:
        """Scored nodes whose before term follows exactly from another scored node's backward pass, so
        that pass is shared instead of repeated: ``name -> (rule, source node name)``.

        * a conv output read only by a BatchNorm with nonzero scale s: coefficients of the BN unit are s
          times the conv unit's (lower and upper swap where s < 0);
        * a ReLU output: its unit's coefficients are its input unit's, scaled by the relaxation's lower /
          upper slope (both >= 0, so lower and upper rows stay apart);
        * a flatten: the same units, reshaped.
        """
        plan = {}
        bn_cls = self.lirpa.bound_ops.BoundBatchNormalization
        for name, node_name in self.node_of.items():
            node, kind = self.bm[node_name], self.layers[name].kind
            source = node.inputs[0].name if node.inputs else None
            if kind in ("relu", "flatten") and source in self.layer_of_node:
                plan[name] = (kind, source)
            elif kind == "conv":
                consumers = self._consumers[node_name]
                if len(consumers) == 1 and isinstance(consumers[0], bn_cls) and consumers[0].name in self.layer_of_node:
                    scale = self._bn_scale(consumers[0].name)
                    if bool((scale.abs() > 1e-12).all()):
                        plan[name] = ("bn", consumers[0].name)
        return plan

    def _bn_scale(self, bn_node_name) -> torch.Tensor:
        module = self.layers[self.layer_of_node[bn_node_name]].module
        return (module.weight / torch.sqrt(module.running_var + module.eps)).detach().to(self.device)

    def _derive(self, rule, node_name, source_name, recorded):
        lb, ub, bl, bu = recorded[source_name]
        batch = lb.shape[0]
        shape = list(self.bm[node_name].output_shape[1:])
        if rule == "flatten":
            return tuple(t.reshape(batch, *shape) for t in (lb, ub, bl, bu))
        if rule == "relu":
            source = self.bm[source_name]
            lower_d, upper_d, upper_b = relu_relaxation(source.lower, source.upper)
            return (lower_d * lb, upper_d * ub + upper_b, lower_d * bl, upper_d * bu)
        # rule "bn": the source is the BN node reading this conv output
        module = self.layers[self.layer_of_node[source_name]].module
        scale = self._bn_scale(source_name).view(1, -1, *([1] * (lb.dim() - 2)))
        mean = module.running_mean.detach().to(self.device).view_as(scale)
        beta = module.bias.detach().to(self.device).view_as(scale) if module.bias is not None else torch.zeros_like(scale)
        positive = scale > 0
        lo, hi = (lb - beta) / scale + mean, (ub - beta) / scale + mean
        return (torch.where(positive, lo, hi), torch.where(positive, hi, lo),
                torch.where(positive, bl, bu) / scale.abs(), torch.where(positive, bu, bl) / scale.abs())

    def _ibp_bounds(self, x, eps) -> dict:
        """IBP bounds of the nodes left unscored (``last_nodes``), handed to compute_bounds as fixed
        intermediate bounds so that CROWN runs no backward pass for them: what makes a few late nodes of a
        full-width model affordable (a rehearsal). The relaxations upstream of the scored nodes are then
        IBP's, so their scores are not those of a run over every node."""
        self.bm.compute_bounds(x=(self._ball(x, eps),), method="IBP")
        return {name: (self.bm[name].lower.detach(), self.bm[name].upper.detach()) for name in self._ibp_nodes}

    @torch.no_grad()
    def terms(self, x: torch.Tensor, eps: float, share: bool = True) -> "OrderedDict[str, LayerTerms]":
        """PSN terms (and unit bounds) of every scored node for a batch of images and ball radius eps.

        ``share=False`` runs a backward pass of its own for every node (the tests compare both ways).
        """
        x = x.detach().to(self.device).float()
        fixed = self._ibp_bounds(x, eps) if self._ibp_nodes else None
        self._recording = {}
        self.bm.backward_general = self._wrapped_backward
        try:
            with naming_failed_operation(self.lirpa, "bound"):
                self.bm.compute_bounds(x=(self._ball(x, eps),), method=self.method, intermediate_layer_bounds=fixed)
            # read before any further backward pass resets the coefficients
            after = {name: self._after_norms(self.bm[node]) for name, node in self.node_of.items()}
            plan = {n: p for n, p in self.derivation_plan().items() if self.node_of[n] not in self._recording} if share else {}
            # Scored nodes whose bounds compute_bounds did not get by a backward pass (all of them under
            # CROWN-IBP; under CROWN the nodes no ReLU or pooling reads), and that no shared pass covers,
            # get one now, with the intermediate bounds compute_bounds left in place.
            for name, node_name in self.node_of.items():
                if node_name not in self._recording and name not in plan:
                    self._recording[node_name] = self._backward_from(self.bm[node_name])
            for name, (rule, source) in plan.items():  # sources are never derived themselves
                self._recording[self.node_of[name]] = self._derive(rule, self.node_of[name], source, self._recording)
            out = OrderedDict()
            for name, node_name in self.node_of.items():
                lb, ub, bl, bu = (t.cpu() for t in self._recording[node_name])
                out[name] = LayerTerms(before=bl + bu, after=after[name].reshape(bl.shape).cpu(), lower=lb, upper=ub,
                                       before_lower=bl, before_upper=bu)
            return out
        finally:
            self._recording = None
            del self.bm.backward_general  # back to the class method
            for node in self.bm._modules.values():
                node.lA = node.uA = None


# ------------------------------------------------------------------------------------------ scores
def zscore(values: np.ndarray, axis=None) -> np.ndarray:
    """(v - mean) / (std + 1e-9) with the unbiased std, as the reference computes it (torch's
    ``x.std()``), over all entries (``axis=None``) or along ``axis``. Where the std is undefined (one
    entry) or zero the z-scores are 0."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size if axis is None else np.prod([values.shape[a] for a in np.atleast_1d(axis)])
    mean = values.mean(axis=axis, keepdims=True)
    if n < 2:
        return np.zeros_like(values)
    std = values.std(axis=axis, ddof=1, keepdims=True)
    z = (values - mean) / (std + SCORE_FLOOR)
    return np.where(std > 0, z, 0.0)


def psn_score(before: np.ndarray, after: np.ndarray, variant: str = "faithful", population: str = "image") -> np.ndarray:
    """Per (image, unit) entry: sqrt(max(z(before) * z(after), 0) + 1e-9).

    ``before`` / ``after`` are shaped (images, *unit shape). ``population="image"`` (the reference's)
    z-scores each image's units separately; ``"all"`` z-scores all (image, unit) entries together.
    ``variant="positive"`` keeps the product only where both z-scores are positive.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown score variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if population not in ZSCORE_POPULATIONS:
        raise ValueError(f"unknown z-score population {population!r}; choose one of {', '.join(ZSCORE_POPULATIONS)}")
    if np.shape(before) != np.shape(after):
        raise ValueError(f"before {np.shape(before)} and after {np.shape(after)} differ in shape")
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    axis = tuple(range(1, before.ndim)) if population == "image" and before.ndim > 1 else None
    zb, za = zscore(before, axis), zscore(after, axis)
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
                variant: str = "faithful", population: str = "image") -> pd.DataFrame:
    """Long table, one row per unit: layer, kind, depth, block, conv, channel, h, w, score, before, after
    (per-image scores, z-scored over ``population``, then averaged over the images; terms averaged)."""
    frames = []
    for depth, (name, t) in enumerate(terms.items()):
        before = t.before.double().numpy()
        after = t.after.double().numpy()
        score = psn_score(before, after, variant, population).mean(0).reshape(-1)
        c, h, w = _unit_index(before.shape[1:])
        layer = layers[name]
        frames.append(pd.DataFrame({
            "layer": name, "kind": layer.kind, "depth": depth, "block": layer.block, "conv": layer.conv or "",
            "channel": c, "h": h, "w": w, "score": score,
            "before": before.mean(0).reshape(-1), "after": after.mean(0).reshape(-1),
        }))
    return pd.concat(frames, ignore_index=True)


def concat_terms(parts: "list[OrderedDict[str, LayerTerms]]") -> "OrderedDict[str, LayerTerms]":
    """Join the terms of several image batches along the image axis."""
    out = OrderedDict()
    for name in parts[0]:
        fields = {f: torch.cat([getattr(p[name], f) for p in parts]) for f in ("before", "after", "lower", "upper")}
        for f in ("before_lower", "before_upper"):
            if all(getattr(p[name], f) is not None for p in parts):
                fields[f] = torch.cat([getattr(p[name], f) for p in parts])
        out[name] = LayerTerms(**fields)
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

    perm = torch.randperm(n_available, generator=generator(seed))[:n_images]
    return np.sort(perm.numpy())


# ------------------------------------------------------------------------------------------ steps
def psn_scores(model_path: Path, images_path: Path, n_images: int | None, eps: float, bound_method: str,
               mem_budget_mb: float, seed: int, out_path: Path, meta_path: Path,
               variant: str = "faithful", zscore: str = "image", nodes: str = "relu_inputs",
               device=None, last_nodes: int | None = None) -> pd.DataFrame:
    """Workflow step: PSN score of every unit of every scored node.

    ``images_path``: a split ``.npz`` (test split); ``n_images`` random images of it (seeded; None: all)
    are scored; ``eps`` in 1/255 units; ``bound_method`` "CROWN" or "CROWN-IBP"; ``mem_budget_mb``
    bounds the coefficient memory of one backward pass (GPU memory when it runs on CUDA); ``zscore``
    "image" or "all" (:func:`psn_score`); ``nodes`` "relu_inputs" or "all" (:mod:`advneurons.psn.graph`);
    ``last_nodes``: score only the last k nodes of that set (the others get IBP bounds; a rehearsal's
    count, see :meth:`PSNBounder._ibp_bounds`); ``device`` None: CUDA when the job sees a GPU, else the CPU. Writes ``out_path`` (CSV,
    gzip-compressed when it ends in .gz; columns layer, kind, depth, block, conv, channel, h, w, score,
    before, after) and a metadata JSON with per-node summaries, timings and the device.
    """
    import time

    if bound_method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {bound_method!r}; choose one of {', '.join(BOUND_METHODS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown score variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if zscore not in ZSCORE_POPULATIONS:
        raise ValueError(f"unknown z-score population {zscore!r}; choose one of {', '.join(ZSCORE_POPULATIONS)}")
    check_node_set(nodes)
    if not eps > 0:
        raise ValueError(f"eps must be positive (1/255 units), got {eps}")
    if not mem_budget_mb > 0:
        raise ValueError(f"memory budget must be positive, got {mem_budget_mb} MB")
    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be at least 1 (or None for all), got {n_images}")
    model, ckpt = load_model(model_path)
    images, labels = load_split(images_path)
    index = select_images(len(images), n_images, seed)
    layers = scored_layers(model, nodes)
    start = time.perf_counter()
    bounder = PSNBounder(model, images[:1], bound_method, mem_budget_mb, layers, device=device, last_nodes=last_nodes)
    terms = compute_terms(bounder, images[index], from_255(eps))
    seconds = time.perf_counter() - start
    table = score_table(terms, bounder.layers, variant, zscore)
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
             "bound_method": bound_method, "mem_budget_mb": mem_budget_mb, "variant": variant,
             "zscore": zscore, "nodes": nodes, "last_nodes": last_nodes},
            seed=seed,
            arch=ckpt.get("arch"),
            bound_device=str(bounder.device),
            shared_passes=bounder.derivation_plan(),
            image_indices=index.tolist(),
            seconds=round(seconds, 2),
            rows_per_chunk={name: bounder.rows_per_chunk(node, 1) for name, node in bounder.node_of.items()},
            per_layer=per_layer.to_dict(orient="index"),
        ),
        meta_path,
    )
    return table


def top_count(n_units: int, percent: float) -> int:
    """max(1, floor(N * p)) with p = percent / 100, computed as the reference does (int(N * p))."""
    return max(1, int(n_units * (percent / 100.0)))


def top_units_table(scores: pd.DataFrame, percent: float) -> pd.DataFrame:
    """The top ``percent``% units of each node by score, k = max(1, floor(N * percent / 100)) as the
    reference counts them, ranked from 1; ties broken by (channel, h, w) so the selection is
    deterministic."""
    if not 0 < percent <= 100:
        raise ValueError(f"top percentage must be in (0, 100], got {percent}")
    picked = []
    for _, group in scores.groupby("depth", sort=True):
        k = top_count(len(group), percent)
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


def psn_top_units(scores_path: Path, percents, out_path: Path) -> pd.DataFrame:
    """Workflow step: top-p% units per layer for every p in ``percents`` (e.g. [0.1, 1, 10]).

    Writes a CSV (gzip when it ends in .gz) with columns percent, layer, depth, block, conv, channel,
    h, w, score, before, after, rank, n_units.
    """

    percents = [float(p) for p in percents]
    for p in percents:
        if not 0 < p <= 100:
            raise ValueError(f"top percentage must be in (0, 100], got {p}")
    scores = read_scores(scores_path)
    table = pd.concat([top_units_table(scores, p) for p in percents], ignore_index=True)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False, compression="gzip" if str(out_path).endswith(".gz") else None)
    return table
