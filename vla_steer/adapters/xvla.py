"""Adapter for LeRobot's ``XVLAPolicy`` (``lerobot.policies.xvla``, checked against lerobot 0.4.4).

X-VLA reads the images and the task text with a Florence-2 encoder (a DaViT vision tower and a BART encoder)
and denoises an action chunk ``[chunk_size, dim_action]`` with a soft-prompted transformer that attends to the
encoder output, the image tokens of the other camera views, the proprio state and a domain id. The transformer
predicts the *clean* action (x0-prediction); ``XVLAModel.generate_actions`` starts from ``x1 ~ N(0, I)`` and for
``i = steps .. 1`` sets ``t = i / steps``, re-noises ``x_t = t * x1 + (1 - t) * action`` with the same ``x1``,
and predicts ``action`` again. The result is a deterministic function of ``x1``.

LeRobot draws ``x1`` itself with ``torch.randn`` inside ``generate_actions``: ``predict_action_chunk`` and
``select_action`` accept ``noise=`` and silently ignore it. The adapter therefore does not call them:

* **Freezing.** ``eval()`` and ``requires_grad_(False)``.
* **Encode** = the first half of ``generate_actions``: ``XVLAPolicy._build_model_inputs`` (cameras resized with
  padding and stacked, missing views padded and masked, proprio padded to ``max_state_dim``, domain id), the
  dtype casts, and one ``XVLAModel.forward_vlm``. The VLM runs exactly once. ``Context.decode_state`` is
  ``{"vlm_features": [B, L, H], "aux_visual_inputs": [B, T_aux, H], "proprio": [B, max_state_dim],
  "domain_id": [B]}``: everything the denoising loop reads, too big for a replay buffer, so not storable.
* **Features.** ``vlm_features`` covers ``[view-0 image tokens, text tokens]``. LeRobot pads the text to
  ``tokenizer_max_length`` and the encoder attends to the padding too, so pooling uses a mask of the image
  tokens plus the valid text tokens (``observation.language.attention_mask`` when the batch has it, else
  ``input_ids != pad_token_id``). ``"mean"`` (default) is the masked mean, ``"last"`` the last valid token (the
  ``</s>`` of a BART-tokenised task; the encoder is bidirectional, so it is just one more summary),
  ``"mean+last"`` both. The VLM never sees the robot state (X-VLA feeds it to the action transformer only), so
  by default the padded proprio vector the policy uses is appended (``include_proprio=True``); without it the
  head could not tell two robot configurations in front of the same image apart.
* **Decode** = the other half: the loop above, copied from ``generate_actions`` (same ``t`` values and dtype, same
  ``action_space.preprocess`` call every step), starting from exactly the given noise, then LeRobot's
  ``action_space.postprocess``. ``decode_chunk`` returns what ``predict_action_chunk`` returns, ``decode`` its
  first ``n_action_steps`` rows, the ones ``select_action`` executes.
* **K draws.** The decode state is a plain dict of ``[B, ...]`` tensors, so the base :meth:`repeat_context`
  repeat-interleaves it and ``B * K`` draws run as one batched decode.

Shapes. ``noise_shape = (chunk_size, dim_action)`` with ``dim_action`` the model-facing width of the action
space (20 for ``ee6d``, 14 for ``joint``, ``max_action_dim`` for ``auto``). ``action_dim`` is the width after
``postprocess``: unchanged for ``ee6d`` / ``joint`` / ``agibot_ee6d`` (which apply a sigmoid to the gripper
channels), trimmed to the real robot for ``auto`` / ``franka_joint7`` / ``so101_bimanual``. Note that ``ee6d``,
``joint`` and ``so101_bimanual`` zero the gripper channels of ``x_t`` before every transformer call, so the noise
in those channels has no effect at all; the padded channels of ``auto`` do reach the transformer.

Normalisation. As for every LeRobot 0.4.4 policy, the policy works on preprocessed batches and the processor
pipelines stay outside the adapter: ``encode`` takes what the X-VLA preprocessor produces
(``observation.language.tokens``, images, the state and an optional ``domain_id``) and decoding returns the
policy's raw (normalised) output. A postprocessor that reshapes actions (LIBERO's 6D-rotation step) changes the
width the caller ends up with, not ``action_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.policies.xvla.modeling_xvla import XVLAPolicy
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

from vla_steer.adapters.base import Context
from vla_steer.adapters.lerobot import LeRobotPolicyAdapter
from vla_steer.adapters.pooling import Pooling, check_pooling, pool_tokens, pooled_width


class XVLAAdapter(LeRobotPolicyAdapter):
    """Steer a frozen LeRobot ``XVLAPolicy`` through the initial noise ``x1`` of its denoising loop.

    Args:
        policy: the policy; it is frozen in place (``eval()``, ``requires_grad_(False)``).
        pooling: how ``Context.features`` summarises the VLM tokens: ``"mean"`` (masked mean over image and valid
            text tokens), ``"last"`` (the last valid text token) or ``"mean+last"`` (both, concatenated).
        include_proprio: append the padded proprio vector (``max_state_dim`` wide) to the features.
        num_denoising_steps: steps per decode. ``None`` keeps ``config.num_denoising_steps``; a value is written
            back to the config so the policy's own ``predict_action_chunk`` denoises the same way.
        pad_token_id: text padding id used for pooling when the batch has no attention mask; defaults to the
            BART config's ``pad_token_id``.
    """

    family = "xvla"
    storable_decode_state = False  # the VLM's token features

    def __init__(
        self,
        policy: XVLAPolicy,
        pooling: Pooling = "mean",
        include_proprio: bool = True,
        num_denoising_steps: int | None = None,
        pad_token_id: int | None = None,
    ):
        check_pooling(pooling)
        if num_denoising_steps is not None and num_denoising_steps < 1:
            raise ValueError(f"num_denoising_steps must be at least 1, got {num_denoising_steps}")
        super().__init__(policy)
        if num_denoising_steps is not None:
            self.policy.config.num_denoising_steps = int(num_denoising_steps)
        self.pooling = pooling
        self.include_proprio = include_proprio
        model = self.policy.model
        text_config = model.vlm.config.text_config
        self.pad_token_id = text_config.pad_token_id if pad_token_id is None else int(pad_token_id)
        # Width after the action space's postprocess (it may trim padded dims); read off a dummy chunk.
        dummy = torch.zeros(1, 1, model.dim_action, device=self.device)
        self._action_dim = int(model.action_space.postprocess(dummy).shape[-1])

    # ------------------------------------------------------------------------------------------------
    # shapes and capabilities
    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.policy.config.chunk_size, self.policy.model.dim_action)

    @property
    def required_observation_keys(self) -> tuple[str, ...]:
        # without the state LeRobot would pass an empty proprio and fail deep in the transformer
        return (OBS_LANGUAGE_TOKENS, *([OBS_STATE] if self.policy.config.use_proprio else []))

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def num_denoising_steps(self) -> int:
        return max(1, int(self.policy.config.num_denoising_steps))  # generate_actions clamps the same way

    @property
    def hidden_size(self) -> int:
        """Width of one VLM token (BART ``d_model``), from the config, no forward pass."""
        return self.policy.model.vlm.config.text_config.d_model

    @property
    def feature_dim(self) -> int:
        width = pooled_width(self.hidden_size, self.pooling)
        return width + (self.policy.model.dim_proprio if self.include_proprio else 0)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype ``generate_actions`` casts the inputs to."""
        return self.policy.model._get_target_dtype()

    # ------------------------------------------------------------------------------------------------
    # encode
    def _check_observation(self, observation: Any) -> None:
        config, model = self.policy.config, self.policy.model
        self._check_batch(observation)

        tokens = observation[OBS_LANGUAGE_TOKENS]
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise ValueError(f"{OBS_LANGUAGE_TOKENS} must be integer token ids [B, L], got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        batch_size = tokens.shape[0]
        sizes = {key: observation[key].shape[0] for key in config.image_features if key in observation}
        if config.use_proprio:
            state = observation[OBS_STATE]
            sizes[OBS_STATE] = state.shape[0]
            if state.shape[-1] > model.dim_proprio:  # LeRobot would silently truncate it
                raise ValueError(f"{OBS_STATE} has {state.shape[-1]} dims, more than max_state_dim={model.dim_proprio}")
        wrong = {key: size for key, size in sizes.items() if size != batch_size}
        if wrong:
            raise ValueError(f"batch sizes disagree: {OBS_LANGUAGE_TOKENS} has {batch_size} rows, {wrong}")

    def _check_domain_id(self, domain_id: torch.Tensor) -> None:
        num_domains = self.policy.config.num_domains
        if domain_id.numel() and (domain_id.min() < 0 or domain_id.max() >= num_domains):
            raise ValueError(f"domain_id must be in [0, {num_domains}), got {domain_id.tolist()}")

    def _token_mask(self, observation: dict[str, torch.Tensor], num_tokens: int) -> torch.Tensor:
        """``[B, L]`` validity of the ``vlm_features`` positions: all image tokens, then the unpadded text."""
        input_ids = observation[OBS_LANGUAGE_TOKENS]
        if OBS_LANGUAGE_ATTENTION_MASK in observation:
            text_mask = observation[OBS_LANGUAGE_ATTENTION_MASK].to(device=input_ids.device, dtype=torch.bool)
        else:
            text_mask = input_ids != self.pad_token_id
        num_image_tokens = num_tokens - input_ids.shape[1]
        image_mask = text_mask.new_ones(input_ids.shape[0], num_image_tokens)
        return torch.cat([image_mask, text_mask], dim=1)

    def _features(self, vlm_features: torch.Tensor, token_mask: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        pooled = pool_tokens(vlm_features, token_mask, self.pooling)
        if self.include_proprio:
            pooled.append(proprio.to(vlm_features.dtype))
        return torch.cat(pooled, dim=-1).float()

    @torch.no_grad()
    def encode(self, observation: dict[str, torch.Tensor]) -> Context:
        self._check_observation(observation)
        policy, model = self.policy, self.policy.model

        inputs = policy._build_model_inputs(observation)
        self._check_domain_id(inputs["domain_id"])
        # the casts generate_actions applies before forward_vlm
        image_input = inputs["image_input"].to(dtype=self.dtype)
        proprio = inputs["proprio"].to(dtype=self.dtype)
        encoded = model.forward_vlm(inputs["input_ids"], image_input, inputs["image_mask"])

        decode_state = {
            "vlm_features": encoded["vlm_features"],
            "aux_visual_inputs": encoded["aux_visual_inputs"],
            "proprio": proprio,
            "domain_id": inputs["domain_id"],
        }
        token_mask = self._token_mask(observation, encoded["vlm_features"].shape[1])
        features = self._features(encoded["vlm_features"], token_mask, proprio)
        return Context(features=features, decode_state=decode_state, storable=self.storable_decode_state)

    # ------------------------------------------------------------------------------------------------
    # decode
    def denoise(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """X-VLA's denoising loop from ``x1 = noise``; returns the model-space chunk ``[B, chunk, dim_action]``
        before ``action_space.postprocess``.

        A copy of the loop of ``XVLAModel.generate_actions``. Differentiable in ``noise``; call it under
        ``torch.no_grad()`` when no gradient is needed.
        """
        # not euler_integrate: each step re-noises the x0 guess with the same x1, no Euler update x + dt * v
        state = context.decode_state
        proprio, domain_id = state["proprio"], state["domain_id"]
        batch_size = proprio.shape[0]
        self._check_noise(noise, batch_size)
        model = self.policy.model
        x1 = noise.to(device=proprio.device, dtype=self.dtype)
        action = torch.zeros_like(x1)
        steps = self.num_denoising_steps
        for i in range(steps, 0, -1):
            t = torch.full((batch_size,), i / steps, device=proprio.device, dtype=self.dtype)
            x_t = x1 * t.view(-1, 1, 1) + action * (1 - t).view(-1, 1, 1)  # re-noise the x0 guess with x1
            proprio_m, x_t_m = model.action_space.preprocess(proprio, x_t)
            action = model.transformer(
                domain_id=domain_id,
                action_with_noise=x_t_m,
                proprio=proprio_m,
                t=t,
                vlm_features=state["vlm_features"],
                aux_visual_inputs=state["aux_visual_inputs"],
            )
        return action

    def decode_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """The chunk ``predict_action_chunk`` would return had it started from ``noise``:
        ``[B, chunk_size, action_dim]``."""
        # postprocess writes the gripper sigmoid in place: give it a copy, not a node of the autograd graph
        return self.policy.model.action_space.postprocess(self.denoise(context, noise).clone())
