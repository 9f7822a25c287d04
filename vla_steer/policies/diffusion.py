"""Diffusion chunk policy: epsilon prediction, cosine schedule, DDIM sampling with eta = 0."""

from __future__ import annotations

import math

import torch

from vla_steer.policies.base import ChunkPolicy, ChunkPolicyConfig


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021) cosine schedule, betas clipped at 0.999."""
    t = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0).float()


class DiffusionChunkPolicy(ChunkPolicy):
    def __init__(self, cfg: ChunkPolicyConfig):
        super().__init__(cfg)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(cfg.num_train_timesteps), persistent=False)

    def loss(self, cond, actions_norm, pad_mask=None):
        batch = actions_norm.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (batch,), device=actions_norm.device)
        noise = torch.randn_like(actions_norm)
        abar = self.alphas_cumprod[t].view(batch, 1, 1)
        x_t = abar.sqrt() * actions_norm + (1 - abar).sqrt() * noise
        pred = self.denoiser(x_t, t.float() / self.config.num_train_timesteps, cond)
        return self._masked_mse(pred, noise, pad_mask)

    def ddim_timesteps(self) -> list[int]:
        """Evenly spaced subset of training steps, highest first, "trailing" so sampling starts at the last
        training step (where the model was trained on pure noise), e.g. 100 / 5 -> [99, 79, 59, 39, 19]."""
        total, steps = self.config.num_train_timesteps, self.config.num_inference_steps
        ratio = total // steps
        return [total - 1 - i * ratio for i in range(steps)]

    def sample_normalized(self, cond, noise):
        x = noise
        steps = self.ddim_timesteps()
        batch = noise.shape[0]
        for i, t in enumerate(steps):
            abar = self.alphas_cumprod[t]
            abar_prev = self.alphas_cumprod[steps[i + 1]] if i + 1 < len(steps) else torch.ones_like(abar)
            t_in = torch.full((batch,), t / self.config.num_train_timesteps, device=noise.device)
            eps = self.denoiser(x, t_in, cond)
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()  # re-derived from the clipped x0
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps  # eta = 0: no fresh noise
        return x.clamp(-1.0, 1.0)
