"""Import auto_LiRPA 0.3 on current torch / numpy, and compute bounds with it.

auto_LiRPA 0.3 pins torch<1.13 and numpy<2, so it is installed with ``--no-deps`` and does not
import (or run) as shipped. Instead of editing site-packages, this module applies the needed fixes
at import time, so a fresh ``pip install --no-deps auto-lirpa==0.3`` works:

1. ``numpy.lib.arraysetops`` is gone in numpy 2 (``operators/base.py`` imports ``isin`` from it,
   without using it): a shim module holding ``numpy.isin`` is put into ``sys.modules``.
2. ``torch._six`` is gone since torch 2.0 (``BoundedModule.register_parameter`` checks names with
   ``torch._six.string_classes``): a shim module with ``string_classes = (str,)`` is installed.
3. ``torch.onnx.symbolic_helper._set_opset_version`` is gone since torch 2.x (``parse_graph``
   imports it to pin the ONNX opset to 12 before ``_optimize_graph``): an equivalent that sets the
   TorchScript exporter's ``GLOBALS.export_onnx_opset_version`` is added to that module.
4. ``torch._C.Node.__getitem__`` (``node[attr_name]``, which old ``torch.onnx`` attached itself) is
   gone; ``parse_graph`` reads node attributes with it: it is re-attached using ``Node.kindOf``.
5. ``bound_general`` calls ``warnings.simplefilter('once')`` at import, which would silently change
   the warning filters of the whole process (and of pytest): the import runs in
   ``warnings.catch_warnings()``, which restores them.
6. ``BoundedModule._named_members`` lacks the ``remove_duplicate`` argument that torch 2 passes
   (``parameters()`` fails inside CROWN): it is wrapped to accept and ignore it.
7. An auto_LiRPA 0.3 bug: CROWN in 'patches' conv mode asserts on ``(x - mean) / std`` with
   (1, C, 1, 1) buffers when the batch has more than one image: ``BoundMul._multiply_by_const``
   is wrapped to broadcast such constants over the batch.
8. An auto_LiRPA 0.3 bug: CROWN through MaxPool2d fails for batches of more than one image
   (``.view`` of a non-contiguous A matrix): ``BoundMaxPool.bound_backward`` gets contiguous A.

Everything else in the package imports auto_LiRPA only through :func:`import_auto_lirpa`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import warnings

import numpy as np
import torch
from torch import nn

__all__ = [
    "import_auto_lirpa",
    "bounded_module",
    "linf_bounds",
    "linf_linear_bounds",
    "METHODS",
]

METHODS = ("IBP", "CROWN", "CROWN-IBP")

_lirpa = None


def _install_shims() -> None:
    # Fix 1: numpy 2 removed numpy.lib.arraysetops.
    try:
        importlib.import_module("numpy.lib.arraysetops")
    except ImportError:
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = np.isin
        sys.modules["numpy.lib.arraysetops"] = shim

    # Fix 2: torch 2 removed torch._six.
    if not hasattr(torch, "_six"):
        six = types.ModuleType("torch._six")
        six.string_classes = (str,)
        sys.modules["torch._six"] = six
        torch._six = six

    # Fix 3: torch 2 removed torch.onnx.symbolic_helper._set_opset_version.
    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(opset_version: int) -> None:
            GLOBALS.export_onnx_opset_version = opset_version

        symbolic_helper._set_opset_version = _set_opset_version

    # Fix 4: torch 2 dropped the Python-level torch._C.Node.__getitem__ (node["attr"], which old
    # torch.onnx added itself); parse_graph reads every node attribute that way.
    if not hasattr(torch._C.Node, "__getitem__"):

        def _node_getitem(node, key):
            return getattr(node, node.kindOf(key))(key)

        torch._C.Node.__getitem__ = _node_getitem


def _patch_after_import(lirpa) -> None:
    # Fix 6: torch >= 2.0 calls Module._named_members(..., remove_duplicate=...), which
    # BoundedModule's override does not accept (parameters() then raises TypeError during CROWN).
    # The override always removes duplicates, which is torch's default.
    cls = lirpa.BoundedModule
    if not getattr(cls._named_members, "_advneurons_compat", False):
        original = cls._named_members

        def _named_members(
            self, get_members_fn, prefix="", recurse=True, remove_duplicate=True
        ):
            return original(self, get_members_fn, prefix=prefix, recurse=recurse)

        _named_members._advneurons_compat = True
        cls._named_members = _named_members

    # Fix 7 (an auto_LiRPA 0.3 bug, not a version clash): in the default 'patches' conv mode,
    # multiplying / dividing by a per-channel constant of shape (1, C, 1, 1) -- our in-model
    # (x - mean) / std -- asserts unless the constant's batch dimension equals the input batch,
    # so CROWN fails for any batch of more than one image. A batch-1 constant broadcasts over
    # the batch exactly like the library's own channel-wise branch, which this reuses.
    mul = (
        lirpa.bound_ops.BoundMul
    )  # BoundDiv looks BoundMul._multiply_by_const up at call time
    if not getattr(mul._multiply_by_const, "_advneurons_compat", False):
        original_mul = mul._multiply_by_const
        patches_cls = lirpa.patches.Patches

        def _multiply_by_const(x, const):
            if (
                isinstance(x, patches_cls)
                and isinstance(const, torch.Tensor)
                and const.ndim == 4
                and const.size(0) == 1
                and const.size(1) == x.patches.size(-3)
                and const.size(2) == const.size(3) == 1
            ):
                return x.create_similar(x.patches * const)
            return original_mul(x, const)

        _multiply_by_const._advneurons_compat = True
        mul._multiply_by_const = staticmethod(_multiply_by_const)

    # Fix 8 (auto_LiRPA 0.3 bug): BoundMaxPool.bound_backward reshapes the incoming dense A matrix
    # with .view(), which fails on the non-contiguous A that CROWN hands it for batches of more
    # than one image ("view size is not compatible..."). Making A contiguous first is equivalent.
    maxpool = lirpa.bound_ops.BoundMaxPool
    if not getattr(maxpool.bound_backward, "_advneurons_compat", False):
        original_pool = maxpool.bound_backward

        def bound_backward(self, last_lA, last_uA, *args, **kwargs):
            if isinstance(last_lA, torch.Tensor):
                last_lA = last_lA.contiguous()
            if isinstance(last_uA, torch.Tensor):
                last_uA = last_uA.contiguous()
            return original_pool(self, last_lA, last_uA, *args, **kwargs)

        bound_backward._advneurons_compat = True
        maxpool.bound_backward = bound_backward


def import_auto_lirpa():
    """Return the ``auto_LiRPA`` module, importing it with the compatibility fixes (idempotent)."""
    global _lirpa
    if _lirpa is None:
        _install_shims()
        # Fix 5: catch_warnings restores the filters that auto_LiRPA's import-time
        # warnings.simplefilter('once') calls would otherwise change for the whole process.
        # The torch.jit.script deprecation (auto_LiRPA scripts a few helpers) is only noise; it is
        # dropped at display time because those simplefilter calls override any ignore filter.
        with warnings.catch_warnings():
            show = warnings.showwarning

            def _show(message, category, *args, **kwargs):
                if not (
                    category is FutureWarning and "torch.jit.script" in str(message)
                ):
                    show(message, category, *args, **kwargs)

            warnings.showwarning = _show
            # auto_LiRPA.cuda_utils imports torch.utils.cpp_extension, which logs "No CUDA runtime
            # is found" on CPU-only machines; auto_LiRPA never builds its CUDA kernels here.
            cpp_log = logging.getLogger("torch.utils.cpp_extension")
            level = cpp_log.level
            cpp_log.setLevel(logging.ERROR)
            try:
                _lirpa = importlib.import_module("auto_LiRPA")
            finally:
                cpp_log.setLevel(level)
        _patch_after_import(_lirpa)
    return _lirpa


def bounded_module(model: nn.Module, example_input: torch.Tensor, bound_opts=None, device="cpu"):
    """Wrap ``model`` (put in eval mode, on ``device``) in an auto_LiRPA ``BoundedModule``.

    ``example_input`` fixes the traced input shape apart from the batch dimension. auto_LiRPA runs on
    CUDA as on the CPU; the graph, its parameters and every bound then live on ``device``.
    """
    lirpa = import_auto_lirpa()
    device = torch.device(device)
    model = model.eval().to(device)
    return lirpa.BoundedModule(
        model, example_input.to(device), bound_opts=bound_opts, device=str(device)
    )


def _as_bounded(model, x):
    lirpa = import_auto_lirpa()
    if not isinstance(model, lirpa.BoundedModule):
        model = bounded_module(model, x)
    return model


def _linf_input(x: torch.Tensor, eps: float):
    """``x`` as a BoundedTensor for the L-inf ball of radius eps around it, clipped to [0, 1]."""
    lirpa = import_auto_lirpa()
    x = x.detach().cpu()
    ptb = lirpa.PerturbationLpNorm(
        norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
    )
    return lirpa.BoundedTensor(x, ptb)


def linf_bounds(model, x: torch.Tensor, eps: float, method: str = "CROWN"):
    """(lower, upper) bounds of the outputs over the L-inf ball of radius ``eps`` around ``x``,
    intersected with the pixel box [0, 1].

    ``model`` is a ``BoundedModule`` or a plain ``nn.Module`` (wrapped on the fly, for one-off
    calls). ``method`` is one of ``"IBP"``, ``"CROWN"``, ``"CROWN-IBP"``.
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
        )
    model = _as_bounded(model, x)
    # Without no_grad auto_LiRPA keeps the autograd graph of every relaxation: memory explodes.
    with torch.no_grad():
        lower, upper = model.compute_bounds(x=(_linf_input(x, eps),), method=method)
    return lower, upper


