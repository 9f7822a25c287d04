"""DSRL-SAC (Wagenmaker et al., 2025): soft actor-critic whose action is the policy's initial noise.

The critic Q^W(s, z) is trained by TD on the latents the head chose; the environment only ever sees
decode(s, z). Target entropy, number of critics and how the heads combine in the backup are configurable.
"""

from __future__ import annotations

import copy

import torch

from vla_steer.algorithms.base import SACActorMixin, SteeringAlgorithm, no_weight_gradients
from vla_steer.algorithms.configs import DSRLSACConfig
from vla_steer.steering import build_latent_critic


class DSRLSAC(SACActorMixin, SteeringAlgorithm):
    name = "dsrl_sac"
    config_class = DSRLSACConfig

    def __init__(self, cfg: DSRLSACConfig, head, adapter, layout, accelerator):
        super().__init__(cfg, head, adapter, layout, accelerator)
        self.init_sac_actor()
        self.critic = build_latent_critic(adapter.feature_dim, self.latent_dim, head)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.make_optimizer("critic", self.critic.parameters(), cfg.critic_lr)

    def update_on_device(self, batch):
        s, z = batch["features"], batch["latent"]

        # Critic: TD on the stored latent, soft (entropy) backup from the target ensemble.
        with torch.no_grad():
            next_z, next_logp = self.actor(batch["next_features"])
        bonus = -self.alpha * next_logp if self.cfg.backup_entropy else None
        critic_loss, q = self.td_critic_step("critic", self.critic, self.critic_target, batch, z, next_z, bonus)

        # Actor: maximise Q^W - alpha * log pi over reparameterised latents.
        new_z, logp = self.actor(s)
        with no_weight_gradients(self.critic) as critic:
            q_pi = critic.reduce(critic(s, new_z), self.cfg.actor_reduction)
        actor_loss = (self.alpha * logp - q_pi).mean()
        self.optimizer_step("actor", actor_loss)

        temperature_loss = self.temperature_step(logp)
        return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), "q": q.detach().mean(),
                "alpha": self.alpha, "entropy": -logp.detach().mean(), "temperature_loss": temperature_loss.detach()}
