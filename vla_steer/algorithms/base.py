"""What every steering algorithm shares: acting interface, optimiser steps, target updates, decoding.

An algorithm owns its networks (head + critics) and optimisers. ``update(batch)`` runs one gradient update
on a replay batch and returns scalar metrics. Gradients are averaged across processes before every
optimiser step, so all processes hold identical weights (same seed, same init, same averaged gradients).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from vla_steer.adapters.base import LatentLayout, SteerableAdapter
from vla_steer.algorithms.configs import AlgorithmConfig, SACTemperatureConfig
from vla_steer.algorithms.stored_observations import stored_observations
from vla_steer.steering import ACTING_RULES, ActingRule

if TYPE_CHECKING:  # type names only: vla_steer.config imports this package's configs, not the other way round
    from accelerate import Accelerator

    from vla_steer.config import HeadConfig


class SteeringAlgorithm(nn.Module):
    name = "abstract"
    #: the dataclass of this method's ``algorithm`` section (vla_steer.algorithms.configs)
    config_class: type[AlgorithmConfig] = AlgorithmConfig
    #: whether updates decode executed actions from the replay buffer's stored decode state
    needs_stored_decode_state = False
    #: whether the critic learns from any executed action (a person's intervention included), not only from actions
    #: decoded from the stored latent: an intervened transition's latent did not produce what ran
    learns_from_executed_actions = False

    def __init__(self, cfg: AlgorithmConfig, head: HeadConfig, adapter: SteerableAdapter, layout: LatentLayout,
                 accelerator: Accelerator):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got a {type(cfg).__name__} "
                            f"(vla_steer.algorithms.algorithm_config({self.name!r}, ...) builds one; recipes parse "
                            "the algorithm section into it)")
        self.cfg, self.head_cfg = cfg, head
        self.adapter, self.layout, self.accelerator = adapter, layout, accelerator
        self.latent_dim = layout.latent_dim
        self.action_input_dim = adapter.n_action_steps * adapter.action_dim  # Q^A sees the executed rows
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # -- interface -------------------------------------------------------------------------------------
    @property
    def acting_rule(self) -> ActingRule:
        """This method's acting module name and rule (``vla_steer.steering.ACTING_RULES``), shared with deployed
        heads (``ActingHead``)."""
        return ACTING_RULES[self.name]

    def acting_module(self) -> nn.Module:
        """The module the acting rule runs (LP-DS's Delta, DSRL's actor)."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, features: torch.Tensor, deterministic: bool = False, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``[B, latent_dim]`` for a batch of features (no gradient), by the method's acting rule; ``eps``
        (``[B, latent_dim]``) fixes the prior draw."""
        return self.acting_rule.act(self.acting_module(), features, self.head_cfg.bound, eps, deterministic)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One gradient update on a replay batch; its metrics as floats."""
        return as_floats(self.update_on_device(batch))

    def update_on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient update; its metrics stay on the device as 0-d tensors. Nothing in it waits for the device
        (no ``.item()``, no branch on a tensor's value), so one call can be captured and replayed as a CUDA graph
        (``vla_steer.training.cuda_graph``)."""
        raise NotImplementedError

    def head_modules(self) -> dict[str, nn.Module]:
        """The modules a deployed steered policy needs to act (what the hub format ships, named as in it)."""
        return {self.acting_rule.module: self.acting_module()}

    # -- shared helpers --------------------------------------------------------------------------------
    def prior_latent(self, batch_size: int) -> torch.Tensor:
        """Prior noise in latent space, clipped to the bound every method honours."""
        eps = torch.randn(batch_size, self.latent_dim, device=self.device)
        return eps.clamp(-self.head_cfg.bound, self.head_cfg.bound)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def make_optimizer(self, name: str, params, lr: float) -> torch.optim.Optimizer:
        # fused Adam: one kernel for all parameters, ~3x cheaper than the per-tensor loop on a CPU thread (torch >= 2.4).
        # On CUDA it is also made capturable (its step count lives on the GPU), so an update can be a CUDA graph.
        params = list(params)
        capturable = self.device.type == "cuda"
        try:
            self.optimizers[name] = torch.optim.Adam(params, lr=lr, fused=True, capturable=capturable)
        except (RuntimeError, TypeError):  # older torch, or a device / dtype the fused kernel lacks
            self.optimizers[name] = torch.optim.Adam(params, lr=lr, foreach=True, capturable=capturable)
        return self.optimizers[name]

    def optimizer_step(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad -> backward -> average gradients over processes -> step."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.accelerator.num_processes > 1 and params:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            flat = self.accelerator.reduce(flat, reduction="mean")
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        optimizer.step()

    def mean_across_processes(self, value: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value.detach().clone(), reduction="mean")

    @torch.no_grad()
    def soft_update(self, target: nn.Module, source: nn.Module) -> None:
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), self.cfg.tau)

    @torch.no_grad()
    def decode_executed(self, features, decode_state, latent) -> torch.Tensor:
        """Decode latents on stored states and return the executed rows, flattened: ``[B, k * A]``."""
        context = self.adapter.context_from_storage(features, decode_state)
        actions = self.adapter.decode(context, self.layout.to_noise(latent))
        return actions.flatten(1)

    @property
    def reencodes_observations(self) -> bool:
        """Whether updates decode at replayed states of a base whose context cannot be stored (a VLA's KV cache): the
        collector then stores the processed observations and :meth:`decode_stored` encodes them again."""
        return self.needs_stored_decode_state and not self.adapter.storable_decode_state

    @torch.no_grad()
    def decode_stored(self, batch, latents: list, next_latent=None):
        """Executed rows (flattened ``[B, k * A]``) decoded from each of ``latents`` at the batch's states s, and from
        ``next_latent`` at s' (``None``: not decoded): ``([rows per latent], rows at s' or None)``.

        Storable contexts come from the buffer. Otherwise (a VLA's KV cache) the observations the collector stored
        (``vla_steer.algorithms.stored_observations``) are encoded once, s and s' in one batched prefix pass, and
        every decode reuses that context."""
        if not self.reencodes_observations:
            at_s = [self.decode_executed(batch["features"], batch["decode_state"], z) for z in latents]
            at_next = None if next_latent is None else self.decode_executed(
                batch["next_features"], batch["next_decode_state"], next_latent)
            return at_s, at_next
        prefixes = ([""] if latents else []) + (["next_"] if next_latent is not None else [])
        parts = [stored_observations(batch, prefix) for prefix in prefixes]
        context = self.adapter.encode({key: torch.cat([part[key] for part in parts]) for key in parts[0]})
        at_s, at_next, rows = [], None, batch["features"].shape[0]
        for z in latents or [None]:  # a decode covers the whole context (s' again after the first: cheap beside an encode)
            noise = [latent for latent in (z, next_latent) if latent is not None]
            actions = self.adapter.decode(context, self.layout.to_noise(torch.cat(noise))).flatten(1)
            if z is not None:
                at_s.append(actions[:rows])
            if next_latent is not None and at_next is None:
                at_next = actions[-rows:]
        return at_s, at_next

    def td_target(self, batch, next_q: torch.Tensor) -> torch.Tensor:
        """r + discount * (1 - terminated) * next_q. Time-limit truncation is *not* terminal: it bootstraps."""
        return batch["reward"] + batch["discount"] * (1.0 - batch["terminated"]) * next_q

    def td_loss(self, critic, critic_target, batch, inputs, next_inputs, next_bonus=None):
        """TD loss of a critic ensemble on ``(features, inputs)`` against ``r + discount * Q_targ(s', next_inputs)``
        (plus ``next_bonus``, e.g. SAC's entropy term). Returns ``(loss, q)``."""
        with torch.no_grad():
            next_q = critic.reduce(critic_target(batch["next_features"], next_inputs), self.cfg.backup)
            if next_bonus is not None:
                next_q = next_q + next_bonus
            target = self.td_target(batch, next_q)
        q = critic(batch["features"], inputs)
        return 0.5 * (q - target).pow(2).mean(1).sum(), q  # summed over heads: each head learns at the full rate

    def td_critic_step(self, optimizer: str, critic, critic_target, batch, inputs, next_inputs, next_bonus=None):
        """One TD step (:meth:`td_loss`), then a soft update of the target. Returns ``(loss, q)``."""
        loss, q = self.td_loss(critic, critic_target, batch, inputs, next_inputs, next_bonus)
        self.optimizer_step(optimizer, loss)
        self.soft_update(critic_target, critic)
        return loss, q

    def optimizer_state_dicts(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_state_dicts(self, states: dict) -> None:
        if set(states) != set(self.optimizers):  # a missing one would silently restart from a fresh state
            raise KeyError(f"optimizer states for {sorted(states)}, this algorithm has {sorted(self.optimizers)}")
        for name, state in states.items():
            self.optimizers[name].load_state_dict(state)


def as_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d metric tensors as floats, in one device-to-host copy (one wait for the device, not one per metric)."""
    values = torch.stack([value.detach().float() for value in metrics.values()]).tolist() if metrics else []
    return dict(zip(metrics, values))


@contextmanager
def no_weight_gradients(module: nn.Module):
    """Gradients flow through ``module`` to its inputs but not into its weights: the actor's pass through a critic
    would otherwise compute the critic's weight gradients (a third of its backward matmuls) only to discard them at
    the critic's next ``zero_grad``. The actor's update is unchanged."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class SACActorMixin:
    """The DSRL actor: a tanh-Gaussian latent policy with SAC's entropy temperature (log-parameterised,
    tuned toward a target entropy). Shared by DSRL-SAC and DSRL-NA, which differ only in their critics."""

    config_class = SACTemperatureConfig

    def init_sac_actor(self):
        self.actor = self.acting_rule.build(self.adapter.feature_dim, self.latent_dim, self.head_cfg)
        self.make_optimizer("actor", self.actor.parameters(), self.cfg.actor_lr)
        self.log_alpha = nn.Parameter(torch.tensor(float(self.cfg.init_temperature)).log())
        target = self.cfg.target_entropy
        self.target_entropy = -self.latent_dim / 2.0 if target == "auto" else float(target)
        self.make_optimizer("temperature", [self.log_alpha], self.cfg.temperature_lr)

    def acting_module(self):
        return self.actor

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    def temperature_step(self, log_prob: torch.Tensor) -> torch.Tensor:
        loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.optimizer_step("temperature", loss)
        return loss
