"""The steering head's networks: feature encoder, latent policies and batched critic ensembles, and each method's
acting rule.

:data:`ACTING_RULES` is the one place a method's acting module and its rule ``features (+ prior draw) -> latent``
are defined. The algorithms act through it in training and evaluation (``SteeringAlgorithm.act``), and a deployed
head acts through it too (``vla_steer.lerobot_policy.ActingHead``), so the two cannot drift apart:

* ``lpds``: ``z = clip(eps + Delta(s), +-bound)``, ``eps ~ N(0, I)``; deterministic: ``eps = 0``.
* ``dsrl_sac`` / ``dsrl_na``: ``z = bound * tanh(mean(s) + std(s) * eps)``; deterministic: ``bound * tanh(mean(s))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden_dim: int, num_layers: int, out_dim: int, layer_norm: bool = True) -> nn.Sequential:
    """``num_layers`` hidden layers of Linear (+ LayerNorm) + ReLU, then a Linear output."""
    layers, width = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim)] + ([nn.LayerNorm(hidden_dim)] if layer_norm else []) + [nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class FeatureEncoder(nn.Module):
    """Projects the adapter's features (e.g. a 2048-d pooled VLM embedding) to a small bottleneck.

    ``out_dim=None`` keeps the features as they are (state features of built-in policies are already small
    and normalised). Otherwise Linear -> LayerNorm -> tanh, the bottleneck DSRL's pi0 code uses.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None):
        super().__init__()
        self.out_dim = in_dim if out_dim is None else out_dim
        self.net = nn.Identity() if out_dim is None else nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.Tanh())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class TanhGaussianLatentPolicy(nn.Module):
    """pi(z | s): ``z = bound * tanh(u)``, ``u ~ N(mu(s), sigma(s))`` (DSRL-SAC / DSRL-NA actor)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, feature_dim: int, latent_dim: int, hidden_dim: int, num_layers: int, bound: float,
                 encoder_dim: int | None = None):
        super().__init__()
        self.encoder = FeatureEncoder(feature_dim, encoder_dim)
        self.net = mlp(self.encoder.out_dim, hidden_dim, num_layers, 2 * latent_dim)
        self.bound = bound
        self.latent_dim = latent_dim

    def forward(self, features: torch.Tensor, deterministic: bool = False,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the latent ``[B, latent_dim]`` and its log-probability ``[B]`` (tanh and scale corrected).

        ``u = mean + std * eps`` with ``eps ~ N(0, I)`` drawn here unless given (``[B, latent_dim]``: the
        reparameterisation with a fixed draw); ``deterministic``: ``u = mean``."""
        mean, log_std = self.net(self.encoder(features)).chunk(2, dim=-1)
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        if deterministic:
            u = mean
        else:
            eps = torch.randn_like(mean) if eps is None else eps.to(device=mean.device, dtype=mean.dtype)
            u = mean + log_std.exp() * eps
        z = torch.tanh(u)
        gaussian_logp = (-0.5 * ((u - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d(bound * tanh u)/du| = log(bound) + log(1 - tanh^2 u), the stable form of the latter
        log_det = (math.log(self.bound) + 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return self.bound * z, gaussian_logp - log_det


class ResidualPerturbation(nn.Module):
    """LP-DS's Delta(s): a deterministic, state-conditioned offset added to prior noise, ``z = eps + Delta(s)``.

    The output layer starts at zero, so before training the steered policy *is* the base policy.
    """

    def __init__(self, feature_dim: int, latent_dim: int, hidden_dim: int, num_layers: int, encoder_dim: int | None = None):
        super().__init__()
        self.encoder = FeatureEncoder(feature_dim, encoder_dim)
        self.net = mlp(self.encoder.out_dim, hidden_dim, num_layers, latent_dim)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.latent_dim = latent_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(features))


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul: ``[E, B, in] -> [E, B, out]``."""

    def __init__(self, ensemble_size: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with an affine of its own per ensemble member: ``[E, B, dim] -> [E, B, dim]``."""

    def __init__(self, ensemble_size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, dim))
        # On a CPU, F.layer_norm takes its vectorised kernels only when given a weight and a bias (x1.25-2 forward and
        # backward at [2, 256, 256], torch 2.10); an identity affine changes no bit of the result. No gain on CUDA, no
        # harm. Not saved: heads keep their tensors.
        self.register_buffer("identity_weight", torch.ones(dim), persistent=False)
        self.register_buffer("identity_bias", torch.zeros(dim), persistent=False)

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.identity_weight, self.identity_bias) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """``E`` Q-functions Q_i(s, x) (x = a latent or an action chunk) computed as one batched module.

    ``forward`` returns ``[E, B]``; ``reduce`` combines heads with ``min`` or ``mean``.
    """

    def __init__(self, feature_dim: int, input_dim: int, num_critics: int, hidden_dim: int, num_layers: int,
                 encoder_dim: int | None = None):
        super().__init__()
        self.encoder = FeatureEncoder(feature_dim, encoder_dim)
        layers, width = [], self.encoder.out_dim + input_dim
        for _ in range(num_layers):
            layers += [EnsembleLinear(num_critics, width, hidden_dim), EnsembleLayerNorm(num_critics, hidden_dim), nn.ReLU()]
            width = hidden_dim
        layers.append(EnsembleLinear(num_critics, width, 1))
        self.net = nn.Sequential(*layers)
        self.num_critics = num_critics

    def forward(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([self.encoder(features), x.flatten(1)], dim=-1)
        return self.net(inp.unsqueeze(0).expand(self.num_critics, -1, -1)).squeeze(-1)

    @staticmethod
    def reduce(q: torch.Tensor, how: str) -> torch.Tensor:
        return q.min(0).values if how == "min" else q.mean(0)


# -------------------------------------------------------------------------------------------------------------
# acting rules
def residual_latent(delta_net: ResidualPerturbation, features: torch.Tensor, bound: float,
                    eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LP-DS: ``(z, Delta(s))`` with ``z = clip(eps + Delta(s), +-bound)``; ``eps ~ N(0, I)`` unless given."""
    delta = delta_net(features)
    eps = torch.randn_like(delta) if eps is None else eps
    return (eps + delta).clamp(-bound, bound), delta


def act_residual(delta_net: ResidualPerturbation, features: torch.Tensor, bound: float,
                 eps: torch.Tensor | None = None, deterministic: bool = False) -> torch.Tensor:
    """LP-DS's acting rule: ``clip(eps + Delta(s), +-bound)``; deterministic: ``eps = 0``."""
    if deterministic:
        eps = torch.zeros(features.shape[0], delta_net.latent_dim, device=features.device)
    return residual_latent(delta_net, features, bound, eps)[0]


def act_tanh_gaussian(actor: TanhGaussianLatentPolicy, features: torch.Tensor, bound: float,
                      eps: torch.Tensor | None = None, deterministic: bool = False) -> torch.Tensor:
    """DSRL's acting rule: ``bound * tanh(mean(s) + std(s) * eps)``; deterministic: ``bound * tanh(mean(s))``.
    ``bound`` is the actor's own (it is built with it); the argument is there so every rule has one signature."""
    if bound != actor.bound:
        raise ValueError(f"the actor was built with bound {actor.bound}, asked to act with bound {bound}")
    return actor(features, deterministic, eps)[0]


def build_residual(feature_dim: int, latent_dim: int, head: Any) -> ResidualPerturbation:
    return ResidualPerturbation(feature_dim, latent_dim, head.hidden_dim, head.num_layers, head.encoder_dim)


def build_tanh_gaussian(feature_dim: int, latent_dim: int, head: Any) -> TanhGaussianLatentPolicy:
    return TanhGaussianLatentPolicy(feature_dim, latent_dim, head.hidden_dim, head.num_layers, head.bound,
                                    head.encoder_dim)


def build_latent_critic(feature_dim: int, latent_dim: int, head: Any) -> CriticEnsemble:
    """The latent critic Q^W(s, z) of every method (the one a deployed head ships for best-of-K)."""
    return CriticEnsemble(feature_dim, latent_dim, head.num_critics, head.hidden_dim, head.num_layers, head.encoder_dim)


@dataclass(frozen=True)
class ActingRule:
    """How one method acts.

    ``module``: the name of its acting module, in ``SteeringAlgorithm.head_modules()`` and so in the head format
    (tensors ``<module>.*`` in ``head.safetensors``). ``build(feature_dim, latent_dim, head)``: that module from
    the recipe's ``head`` section (a ``vla_steer.config.HeadConfig``). ``act(module, features, bound, eps=None,
    deterministic=False)``: the latent ``[B, latent_dim]``, ``eps`` (``[B, latent_dim]``) fixing the prior draw.
    """

    module: str
    build: Callable[[int, int, Any], nn.Module]
    act: Callable[..., torch.Tensor]


ACTING_RULES: dict[str, ActingRule] = {
    "lpds": ActingRule("delta", build_residual, act_residual),
    "dsrl_sac": ActingRule("actor", build_tanh_gaussian, act_tanh_gaussian),
    "dsrl_na": ActingRule("actor", build_tanh_gaussian, act_tanh_gaussian),
}
