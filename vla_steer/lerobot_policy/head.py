"""The acting part of a trained steering head, rebuilt from the trainer's ``head_config.json`` alone.

The trainer (``SteeringTrainer.save_head``) writes ``head.safetensors`` with keys ``"<module>.<param>"`` for
the algorithm's ``head_modules()`` and ``head_config.json`` with the algorithm, the :class:`HeadConfig`, the
noise / latent shapes and the feature width. Deployment needs only the actor, never the critics:

* ``lpds``: ``z = clip(eps + Delta(s), +-bound)``, ``eps ~ N(0, I)``; deterministic: ``eps = 0``.
* ``dsrl_sac`` / ``dsrl_na``: ``z = bound * tanh(mean(s) + std(s) * eps)``; deterministic: ``bound * tanh(mean(s))``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_steer.adapters.base import LatentLayout
from vla_steer.config import HeadConfig
from vla_steer.steering import ResidualPerturbation, TanhGaussianLatentPolicy

HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"

REQUIRED_KEYS = ("algorithm", "head", "noise_shape", "latent_shape", "feature_dim")
OPTIONAL_KEYS = ("adapter", "env")
ALGORITHM_MODULES = {"lpds": "delta", "dsrl_sac": "actor", "dsrl_na": "actor"}


class HeadFormatError(ValueError):
    """A head directory does not match what the trainer writes (unknown fields, wrong tensors)."""


def validate_head_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a ``head_config.json`` dict field by field; returns it with ``head`` as a :class:`HeadConfig`."""
    if not isinstance(config, dict):
        raise HeadFormatError(f"head config must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise HeadFormatError(f"head config has unknown field(s) {unknown}; allowed: {[*REQUIRED_KEYS, *OPTIONAL_KEYS]}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise HeadFormatError(f"head config is missing field(s) {missing}")
    if config["algorithm"] not in ALGORITHM_MODULES:
        raise HeadFormatError(f"head config algorithm {config['algorithm']!r} is unknown; use one of {sorted(ALGORITHM_MODULES)}")
    head = config["head"]
    names = [f.name for f in dataclasses.fields(HeadConfig)]
    if not isinstance(head, dict) or set(head) - set(names):
        extra = sorted(set(head) - set(names)) if isinstance(head, dict) else head
        raise HeadFormatError(f"head config field 'head' has unknown field(s) {extra}; allowed: {names}")
    head = HeadConfig(**head)
    noise_shape, latent_shape = tuple(config["noise_shape"]), tuple(config["latent_shape"])
    layout = LatentLayout(head.latent_layout, noise_shape)
    if layout.latent_shape != latent_shape:
        raise HeadFormatError(f"latent_shape {list(latent_shape)} does not follow from noise_shape {list(noise_shape)} "
                              f"under latent_layout {head.latent_layout!r} (expected {list(layout.latent_shape)})")
    return {**config, "head": head, "noise_shape": noise_shape, "latent_shape": latent_shape}


class ActingHead(nn.Module):
    """The trained acting module of one algorithm: features ``[B, F]`` -> latent ``[B, latent_dim]``."""

    def __init__(self, head_config: dict[str, Any]):
        super().__init__()
        config = validate_head_config(head_config)
        head: HeadConfig = config["head"]
        self.algorithm = config["algorithm"]
        self.raw_config = {**config, "head": dataclasses.asdict(head), "noise_shape": list(config["noise_shape"]),
                           "latent_shape": list(config["latent_shape"])}
        self.layout = LatentLayout(head.latent_layout, config["noise_shape"])
        self.feature_dim, self.bound = int(config["feature_dim"]), float(head.bound)
        latent_dim = self.layout.latent_dim
        if self.algorithm == "lpds":
            self.delta = ResidualPerturbation(self.feature_dim, latent_dim, head.hidden_dim, head.num_layers, head.encoder_dim)
        else:
            self.actor = TanhGaussianLatentPolicy(self.feature_dim, latent_dim, head.hidden_dim, head.num_layers,
                                                  head.bound, head.encoder_dim)
        self.requires_grad_(False)

    @property
    def latent_dim(self) -> int:
        return self.layout.latent_dim

    def forward(self, features: torch.Tensor, eps: torch.Tensor | None = None, deterministic: bool = False) -> torch.Tensor:
        """The latent for ``features``. ``eps`` (``[B, *latent_shape]`` or flat) fixes the standard-normal draw."""
        batch = features.shape[0]
        if deterministic:
            eps = torch.zeros(batch, self.latent_dim, device=features.device)
        elif eps is None:
            eps = torch.randn(batch, self.latent_dim, device=features.device)
        eps = eps.reshape(batch, self.latent_dim).to(device=features.device, dtype=torch.float32)
        if self.algorithm == "lpds":
            return (eps + self.delta(features)).clamp(-self.bound, self.bound)
        # The actor's own forward draws its noise internally; this is its reparameterisation with a given draw.
        mean, log_std = self.actor.net(self.actor.encoder(features)).chunk(2, dim=-1)
        log_std = log_std.clamp(self.actor.LOG_STD_MIN, self.actor.LOG_STD_MAX)
        return self.bound * torch.tanh(mean + log_std.exp() * eps)

    # ------------------------------------------------------------------------------------------------
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load ``head.safetensors`` contents; any missing, unexpected or wrongly shaped tensor is an error."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong = [f"{k}: file {list(tensors[k].shape)} vs head {list(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
        if missing or unexpected or wrong:
            problems = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                        f"wrong shapes [{'; '.join(wrong)}]" if wrong else ""]
            raise HeadFormatError(f"head tensors do not match head_config ({self.algorithm}, feature_dim="
                                  f"{self.feature_dim}, latent_dim={self.latent_dim}): "
                                  + ", ".join(p for p in problems if p))
        self.load_state_dict(tensors, strict=True)

    @classmethod
    def from_dir(cls, directory: str | Path) -> "ActingHead":
        """Build from a directory holding ``head_config.json`` and ``head.safetensors`` (the trainer's ``head/``)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        head = cls(json.loads((directory / HEAD_CONFIG_NAME).read_text()))
        head.load_tensors(load_file(str(directory / HEAD_WEIGHTS_NAME)))
        return head

    def save(self, directory: str | Path) -> None:
        """Write the same two files the trainer writes."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(directory / HEAD_WEIGHTS_NAME))
        (directory / HEAD_CONFIG_NAME).write_text(json.dumps(self.raw_config, indent=2))
