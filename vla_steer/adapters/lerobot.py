"""LeRobot policies: which adapter steers a given policy (the policy type, ``config.type``, decides) and the base
class those adapters share.

Adapter modules import their LeRobot policy module (seconds; pi0 / pi0.5 also need the openpi-patched
transformers), so each is imported only when a policy of its type is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

from vla_steer.adapters.base import SteerableAdapter
from vla_steer.adapters.peft_support import unwrap_peft

# LeRobot policy type -> (module, adapter class)
LEROBOT_ADAPTERS: dict[str, tuple[str, str]] = {
    "diffusion": ("vla_steer.adapters.lerobot_diffusion", "DiffusionPolicyAdapter"),
    "smolvla": ("vla_steer.adapters.smolvla", "SmolVLAAdapter"),
    "pi0": ("vla_steer.adapters.pi0", "PI0Adapter"),
    "pi05": ("vla_steer.adapters.pi0", "PI05Adapter"),
    "xvla": ("vla_steer.adapters.xvla", "XVLAAdapter"),
}

# A raw batch lacks the language entries: LeRobot's TokenizerProcessorStep writes them from the task text.
LANGUAGE_KEY_HINTS = {
    key: f"{key} (the policy preprocessor's TokenizerProcessorStep writes it from the task)"
    for key in (OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK)
}


def lerobot_adapter_class(policy_type: str) -> type[SteerableAdapter]:
    """The adapter class for a LeRobot policy type such as ``"smolvla"``."""
    if policy_type not in LEROBOT_ADAPTERS:
        raise ValueError(
            f"no adapter steers LeRobot policies of type {policy_type!r}; supported: {', '.join(sorted(LEROBOT_ADAPTERS))}"
        )
    module, name = LEROBOT_ADAPTERS[policy_type]
    return getattr(importlib.import_module(module), name)


def adapter_for_lerobot_policy(policy, **adapter_kwargs: Any) -> SteerableAdapter:
    """Wrap a LeRobot ``PreTrainedPolicy`` instance in its adapter (which freezes it in place).

    ``adapter_kwargs`` go to the adapter's constructor (``pooling``, ``num_steps``, ``num_inference_steps`` ...).
    """
    return lerobot_adapter_class(policy.config.type)(policy, **adapter_kwargs)


class LeRobotPolicyAdapter(SteerableAdapter):
    """What every adapter of a LeRobot ``PreTrainedPolicy`` does the same way.

    The policy is unwrapped from PEFT (``PeftModel.model`` would be the whole policy, not its inner model; the
    LoRA layers stay active) and frozen in place (``eval()``, ``requires_grad_(False)``). LeRobot 0.4.4 keeps
    normalisation and tokenisation in separate processor pipelines, and so does the adapter: ``encode`` takes the
    policy's preprocessed batch and decoding returns normalised actions, as ``predict_action_chunk`` does.
    """

    #: True where LeRobot pads or masks missing cameras (the VLAs): any one of ``config.image_features`` will do.
    #: False where every camera is required (they are then part of ``required_observation_keys``).
    _any_camera_suffices: bool = True

    def __init__(self, policy: torch.nn.Module):
        policy = unwrap_peft(policy)
        self._check_policy(policy)
        self.policy = policy.eval().requires_grad_(False)

    def _check_policy(self, policy: torch.nn.Module) -> None:
        """Refuse a policy the adapter cannot steer; runs before freezing, so a refused policy is left as it was.

        Real-time chunking (SmolVLA, pi0, pi0.5) guides LeRobot's own sampling loop, which the adapters replace.
        """
        rtc_config = getattr(policy.config, "rtc_config", None)
        if rtc_config is not None and rtc_config.enabled:
            raise ValueError("real-time chunking changes the denoiser per call; disable config.rtc_config to steer")

    @property
    def noise_shape(self) -> tuple[int, int]:
        """One chunk padded to ``max_action_dim``, as LeRobot's VLAs draw their noise."""
        return (self.policy.config.chunk_size, self.policy.config.max_action_dim)

    @property
    def action_dim(self) -> int:
        return self.policy.config.action_feature.shape[0]

    @property
    def n_action_steps(self) -> int:
        return self.policy.config.n_action_steps

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.policy.parameters()).dtype

    def missing_observation_keys(self, observation: dict[str, Any]) -> list[str]:
        missing = [LANGUAGE_KEY_HINTS.get(key, key)
                   for key in self.required_observation_keys if key not in observation]
        cameras = self.policy.config.image_features
        if self._any_camera_suffices and cameras and not any(key in observation for key in cameras):
            missing.append(f"one of the cameras ({', '.join(cameras)})")
        return missing

    def _check_batch(self, observation: Any) -> None:
        """Refuse an observation that is not a dict or that :meth:`missing_observation_keys` finds lacking."""
        if not isinstance(observation, dict):
            raise TypeError(
                f"{type(self).__name__}.encode takes a dict of tensors (the policy's preprocessed batch), "
                f"got {type(observation).__name__}"
            )
        missing = self.missing_observation_keys(observation)
        if missing:
            raise ValueError(f"{type(self).__name__}.encode: the batch is missing {'; '.join(missing)}")

    def _check_noise(self, noise: torch.Tensor, batch_size: int) -> None:
        """Refuse noise that is not ``[batch_size, *noise_shape]``, which includes any padded action dims."""
        if tuple(noise.shape) != (batch_size, *self.noise_shape):
            chunk, dim = self.noise_shape
            padded = " (padded action dims included)" if dim != self.action_dim else ""
            raise ValueError(
                f"noise must be [{batch_size}, {chunk}, {dim}]{padded} for this context, got {tuple(noise.shape)}"
            )
