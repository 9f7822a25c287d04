"""Flow-matching chunk policy (pi0 convention: t = 1 is noise, t = 0 is data), Euler sampling."""

from __future__ import annotations

import torch

from vla_steer.policies.base import ChunkPolicy


class FlowChunkPolicy(ChunkPolicy):
    def loss(self, cond, actions_norm, pad_mask=None):
        batch = actions_norm.shape[0]
        # Beta-like emphasis on high noise levels, as pi0 does (sampled from Beta(1.5, 1)).
        t = torch.distributions.Beta(1.5, 1.0).sample((batch,)).to(actions_norm.device) * 0.999 + 0.001
        noise = torch.randn_like(actions_norm)
        tt = t.view(batch, 1, 1)
        x_t = tt * noise + (1 - tt) * actions_norm
        velocity = self.denoiser(x_t, t, cond)
        return self._masked_mse(velocity, noise - actions_norm, pad_mask)

    def sample_normalized(self, cond, noise):
        steps = self.config.num_inference_steps
        dt = -1.0 / steps
        x = noise
        batch = noise.shape[0]
        for i in range(steps):
            t = torch.full((batch,), 1.0 - i / steps, device=noise.device)
            x = x + dt * self.denoiser(x, t, cond)
        return x.clamp(-1.0, 1.0)
