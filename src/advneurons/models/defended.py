"""The structures of defended models, which a checkpoint's ``defense`` record rebuilds before its weights load.

Kept apart from the code that builds and evaluates the defenses (advneurons.defenses.meansparse, advneurons.defenses.ig_defense)
so that loading a checkpoint depends only on these structures: editing a defense's analysis code does not
change the code fingerprint of every rule that loads a model.

* MeanSparse: :class:`MeanSparseReLU` in place of every ReLU of the model (record: alpha, channel counts).
* IG-Defense: :class:`IGDefense` around the model (record: classes, channels, noise, temperature, EOT draws).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from advneurons.models.hooks import captured_outputs

MEANSPARSE = "meansparse"
IG_DEFENSE = "ig_defense"


def rebuild_defense(model: nn.Module, record: dict) -> nn.Module:
    """The defended structure ``record`` describes, built in or around ``model`` (weights load afterwards)."""
    kind = record.get("type") if isinstance(record, dict) else None
    if kind == MEANSPARSE:
        return rebuild_meansparse(model, record)
    if kind == IG_DEFENSE:
        return rebuild_ig_defense(model, record)
    raise ValueError(f"unknown defense type {kind!r}")


# ---------------------------------------------------------------------------------------- MeanSparse
class MeanSparseReLU(nn.Module):
    """ReLU(where(|x - mu| <= alpha * s, mu, x)), mu and s per channel (dim 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.zeros(channels))
        self.register_buffer("alpha", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mu, s = self.mean.view(shape), self.std.view(shape)
        if x.dtype != mu.dtype:  # e.g. bfloat16 activations, which where() promotes to the statistics' dtype
            inside = (x - mu).abs() <= self.alpha * s
            return torch.relu(torch.where(inside, mu.expand_as(x), x))
        # The same selection as a blend with weights 0 / 1, because where() on a boolean mask is a slow path on the
        # CPU (at width 1/8 it made this ReLU cost as much as a convolution). lerp(x, mu, w) is x for w = 0 and
        # mu for w = 1 exactly (lerp computes end - (end - start) * (1 - w) for w >= 0.5), and its gradient
        # w.r.t. x is (1 - w): where()'s. w = min(sign(alpha s - |x - mu|) + 1, 1) is 1 exactly when
        # |x - mu| <= alpha s (a difference of floats is >= 0 exactly when the first is >= the second). Same
        # values as where() (an infinite activation aside, which lerp turns into NaN); a zero may differ in sign.
        with torch.no_grad():
            weight = torch.sub(self.alpha * s, torch.sub(x, mu).abs_()).sign_().add_(1.0).clamp_(max=1.0)
        return torch.lerp(x, mu.expand_as(x), weight).relu_()

    def extra_repr(self) -> str:
        return f"channels={self.mean.numel()}, alpha={float(self.alpha):g}"


def _relu_slots(model: nn.Module) -> "OrderedDict[str, tuple[nn.Module, str]]":
    """relu name (model.relus()) -> (parent module, attribute name) of that ReLU."""
    by_id = {id(m): name for name, m in model.relus().items()}
    slots = OrderedDict()
    for parent in model.modules():
        for attr, child in parent.named_children():
            if id(child) in by_id:
                slots[by_id[id(child)]] = (parent, attr)
    missing = [n for n in model.relus() if n not in slots]
    if missing:
        raise ValueError(f"ReLUs not found as child modules: {missing}")
    return OrderedDict((n, slots[n]) for n in model.relus())



def attach(model: nn.Module, stats: "dict[str, tuple[torch.Tensor, torch.Tensor]] | None" = None,
           alpha: float = 0.0, channels: "dict[str, int] | None" = None) -> nn.Module:
    """Swap every ReLU of ``model`` for a MeanSparseReLU (in place) with ``stats`` and ``alpha``; without
    stats, ``channels`` gives the sizes (buffers to be filled by load_state_dict)."""
    for name, (parent, attr) in _relu_slots(model).items():
        if stats is not None:
            mean, std = stats[name]
            module = MeanSparseReLU(len(mean))
            module.mean.copy_(mean)
            module.std.copy_(std)
        else:
            module = MeanSparseReLU(channels[name])
        module.alpha.fill_(float(alpha))
        setattr(parent, attr, module)
    return model


def set_alpha(model: nn.Module, alpha: float) -> None:
    for module in model.modules():
        if isinstance(module, MeanSparseReLU):
            module.alpha.fill_(float(alpha))


def meansparse_record(stats, alpha: float) -> dict:
    """What a checkpoint stores to rebuild the structure (the buffers travel in the state dict)."""
    return {"type": MEANSPARSE, "alpha": float(alpha), "channels": {n: int(len(m)) for n, (m, _) in stats.items()}}


def rebuild_meansparse(model: nn.Module, record: dict) -> nn.Module:
    """Called by checkpoint.load_model for a checkpoint whose ``defense`` is MeanSparse."""
    if record.get("type") != MEANSPARSE:
        raise ValueError(f"unknown defense type {record.get('type')!r}")
    return attach(model, None, record["alpha"], record["channels"])


# ---------------------------------------------------------------------------------------- IG-Defense
def linear_head(model: nn.Module) -> nn.Linear:
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"IG-Defense needs a model whose head `fc` is one nn.Linear, not {type(fc).__name__}")
    return fc


