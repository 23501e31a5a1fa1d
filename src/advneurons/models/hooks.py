"""Forward hooks on a model's modules, registered for the duration of a ``with`` block and removed on the way
out, also when the block raises: the one way the package reads or edits activations (sensitivity, SNS
suppression, PSN recording, MeanSparse statistics, penultimate features)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn

Hook = tuple[nn.Module, Callable]


@contextmanager
def hooked(on_output: Iterable[Hook] = (), on_input: Iterable[Hook] = ()):
    """Register ``fn(module, inputs, output)`` after each module of `on_output` (its return value, when not
    None, replaces the output) and ``fn(module, inputs)`` before each module of `on_input`."""
    handles = []
    try:
        handles += [module.register_forward_hook(fn) for module, fn in on_output]
        handles += [module.register_forward_pre_hook(fn) for module, fn in on_input]
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def captured_outputs(module: nn.Module):
    """The outputs of `module`, one tensor per forward pass while the block runs, in a list."""
    outputs: list[torch.Tensor] = []
    with hooked(on_output=[(module, lambda _m, _i, out: outputs.append(out))]):
        yield outputs
