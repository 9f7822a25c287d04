"""Flow-matching chunk policy (pi0 convention: t = 1 is noise, t = 0 is data), Euler sampling, and the Euler loop
every flow-matching denoiser here shares (this policy, SmolVLA, pi0 / pi0.5, the generic flow head).

Time convention (LeRobot's): the noise sits at ``t = 1`` and the actions at ``t = 0``. With ``N`` steps and
``dt = -1 / N``, step ``i`` evaluates the velocity at ``t = 1 + i * dt`` (so ``t = 1, 1 - 1/N, ..., 1/N``) and
sets ``x <- x + dt * v``. ``t`` is the Python float ``1.0 + i * dt`` made a float32 tensor and expanded to
``[B]``, exactly as ``sample_actions`` in LeRobot's SmolVLA and pi0 builds it, so the result matches theirs bit
for bit. (The loop lives here rather than in ``vla_steer.adapters`` because the adapters import the built-in
policies, not the other way round.)
"""

from __future__ import annotations

from typing import Callable

import torch

from vla_steer.policies.base import ChunkPolicy


def euler_integrate(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                    num_steps: int) -> torch.Tensor:
    """Integrate ``velocity(x_t [B, ...], t [B]) -> v`` from ``noise`` at ``t = 1`` to ``t = 0``.

    ``x`` keeps ``noise``'s dtype and device (cast the noise first where the model expects float32).
    Differentiable in ``noise``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    batch_size = noise.shape[0]
    dt = -1.0 / num_steps
    x = noise
    for step in range(num_steps):
        t = torch.tensor(1.0 + step * dt, dtype=torch.float32, device=x.device).expand(batch_size)
        x = x + dt * velocity(x, t)
    return x


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
        x = euler_integrate(lambda x_t, t: self.denoiser(x_t, t, cond), noise, self.config.num_inference_steps)
        return x.clamp(-1.0, 1.0)
