"""Score-based black-box attacks: SPSA (Uesato et al. 2018) and NAttack (Li et al. 2019).

Both see the model only through a `QueryOracle` (logits under torch.no_grad): no gradient of the model is
ever taken. Images stop being attacked once they are misclassified, which saves queries without changing
the outcome (an image counts as fooled as soon as one query point fools it). Population tensors are built
for a few images at a time (at most `population` query images in memory) and go through the model
`chunk` images at a time: on a CPU, forward passes of a few hundred images run fastest per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advneurons.attacks.core import QueryOracle, eval_mode, linf_box, margin, rand_uniform
from advneurons.attacks.white_box import _to_tanh_space

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _iterations(name: str, steps: int, first: int = 0):
    """The attack's iterations with a progress bar in the job's log: one batch can take minutes."""
    return tqdm(range(first, first + steps), desc=name, mininterval=10.0, leave=False)


def _groups(indices: torch.Tensor, per_group: int):
    for start in range(0, len(indices), per_group):
        yield indices[start : start + per_group]


def spsa_gradient(
    oracle: QueryOracle,
    x: torch.Tensor,
    y: torch.Tensor,
    samples: int,
    delta: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SPSA estimate of the gradient of the margin Z_y - max_{j != y} Z_j at x, from `samples` queries per image.

    samples/2 Rademacher directions v, each queried at x + delta*v and x - delta*v (clipped to [0, 1]):
    g = mean over v of (L(x + delta v) - L(x - delta v)) / (2 delta) * v.
    """
    half = samples // 2
    n = len(x)
    signs = torch.randint(0, 2, (n, half, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
    dirs = signs.mul_(2.0).sub_(1.0)
    queries = torch.cat([x.unsqueeze(1) + delta * dirs, x.unsqueeze(1) - delta * dirs], dim=1)
    queries = queries.clamp_(0.0, 1.0).flatten(0, 1)
    losses = margin(oracle(queries), y.repeat_interleave(2 * half)).view(n, 2, half)
    slope = (losses[:, 0] - losses[:, 1]) / (2.0 * delta)
    return torch.einsum("gs,gs...->g...", slope, dirs) / half


def spsa(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    samples: int = 512,
    lr: float = 0.01,
    delta: float = 0.01,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    chunk: int = 256,
    population: int = 8192,
    query_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPSA with Adam on the logit margin Z_y - max_{j != y} Z_j, projected onto the L-inf eps-ball.

    Each iteration estimates the gradient from `samples` queries per image: samples/2 Rademacher
    directions v, each evaluated at x + delta*v and x - delta*v (antithetic pairs, as in the reference
    implementation), g = mean((L+ - L-) / (2 delta) * v). Adam (lr in [0, 1] pixel units) then descends
    the margin. `random_start` draws the start uniformly from the ball, as the reference does.
    `query_counts` (int64, one per image), when given, gains the model queries spent on each image.
    """
    if steps < 1 or samples < 2:
        raise ValueError("SPSA needs at least one iteration and two samples")
    oracle = QueryOracle(model, chunk)
    half = samples // 2
    per_group = max(1, population // (2 * half))
    with eval_mode(model):
        x = x.detach()
        lo, hi = linf_box(x, eps)
        if random_start:
            x_adv = torch.clamp(x + (2.0 * rand_uniform(x.shape, generator, x) - 1.0) * eps, lo, hi)
        else:
            x_adv = x.clone()
        first, second = torch.zeros_like(x), torch.zeros_like(x)
        done = oracle(x_adv).argmax(1) != y
        spent = torch.ones(len(x), dtype=torch.int64)  # the start point's query
        b1, b2 = ADAM_BETAS
        for t in (bar := _iterations("SPSA iterations", steps, first=1)):
            bar.set_postfix(fooled=f"{int(done.sum())}/{len(done)}", refresh=False)
            active = (~done).nonzero().squeeze(1)
            if len(active) == 0:
                break
            for idx in _groups(active, per_group):
                xa = x_adv[idx]
                grad = spsa_gradient(oracle, xa, y[idx], samples, delta, generator)
                first[idx] = b1 * first[idx] + (1 - b1) * grad
                second[idx] = b2 * second[idx] + (1 - b2) * grad * grad
                m_hat = first[idx] / (1 - b1**t)
                v_hat = second[idx] / (1 - b2**t)
                x_adv[idx] = torch.clamp(xa - lr * m_hat / (v_hat.sqrt() + ADAM_EPS), lo[idx], hi[idx])
            done[active] = oracle(x_adv[active]).argmax(1) != y[active]
            spent[active.cpu()] += 2 * half + 1  # the gradient estimate and the check of the new point
        _add_queries(query_counts, spent)
        return x_adv


def nattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 100,
    samples: int = 300,
    lr: float = 0.008,
    search_sigma: float = 0.1,
    generator: torch.Generator | None = None,
    chunk: int = 256,
    population: int = 8192,
    query_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """NAttack: learn a Gaussian search distribution N(mu, sigma^2 I) in tanh space (Li et al. 2019).

    A sample z maps to the image clip_{x, eps}((tanh(atanh(2x - 1) + z) + 1) / 2). The loss of a sample is
    max(log p_y - max_{j != y} log p_j, 0) (probabilities floored at 1e-30 as in the reference); rewards
    -loss/2 are z-scored over the population and mu <- mu + lr / (samples * sigma) * sum_i A_i eps_i.
    mu starts at 0. After every update the image of the mean is queried; an image is done once that is
    misclassified. Unfooled images come back as the image of their final mean. `query_counts` as in :func:`spsa`.
    """
    if steps < 1 or samples < 2:
        raise ValueError("NAttack needs at least one iteration and two samples")
    oracle = QueryOracle(model, chunk)
    per_group = max(1, population // samples)
    floor = math.log(1e-30)
    with eval_mode(model):
        x = x.detach()
        lo, hi = linf_box(x, eps)
        w = _to_tanh_space(x)
        mu = torch.zeros_like(x)

        def image_of(z, idx):
            return torch.clamp((torch.tanh(w[idx] + z) + 1.0) / 2.0, lo[idx], hi[idx])

        everyone = torch.arange(len(x), device=x.device)
        x_adv = image_of(mu, everyone)
        done = oracle(x_adv).argmax(1) != y
        spent = torch.ones(len(x), dtype=torch.int64)
        for _ in (bar := _iterations("NAttack iterations", steps)):
            bar.set_postfix(fooled=f"{int(done.sum())}/{len(done)}", refresh=False)
            active = (~done).nonzero().squeeze(1)
            if len(active) == 0:
                break
            for idx in _groups(active, per_group):
                g = len(idx)
                noise = torch.randn((g, samples, *x.shape[1:]), generator=generator, dtype=x.dtype).to(x.device)
                z = mu[idx].unsqueeze(1) + search_sigma * noise
                cand = torch.clamp((torch.tanh(w[idx].unsqueeze(1) + z) + 1.0) / 2.0, lo[idx].unsqueeze(1), hi[idx].unsqueeze(1))
                log_p = F.log_softmax(oracle(cand.flatten(0, 1)), dim=1).clamp_(min=floor)
                loss = margin(log_p, y[idx].repeat_interleave(samples)).view(g, samples).clamp(0.0, 1000.0)
                reward = -0.5 * loss
                advantage = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, unbiased=False, keepdim=True) + 1e-7)
                mu[idx] += lr / (samples * search_sigma) * torch.einsum("gs,gs...->g...", advantage, noise)
            x_adv[active] = image_of(mu[active], active)
            done[active] = oracle(x_adv[active]).argmax(1) != y[active]
            spent[active.cpu()] += samples + 1  # the population and the image of the new mean
        _add_queries(query_counts, spent)
        return x_adv


def _add_queries(query_counts: torch.Tensor | None, spent: torch.Tensor) -> None:
    if query_counts is None:
        return
    if query_counts.shape != spent.shape:
        raise ValueError(f"query_counts needs one entry per image ({len(spent)}), "
                         f"got shape {tuple(query_counts.shape)}")
    query_counts += spent
