"""LP-DS, Lagrangian perturbation diffusion steering (Simsir & Oguz, ICML 2026).

The latent is ``z = clip(eps + Delta(s), +-bound)`` with ``eps ~ N(0, I)`` kept as exploration. Delta maximises
Q^W(s, z) subject to the trust region ``E ||Delta(s)||^2 <= delta``, with a multiplier ``lambda`` updated by
projected dual ascent: ``lambda <- max(0, lambda + dual_lr * (E ||Delta||^2 - delta))``.

Critics: ``action`` = the dual-Q structure of DSRL-NA (Q^A by TD, Q^W distilled on prior noise);
``latent`` = Q^W trained directly by TD in latent space, for bases whose decode state is too large to
store in a replay buffer (VLAs with KV caches).

Our choices where the paper is silent (README, "Design choices worth knowing"): the multiplier starts at
``init_multiplier`` (0) with step ``dual_lr`` (0.05), and the actor's Q term is divided by mean |Q| so that
the multiplier's scale does not depend on the reward scale.
"""

from __future__ import annotations

import copy

import torch

from vla_steer.algorithms.base import SteeringAlgorithm, no_weight_gradients
from vla_steer.algorithms.configs import LPDSConfig
from vla_steer.algorithms.dsrl_na import DualCriticMixin
from vla_steer.steering import build_latent_critic, residual_latent


class LPDS(DualCriticMixin, SteeringAlgorithm):
    name = "lpds"
    config_class = LPDSConfig

    def __init__(self, cfg: LPDSConfig, head, adapter, layout, accelerator):
        super().__init__(cfg, head, adapter, layout, accelerator)
        self.delta_net = self.acting_rule.build(adapter.feature_dim, self.latent_dim, head)
        self.make_optimizer("actor", self.delta_net.parameters(), cfg.actor_lr)
        self.register_buffer("multiplier", torch.tensor(float(cfg.init_multiplier)))
        if cfg.critic == "action":
            self.init_dual_critics()
        else:
            self.noise_critic = build_latent_critic(adapter.feature_dim, self.latent_dim, head)
            self.noise_critic_target = copy.deepcopy(self.noise_critic).requires_grad_(False)
            self.make_optimizer("noise_critic", self.noise_critic.parameters(), cfg.critic_lr)

    @property
    def needs_stored_decode_state(self) -> bool:
        return self.cfg.critic == "action"

    @property
    def learns_from_executed_actions(self) -> bool:
        return self.cfg.critic == "action"

    def steer(self, features, eps=None):
        """``(z, Delta)`` with fresh prior noise unless ``eps`` is given (the acting rule, with Delta for the loss)."""
        return residual_latent(self.delta_net, features, self.head_cfg.bound, eps)

    def acting_module(self):
        return self.delta_net

    def latent_critic_step(self, batch):
        with torch.no_grad():
            next_z, _ = self.steer(batch["next_features"])
        return self.td_critic_step("noise_critic", self.noise_critic, self.noise_critic_target, batch, batch["latent"], next_z)

    def update_on_device(self, batch):
        s = batch["features"]
        # 1. critics
        if self.cfg.critic == "action":
            with torch.no_grad():
                next_z, _ = self.steer(batch["next_features"])
            next_action, prior_draws = self.critic_decodes(batch, next_z)
            critic_loss, q = self.action_critic_step(batch, next_action)
            distill_loss = self.distill(batch, prior_draws)
        else:
            critic_loss, q = self.latent_critic_step(batch)
            distill_loss = torch.zeros((), device=s.device)

        # 2. primal step on Delta: maximise Q^W(s, eps + Delta(s)) - lambda * (||Delta||^2 - delta)
        z, delta = self.steer(s)
        with no_weight_gradients(self.noise_critic) as critic:
            q_pi = critic.reduce(critic(s, z), self.cfg.actor_reduction)
        if self.cfg.normalize_q:
            q_pi = q_pi / q_pi.abs().mean().detach().clamp_min(1e-6)
        delta_sq = delta.pow(2).sum(-1).mean()
        actor_loss = -q_pi.mean() + self.multiplier * (delta_sq - self.cfg.delta)
        self.optimizer_step("actor", actor_loss)

        # 3. dual step: projected ascent on the multiplier (averaged over processes so it stays in sync)
        violation = self.mean_across_processes(delta_sq.detach()) - self.cfg.delta
        self.multiplier.copy_((self.multiplier + self.cfg.dual_lr * violation).clamp_min(0.0))
        return {"critic_loss": critic_loss.detach(), "distill_loss": distill_loss, "actor_loss": actor_loss.detach(),
                "q": q.detach().mean(), "delta_sq": delta_sq.detach(), "violation": violation,
                "multiplier": self.multiplier.clone()}
