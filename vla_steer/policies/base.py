"""Built-in small chunk policies: a denoiser over action chunks conditioned on a state vector.

Two generative families share this base: :class:`~vla_steer.policies.diffusion.DiffusionChunkPolicy`
(DDPM training, DDIM eta = 0 sampling) and :class:`~vla_steer.policies.flow.FlowChunkPolicy`
(flow matching, Euler sampling). Both are deterministic functions of their initial noise, which is
what noise-space steering needs. Saved as ``config.json`` + ``model.safetensors`` (no pickle).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ChunkPolicyConfig:
    type: str  # "diffusion" | "flow"
    obs_dim: int
    action_dim: int
    horizon: int = 4  # length of the predicted chunk
    n_action_steps: int = 4  # rows executed per query
    hidden_dim: int = 256
    num_layers: int = 3
    time_embed_dim: int = 32
    num_train_timesteps: int = 100  # diffusion only
    num_inference_steps: int = 10  # DDIM steps (diffusion) or Euler steps (flow)

    def __post_init__(self):
        if self.type not in ("diffusion", "flow"):
            raise ValueError(f"policy type must be 'diffusion' or 'flow', got {self.type!r}")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be in [1, horizon={self.horizon}]")


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` in [0, 1] (any shape ``[B]``) -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualMLPDenoiser(nn.Module):
    """Predicts epsilon (diffusion) or velocity (flow) for a flattened chunk from (x_t, t, state)."""

    def __init__(self, cfg: ChunkPolicyConfig):
        super().__init__()
        chunk_dim = cfg.horizon * cfg.action_dim
        self.time_embed_dim = cfg.time_embed_dim
        self.inp = nn.Linear(chunk_dim + cfg.time_embed_dim + cfg.obs_dim, cfg.hidden_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.hidden_dim), nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.Mish())
            for _ in range(cfg.num_layers)
        )
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden_dim), nn.Linear(cfg.hidden_dim, chunk_dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        batch = x_t.shape[0]
        h = self.inp(torch.cat([x_t.reshape(batch, -1), sinusoidal_embedding(t, self.time_embed_dim), cond], -1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).reshape(x_t.shape)


class ChunkPolicy(nn.Module):
    """Common part: normalisation, the denoiser, save / load. Subclasses define the loss and the sampler."""

    def __init__(self, cfg: ChunkPolicyConfig):
        super().__init__()
        self.config = cfg
        self.denoiser = ResidualMLPDenoiser(cfg)
        # Normalisation statistics (filled from the dataset before training, saved with the weights).
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))
        self.register_buffer("action_min", -torch.ones(cfg.action_dim))
        self.register_buffer("action_max", torch.ones(cfg.action_dim))

    # -- normalisation -------------------------------------------------------------------------------------
    def set_stats(self, obs_mean, obs_std, action_min, action_max) -> None:
        self.obs_mean.copy_(torch.as_tensor(obs_mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(obs_std, dtype=torch.float32).clamp_min(1e-2))
        self.action_min.copy_(torch.as_tensor(action_min, dtype=torch.float32))
        # a constant action dimension would divide by zero
        self.action_max.copy_(torch.maximum(torch.as_tensor(action_max, dtype=torch.float32), self.action_min + 1e-4))

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return 2.0 * (actions - self.action_min) / (self.action_max - self.action_min) - 1.0

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions + 1.0) * 0.5 * (self.action_max - self.action_min) + self.action_min

    # -- generative interface (implemented by subclasses) --------------------------------------------------
    def loss(self, cond: torch.Tensor, actions_norm: torch.Tensor, pad_mask: torch.Tensor | None = None):
        raise NotImplementedError

    def sample_normalized(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Deterministic map from noise ``[B, horizon, action_dim]`` to normalised actions in [-1, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_action_chunk(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Raw observation ``[B, obs_dim]`` -> action chunk ``[B, horizon, action_dim]`` in env units."""
        cond = self.normalize_obs(obs)
        if noise is None:
            noise = torch.randn(obs.shape[0], self.config.horizon, self.config.action_dim, device=obs.device)
        return self.unnormalize_actions(self.sample_normalized(cond, noise))

    def _masked_mse(self, pred, target, pad_mask):
        err = (pred - target).pow(2).mean(-1)  # [B, horizon]
        if pad_mask is None:
            return err.mean()
        valid = (~pad_mask).float()
        return (err * valid).sum() / valid.sum().clamp_min(1.0)

    # -- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        return directory


def load_chunk_policy(directory: str | Path, device: str | torch.device = "cpu") -> ChunkPolicy:
    """Load a built-in policy saved by :meth:`ChunkPolicy.save_pretrained` (JSON + safetensors only)."""
    from vla_steer.policies.diffusion import DiffusionChunkPolicy
    from vla_steer.policies.flow import FlowChunkPolicy

    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} is not a vla_steer base policy: expected {CONFIG_NAME} and {WEIGHTS_NAME}. "
            "Train one with `vla-steer bc <recipe>`."
        )
    raw = json.loads(config_path.read_text())
    known = {f.name for f in fields(ChunkPolicyConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{config_path}: unknown fields {unknown}; allowed: {sorted(known)}")
    cfg = ChunkPolicyConfig(**raw)
    policy = {"diffusion": DiffusionChunkPolicy, "flow": FlowChunkPolicy}[cfg.type](cfg)
    policy.load_state_dict(load_file(directory / WEIGHTS_NAME))
    return policy.to(device).eval().requires_grad_(False)


def build_chunk_policy(cfg: ChunkPolicyConfig) -> ChunkPolicy:
    from vla_steer.policies.diffusion import DiffusionChunkPolicy
    from vla_steer.policies.flow import FlowChunkPolicy

    return {"diffusion": DiffusionChunkPolicy, "flow": FlowChunkPolicy}[cfg.type](cfg)
