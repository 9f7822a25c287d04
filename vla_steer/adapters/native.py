"""Adapter for the built-in chunk policies (:mod:`vla_steer.policies`).

``encode`` takes the raw state, a flat ``[B, obs_dim]`` tensor (or a dict holding it as ``observation.state``),
so the adapter requires no observation keys. It normalises the state; the normalised state is both the head's
features and the denoiser's conditioning, so it is storable and NA / LP-DS decode straight from the replay
buffer. ``decode_chunk`` returns the whole chunk in environment units, ``decode`` its first ``n_action_steps``
rows.
"""

from __future__ import annotations

import torch

from vla_steer.adapters.base import Context, SteerableAdapter
from vla_steer.policies.base import ChunkPolicy


class NativePolicyAdapter(SteerableAdapter):
    family = "native"
    storable_decode_state = True

    def __init__(self, policy: ChunkPolicy):
        self.policy = policy.eval().requires_grad_(False)

    @property
    def noise_shape(self):
        return (self.policy.config.horizon, self.policy.config.action_dim)

    @property
    def feature_dim(self):
        return self.policy.config.obs_dim

    @property
    def action_dim(self):
        return self.policy.config.action_dim

    @property
    def n_action_steps(self):
        return self.policy.config.n_action_steps

    @property
    def device(self):
        return self.policy.obs_mean.device

    @torch.no_grad()
    def encode(self, observation):
        if isinstance(observation, dict):
            observation = observation["observation.state"]
        cond = self.policy.normalize_obs(observation.to(self.device, torch.float32))
        return Context(features=cond, decode_state=cond, storable=self.storable_decode_state)

    @torch.no_grad()
    def decode_chunk(self, context, noise):
        normalized = self.policy.sample_normalized(context.decode_state, noise.to(context.decode_state.dtype))
        return self.policy.unnormalize_actions(normalized)