def penultimate(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features feeding the head, logits) of one batch; gradients flow when enabled."""
    with captured_outputs(model.penultimate()) as captured:
        logits = model(x)
    features = captured[-1]
    if features.dim() != 2 or features.shape[1] != linear_head(model).in_features:
        raise ValueError(f"penultimate output of shape {tuple(features.shape)} does not feed the head "
                         f"({linear_head(model).in_features} inputs)")
    return features, logits



class IGDefense(nn.Module):
    """Two-pass IG-Defense around a trained model (eval mode throughout; parameters are the base model's).

    ``randomised`` and :meth:`expected_logits` are the protocol the attack code uses to attack a randomised
    defense adaptively (advneurons.attacks.core.attack_target).
    """

    randomised = True

    def __init__(self, model: nn.Module, mask: torch.Tensor, noise_std: float, temperature: float, eot_samples: int):
        super().__init__()
        if mask.shape[1] != linear_head(model).in_features:
            raise ValueError(f"mask has {mask.shape[1]} channels, the head takes {linear_head(model).in_features}")
        if noise_std < 0 or temperature <= 0 or eot_samples < 1:
            raise ValueError("noise_std >= 0, temperature > 0 and eot_samples >= 1 are required")
        self.model = model
        self.register_buffer("mask", mask.float().clone())
        self.noise_std = float(noise_std)
        self.temperature = float(temperature)
        self.eot_samples = int(eot_samples)

    @property
    def fc(self) -> nn.Linear:
        """The base model's head (attacks read the class count from it)."""
        return linear_head(self.model)

    def _soft_prediction(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.noise_std * torch.randn_like(x)
        return torch.softmax(self.temperature * self.model(noisy), dim=1)

    def _masked_logits(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        features, _ = penultimate(self.model, x)
        return self.fc(features * (probs @ self.mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One draw of the randomised defense."""
        return self._masked_logits(x, self._soft_prediction(x))

    def expected_logits(self, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """Mean logits over ``n_samples`` noise draws (default ``eot_samples``): exact by linearity of the
        head in the mask, with one pass 2 for all draws."""
        n = self.eot_samples if n_samples is None else int(n_samples)
        probs = torch.stack([self._soft_prediction(x) for _ in range(n)]).mean(0)
        return self._masked_logits(x, probs)

    def extra_repr(self) -> str:
        k = int(self.mask.sum(1).max()) if self.mask.numel() else 0
        return (f"classes={self.mask.shape[0]}, channels={self.mask.shape[1]}, k={k}, noise_std={self.noise_std:.4g}, "
                f"temperature={self.temperature:g}, eot_samples={self.eot_samples}")


def ig_defense_record(mask: torch.Tensor, noise_std: float, temperature: float, eot_samples: int) -> dict:
    """Plain data to rebuild the structure; the mask travels in the state dict."""
    return {"type": IG_DEFENSE, "classes": int(mask.shape[0]), "channels": int(mask.shape[1]),
            "noise_std": float(noise_std), "temperature": float(temperature), "eot_samples": int(eot_samples)}


def rebuild_ig_defense(model: nn.Module, record: dict) -> IGDefense:
    """Called by checkpoint.load_model for a checkpoint whose ``defense`` is IG-Defense."""
    if record.get("type") != IG_DEFENSE:
        raise ValueError(f"unknown defense type {record.get('type')!r}")
    mask = torch.zeros(int(record["classes"]), int(record["channels"]))
    return IGDefense(model, mask, record["noise_std"], record["temperature"], record["eot_samples"])
