"""Adapter for LeRobot's ``DiffusionPolicy`` (``lerobot.policies.diffusion``, checked against lerobot 0.4.4).

What the adapter does with the policy:

* **Scheduler.** LeRobot samples with DDPM by default, which draws fresh noise at every step, so actions are
  not a function of the initial noise. The adapter installs a ``DDIMScheduler`` built from the policy's own
  schedule fields (same betas, same prediction type, same clipping) and samples with ``eta = 0``. It writes
  the choice back into the policy (``policy.diffusion.noise_scheduler``, ``num_inference_steps`` and the
  two config fields), so the policy's own ``select_action`` / ``predict_action_chunk`` sample exactly like
  the adapter. The scheduler holds no weights, so this works on checkpoints trained with DDPM.
* **Freezing.** ``eval()`` and ``requires_grad_(False)``.
* **Encode.** The observation encoders run once: ``encode`` builds the observation history LeRobot's queues
  would build, stacks the cameras, and calls ``DiffusionModel._prepare_global_conditioning``. The resulting
  global conditioning vector ``[B, n_obs_steps * per_step_dim]`` is both ``Context.features`` and
  ``Context.decode_state`` (small, so storable in the replay buffer).
* **Decode.** :meth:`DiffusionPolicyAdapter.decode_chunk` is the DDIM loop over the U-Net, starting from exactly
  the given noise ``[B, horizon, action_dim]``; it returns the whole denoised horizon. ``decode`` then takes
  LeRobot's slice: rows ``n_obs_steps - 1`` to ``n_obs_steps - 2 + n_action_steps``, i.e. the actions for the
  current step onwards, ``[B, n_action_steps, action_dim]``, while ``noise_shape`` is the full
  ``(horizon, action_dim)``.
* **Capabilities.** ``storable_decode_state`` is True; ``n_obs_steps`` is ``config.n_obs_steps``; every input
  feature (state, environment state, each camera) is a required observation key, since LeRobot stacks all cameras.

Normalisation. In LeRobot 0.4.4 the policy itself sees normalised inputs and returns normalised actions; the
normaliser and unnormaliser are separate processor pipelines (``make_diffusion_pre_post_processors`` or the
``policy_preprocessor.json`` / ``policy_postprocessor.json`` files of a checkpoint), which stay outside the
adapter: ``encode`` expects a *normalised* batch and decoding returns *normalised* actions, exactly what
``predict_action_chunk`` returns.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

from vla_steer.adapters.base import Context
from vla_steer.adapters.lerobot import LeRobotPolicyAdapter


class DiffusionPolicyAdapter(LeRobotPolicyAdapter):
    """Steer a frozen LeRobot ``DiffusionPolicy`` through its initial DDIM noise.

    Args:
        policy: the policy; it is modified in place (frozen, DDIM scheduler installed). A PEFT-wrapped policy
            (``wrap_with_peft``, ``PeftModel``) is unwrapped to the policy, its LoRA layers kept active.
        num_inference_steps: DDIM steps per decode. ``None`` keeps the policy's own setting
            (``config.num_inference_steps``, or ``num_train_timesteps`` when that is unset).

    Observations are a dict of tensors keyed like the policy's input features. Each entry is either one
    step, ``[B, *feature_shape]`` (repeated ``n_obs_steps`` times, which is what LeRobot's queues hold at the
    start of an episode), or a history ``[B, n_obs_steps, *feature_shape]``, oldest step first.
    """

    family = "diffusion"
    storable_decode_state = True
    _any_camera_suffices = False

    def __init__(self, policy: DiffusionPolicy, num_inference_steps: int | None = None):
        super().__init__(policy)
        policy, config = self.policy, self.policy.config

        if num_inference_steps is None:
            num_inference_steps = config.num_inference_steps or config.num_train_timesteps
        if not 1 <= num_inference_steps <= config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {config.num_train_timesteps}], got {num_inference_steps}"
            )
        self.num_inference_steps = int(num_inference_steps)

        # Same schedule arguments LeRobot passes to its scheduler factory, so alphas_cumprod is identical.
        self.scheduler = DDIMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range,
            prediction_type=config.prediction_type,
        )
        self.scheduler.set_timesteps(self.num_inference_steps)
        # Keep the policy consistent with the adapter: its own sampling now uses this DDIM schedule too.
        policy.diffusion.noise_scheduler = self.scheduler
        policy.diffusion.num_inference_steps = self.num_inference_steps
        config.noise_scheduler_type = "DDIM"
        config.num_inference_steps = self.num_inference_steps

    # ------------------------------------------------------------------------------------------------
    # shapes and capabilities
    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.policy.config.horizon, self.action_dim)

    @property
    def n_obs_steps(self) -> int:
        return self.policy.config.n_obs_steps

    @property
    def required_observation_keys(self) -> tuple[str, ...]:
        config = self.policy.config
        env_state = (OBS_ENV_STATE,) if config.env_state_feature is not None else ()
        return (OBS_STATE, *env_state, *config.image_features)

    @property
    def feature_dim(self) -> int:
        """Width of the global conditioning: ``n_obs_steps * (state + env state + cameras * rgb features)``."""
        config, model = self.policy.config, self.policy.diffusion
        per_step = config.robot_state_feature.shape[0]
        if config.env_state_feature is not None:
            per_step += config.env_state_feature.shape[0]
        if config.image_features:
            encoder = model.rgb_encoder[0] if isinstance(model.rgb_encoder, torch.nn.ModuleList) else model.rgb_encoder
            per_step += encoder.feature_dim * len(config.image_features)
        return config.n_obs_steps * per_step

    # ------------------------------------------------------------------------------------------------
    # encode
    def _with_history(self, key: str, value: torch.Tensor, feature_shape: tuple[int, ...]) -> torch.Tensor:
        """``[B, *shape]`` -> ``[B, n_obs_steps, *shape]`` (repeated); a history passes through unchanged."""
        n_obs_steps = self.n_obs_steps
        value = value.to(device=self.device, dtype=self.dtype if value.is_floating_point() else value.dtype)
        extra_dims = value.ndim - len(feature_shape)
        if extra_dims == 1:
            return value.unsqueeze(1).expand(-1, n_obs_steps, *feature_shape)
        if extra_dims == 2 and value.shape[1] == n_obs_steps:
            return value
        raise ValueError(
            f"{key}: expected [B, {', '.join(map(str, feature_shape))}] or "
            f"[B, {n_obs_steps}, {', '.join(map(str, feature_shape))}], got {tuple(value.shape)}"
        )

    def _policy_batch(self, observation: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch ``DiffusionModel.generate_actions`` expects: histories, with cameras stacked."""
        config = self.policy.config
        batch = {OBS_STATE: self._with_history(OBS_STATE, observation[OBS_STATE], config.robot_state_feature.shape)}
        if config.env_state_feature is not None:
            batch[OBS_ENV_STATE] = self._with_history(
                OBS_ENV_STATE, observation[OBS_ENV_STATE], config.env_state_feature.shape
            )
        if config.image_features:
            cameras = [self._with_history(key, observation[key], feature.shape)
                       for key, feature in config.image_features.items()]
            batch[OBS_IMAGES] = torch.stack(cameras, dim=-4)  # [B, n_obs_steps, n_cameras, C, H, W]
        return batch

    @torch.no_grad()
    def encode(self, observation: dict[str, torch.Tensor]) -> Context:
        self._check_batch(observation)
        global_cond = self.policy.diffusion._prepare_global_conditioning(self._policy_batch(observation))
        return Context(features=global_cond, decode_state=global_cond, storable=self.storable_decode_state)

    # ------------------------------------------------------------------------------------------------
    # decode
    def decode_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """Run the DDIM loop (eta = 0) from ``noise`` and return the whole normalised horizon ``[B, horizon, A]``.

        Differentiable in ``noise``; call it under ``torch.no_grad()`` when no gradient is needed.
        """
        global_cond = context.decode_state
        self._check_noise(noise, global_cond.shape[0])
        unet = self.policy.diffusion.unet
        sample = noise.to(device=self.device, dtype=self.dtype)
        for t in self.scheduler.timesteps:
            timestep = torch.full(sample.shape[:1], t, dtype=torch.long, device=sample.device)
            model_output = unet(sample, timestep, global_cond=global_cond)
            sample = self.scheduler.step(model_output, t, sample, eta=0.0).prev_sample
        return sample