def linf_linear_bounds(model, x: torch.Tensor, eps: float, method: str = "CROWN"):
    """Linear bounds of the outputs in the input over the same ball as :func:`linf_bounds`.

    Returns ``(lA, lbias, uA, ubias, lower, upper)`` such that, for every x' in the ball,
    ``lA[i] . x' + lbias[i] <= model(x')[i] <= uA[i] . x' + ubias[i]`` (``lA``, ``uA``: shape
    ``(N, outputs, *x.shape[1:])``; biases ``(N, outputs)``), and ``lower`` / ``upper`` are those
    bounds minimised / maximised over the ball. ``method`` is ``"CROWN"`` or ``"CROWN-IBP"``.

    Why not just ``compute_bounds(..., return_A=True)``: its ``lbias`` / ``ubias`` leave out the
    terms of constant graph inputs that the backward pass reaches as "roots" (here the model's
    normalisation mean buffer), so ``lA . x + lbias`` is *not* a bound. The full biases are
    recovered from the concretised bounds: auto_LiRPA computes ``lower = lA . c - |lA| . r + b``
    for the box centre c and radius r.
    """
    if method not in ("CROWN", "CROWN-IBP"):
        raise ValueError(f"linear bounds need a backward method, not {method!r}")
    model = _as_bounded(model, x)
    bx = _linf_input(x, eps)
    out_name, in_name = model.output_name[0], model.input_name[0]
    with torch.no_grad():
        lower, upper, a_dict = model.compute_bounds(
            x=(bx,), method=method, return_A=True, needed_A_dict={out_name: [in_name]}
        )
    entry = a_dict[out_name][in_name]
    lA, uA = entry["lA"], entry["uA"]
    if not (isinstance(lA, torch.Tensor) and isinstance(uA, torch.Tensor)):
        raise TypeError(f"expected dense A matrices, got {type(lA).__name__}")
    x_l, x_u = bx.ptb.x_L, bx.ptb.x_U
    centre, radius = ((x_u + x_l) / 2).flatten(1), ((x_u - x_l) / 2).flatten(1)

    def _dot(a, v):  # (N, out, *in) . (N, in) -> (N, out)
        return torch.einsum("noi,ni->no", a.flatten(2), v)

    lbias = lower - (_dot(lA, centre) - _dot(lA.abs(), radius))
    ubias = upper - (_dot(uA, centre) + _dot(uA.abs(), radius))
    return lA, lbias, uA, ubias, lower, upper
