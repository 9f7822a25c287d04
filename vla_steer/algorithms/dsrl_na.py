"""DSRL-NA, noise aliasing (Wagenmaker et al., 2025).

Q^A(s, a) learns by TD on the *executed* action chunks, so any data (offline demos included) trains it.
Q^W(s, z) is distilled from Q^A on prior noise, z ~ N(0, I), with one batched decode. The actor (a
tanh-Gaussian latent policy, bounded like every method) maximises Q^W.
"""

from __future__ import annotations

import copy

import torch

from vla_steer.algorithms.base import SACActorMixin, SteeringAlgorithm, no_weight_gradients
from vla_steer.algorithms.configs import DSRLNAConfig
from vla_steer.steering import CriticEnsemble, build_latent_critic


class DualCriticMixin:
    """Q^A by TD on executed actions + Q^W distilled from Q^A on prior noise (shared by DSRL-NA and LP-DS)."""

    needs_stored_decode_state = True
    learns_from_executed_actions = True  # Q^A reads the executed action

    def init_dual_critics(self):
        F, head = self.adapter.feature_dim, self.head_cfg
        self.action_critic = CriticEnsemble(F, self.action_input_dim, head.num_critics, head.hidden_dim, head.num_layers, head.encoder_dim)
        self.action_critic_target = copy.deepcopy(self.action_critic).requires_grad_(False)
        self.noise_critic = build_latent_critic(F, self.latent_dim, head)
        self.make_optimizer("action_critic", self.action_critic.parameters(), self.cfg.critic_lr)
        self.make_optimizer("noise_critic", self.noise_critic.parameters(), self.cfg.critic_lr)

    def critic_decodes(self, batch, next_latent):
        """The decodes one update needs, drawn up front: ``(executed rows of next_latent at s', [(z, executed rows of
        z at s)] for distill_steps prior draws z)``. Contexts come from the buffer, or from one batched encode of the
        stored observations (``decode_stored``)."""
        draws = [self.prior_latent(batch["features"].shape[0]) for _ in range(self.cfg.distill_steps)]
        prior_actions, next_action = self.decode_stored(batch, draws, next_latent)
        return next_action, list(zip(draws, prior_actions))

    def action_critic_step(self, batch, next_action, next_bonus=None):
        return self.td_critic_step("action_critic", self.action_critic, self.action_critic_target, batch,
                                   batch["action"], next_action, next_bonus)

    def action_critic_loss(self, batch) -> torch.Tensor:
        """Q^A's TD loss on ``batch`` with the current head's next latents, without updating anything (held-out data)."""
        with torch.no_grad():
            next_action = self.decode_stored(batch, [], self.act(batch["next_features"]))[1]
            return self.td_loss(self.action_critic, self.action_critic_target, batch, batch["action"], next_action)[0]

    def critic_update(self, batch) -> dict[str, float]:
        """Critics only (the offline warm start): a TD step of Q^A with the current head's next latents (no entropy
        bonus: the head is not trained yet), then Q^W distilled from it."""
        next_action, prior_draws = self.critic_decodes(batch, self.act(batch["next_features"]))
        critic_loss, q = self.action_critic_step(batch, next_action)
        distill_loss = self.distill(batch, prior_draws)
        return {"critic_loss": critic_loss.item(), "distill_loss": float(distill_loss), "q": q.mean().item()}

    def distill(self, batch, prior_draws) -> torch.Tensor:
        """Q^W_i(s, z) <- Q^A_i(s, decode(s, z)) on prior latents (each head copies its twin), one step per draw; the
        mean loss."""
        s, losses = batch["features"], []
        for z, prior_action in prior_draws:
            with torch.no_grad():
                target = self.action_critic(s, prior_action)
            loss = 0.5 * (self.noise_critic(s, z) - target).pow(2).mean(1).sum()
            self.optimizer_step("noise_critic", loss)
            losses.append(loss.detach())
        return sum(losses) / len(losses)


class DSRLNA(DualCriticMixin, SACActorMixin, SteeringAlgorithm):
    name = "dsrl_na"
    config_class = DSRLNAConfig

    def __init__(self, cfg: DSRLNAConfig, head, adapter, layout, accelerator):
        super().__init__(cfg, head, adapter, layout, accelerator)
        self.init_sac_actor()
        self.init_dual_critics()

    def update_on_device(self, batch):
        s = batch["features"]
        with torch.no_grad():
            next_z, next_logp = self.actor(batch["next_features"])
        bonus = -self.alpha * next_logp if self.cfg.backup_entropy else None
        next_action, prior_draws = self.critic_decodes(batch, next_z)
        critic_loss, q = self.action_critic_step(batch, next_action, bonus)
        distill_loss = self.distill(batch, prior_draws)

        new_z, logp = self.actor(s)
        with no_weight_gradients(self.noise_critic) as critic:
            q_pi = critic.reduce(critic(s, new_z), self.cfg.actor_reduction)
        actor_loss = (self.alpha * logp - q_pi).mean()
        self.optimizer_step("actor", actor_loss)
        self.temperature_step(logp)
        return {"critic_loss": critic_loss.detach(), "distill_loss": distill_loss, "actor_loss": actor_loss.detach(),
                "q": q.detach().mean(), "alpha": self.alpha, "entropy": -logp.detach().mean()}
