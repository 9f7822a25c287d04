"""Evaluation metrics: Kozachenko-Leonenko entropy, latent drift, episode statistics."""

from __future__ import annotations

import math

import numpy as np
import torch


def kozachenko_leonenko_entropy(samples: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Differential entropy (nats) of each set of samples, by the k-nearest-neighbour estimator.

    ``samples``: ``[N, d]`` or a batch ``[M, N, d]`` (M independent sets). Returns a scalar or ``[M]``.
    H = psi(N) - psi(k) + log V_d + (d / N) * sum_i log r_i,k, with V_d the unit-ball volume and r_i,k the
    distance from sample i to its k-th nearest neighbour (Kozachenko & Leonenko, 1987).
    """
    single = samples.dim() == 2
    x = samples[None] if single else samples
    x = x.double()
    m, n, d = x.shape
    if n <= k:
        raise ValueError(f"need more than k={k} samples per set, got {n}")
    dist = torch.cdist(x, x)
    dist = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device))  # exclude self
    r_k = dist.kthvalue(k, dim=-1).values.clamp_min(1e-12)
    log_unit_ball = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    digamma = lambda v: torch.special.digamma(torch.tensor(float(v), dtype=torch.float64))  # noqa: E731
    h = digamma(n) - digamma(k) + log_unit_ball + d * r_k.log().mean(-1)
    return h[0] if single else h


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Energy distance ``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` between two sample sets (Szekely & Rizzo,
    2004): zero exactly when the distributions are equal, and it grows with any difference (location, spread,
    shape). ``x``: ``[N, d]`` or a batch ``[M, N, d]``, ``y`` likewise (its N may differ). V-statistic (a sample's
    distance to itself, 0, is included), so a finite sample of one distribution gives a small positive value."""
    single = x.dim() == 2
    x, y = (x[None] if single else x).double(), (y[None] if single else y).double()
    d = 2 * torch.cdist(x, y).mean((-2, -1)) - torch.cdist(x, x).mean((-2, -1)) - torch.cdist(y, y).mean((-2, -1))
    return d[0] if single else d


def summarize_episodes(returns: list[float], successes: list[bool], lengths: list[int]) -> dict[str, float]:
    returns_arr = np.asarray(returns, dtype=np.float64)
    return {
        "return_mean": float(returns_arr.mean()),
        "return_std": float(returns_arr.std()),
        "success_rate": float(np.mean(successes)),
        "episode_length": float(np.mean(lengths)),
        "episodes": len(returns),
    }


__all__ = ["kozachenko_leonenko_entropy", "summarize_episodes"]
