"""Adapter for LeRobot's ``SmolVLAPolicy`` (``lerobot.policies.smolvla``, checked against lerobot 0.4.4).

SmolVLA is a flow-matching VLA: a truncated SmolVLM reads the cameras, the task text and one projected state
token (the *prefix*), and a smaller action expert denoises a chunk ``[chunk_size, max_action_dim]`` by Euler
integration from ``t = 1`` (noise) to ``t = 0`` (actions), attending to the prefix's key/value cache.

What the adapter does with the policy:

* **Freezing.** ``eval()`` and ``requires_grad_(False)``.
* **Encode** = the prefix half of ``VLAFlowMatching.sample_actions``: ``prepare_images`` (resize with padding,
  [0, 1] -> [-1, 1]), ``prepare_state`` (pad to ``max_state_dim``), ``embed_prefix``, the prefix attention mask,
  and one ``vlm_with_expert.forward`` over the prefix with ``fill_kv_cache=True``. The VLM runs exactly once.
  ``Context.decode_state`` is ``{"past_key_values": {layer: {"key_states", "value_states"}},
  "prefix_pad_masks": [B, L]}``: far too big for a replay buffer, so the context is not storable.
  ``Context.features`` pools the prefix hidden states (after the VLM's final norm) that LeRobot computes and
  discards: ``"mean"`` over the valid prefix tokens, ``"last"`` = the last valid token, which is the projected
  state token and attends to the whole prefix, or ``"mean+last"`` (default), both concatenated.
* **Decode** = the other half: :meth:`SmolVLAAdapter.denoise` runs ``config.num_steps`` Euler steps
  (:func:`~vla_steer.policies.flow.euler_integrate`) over ``VLAFlowMatching.denoise_step`` from exactly the given
  noise, at the same float32 times LeRobot uses. The cache is only read (the expert concatenates or cross-attends
  to it), so one encode serves any number of decodes. ``decode_chunk`` unpads the result to the real action
  dimension and, when ``config.adapt_to_pi_aloha`` is set, maps it to the Aloha convention, as
  ``SmolVLAPolicy.predict_action_chunk`` does; ``decode`` keeps the first ``n_action_steps`` rows, the ones
  ``select_action`` executes. Real-time chunking (RTC) guidance is not supported.
* **K draws.** :meth:`repeat_context` (the base implementation) repeat-interleaves every cached tensor, so
  ``B * K`` noise draws run as one batched decode.

Shapes: ``noise_shape = (chunk_size, max_action_dim)``, padded dims included (the expert was trained with noise
in all of them).

Normalisation. As for every LeRobot 0.4.4 policy, SmolVLA itself works in normalised space: the state is
normalised (mean/std by default), images stay in [0, 1], and the task text is tokenised, all by the separate
policy preprocessor (``make_smolvla_pre_post_processors`` or a checkpoint's ``policy_preprocessor.json``); the
actions it returns are normalised and the postprocessor unnormalises them. The adapter follows the policy and
leaves both processors to the caller: ``encode`` takes a *preprocessed* batch (normalised ``observation.state``,
camera images, ``observation.language.tokens`` and ``observation.language.attention_mask``) and decoding returns
normalised actions, exactly what ``predict_action_chunk`` returns.
"""

from __future__ import annotations

from typing import Any

import torch
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy, make_att_2d_masks
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE

from vla_steer.adapters.base import Context
from vla_steer.adapters.lerobot import LeRobotPolicyAdapter
from vla_steer.adapters.pooling import Pooling, check_pooling, pool_tokens, pooled_width
from vla_steer.policies.flow import euler_integrate


class SmolVLAAdapter(LeRobotPolicyAdapter):
    """Steer a frozen LeRobot ``SmolVLAPolicy`` through the initial noise of its flow-matching expert.

    Args:
        policy: the policy; it is frozen in place (``eval()``, ``requires_grad_(False)``). A PEFT-wrapped policy
            (``wrap_with_peft``, ``PeftModel``) is unwrapped to the policy, its LoRA layers kept active.
        pooling: how ``Context.features`` summarises the VLM prefix: ``"mean"`` (masked mean over valid prefix
            tokens), ``"last"`` (the state token) or ``"mean+last"`` (both, concatenated).
        num_steps: Euler steps per decode. ``None`` keeps ``config.num_steps``; a value is written back to the
            config so the policy's own ``predict_action_chunk`` integrates the same way.
    """

    family = "smolvla"
    storable_decode_state = False  # the prefix KV cache

    def __init__(self, policy: SmolVLAPolicy, pooling: Pooling = "mean+last", num_steps: int | None = None):
        check_pooling(pooling)
        if num_steps is not None and num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        super().__init__(policy)
        if num_steps is not None:
            self.policy.config.num_steps = int(num_steps)
        self.pooling = pooling

    def _check_policy(self, policy: SmolVLAPolicy) -> None:
        config = policy.config
        if not config.use_cache:
            # Without the cache LeRobot's denoise step cannot read the prefix (it ignores it or fails).
            raise ValueError("SmolVLAAdapter needs config.use_cache=True (the prefix KV cache is the decode state)")
        super()._check_policy(policy)

    # ------------------------------------------------------------------------------------------------
    # shapes and capabilities
    @property
    def required_observation_keys(self) -> tuple[str, ...]:
        return (OBS_STATE, OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK)

    @property
    def num_steps(self) -> int:
        return self.policy.config.num_steps

    @property
    def hidden_size(self) -> int:
        """Width of the VLM's text model, i.e. of one prefix hidden state (from the VLM config, no forward pass)."""
        return self.policy.model.vlm_with_expert.config.text_config.hidden_size

    @property
    def feature_dim(self) -> int:
        return pooled_width(self.hidden_size, self.pooling)

    # ------------------------------------------------------------------------------------------------
    # encode
    def _check_observation(self, observation: Any) -> None:
        config = self.policy.config
        self._check_batch(observation)
        state = observation[OBS_STATE]
        if state.shape[-1] > config.max_state_dim:
            raise ValueError(f"{OBS_STATE} has {state.shape[-1]} dims, more than max_state_dim={config.max_state_dim}")

    def _pool(self, prefix_out: torch.Tensor, pad_masks: torch.Tensor) -> torch.Tensor:
        """Summarise ``prefix_out [B, L, H]`` over the valid positions of ``pad_masks [B, L]`` (last = state token)."""
        return torch.cat(pool_tokens(prefix_out, pad_masks, self.pooling), dim=-1).float()

    @torch.no_grad()
    def encode(self, observation: dict[str, torch.Tensor]) -> Context:
        self._check_observation(observation)
        policy, model = self.policy, self.policy.model

        batch = dict(observation)
        if policy.config.adapt_to_pi_aloha:  # LeRobot converts the state in place; work on a copy
            batch[OBS_STATE] = policy._pi_aloha_decode_state(batch[OBS_STATE].clone())
        images, img_masks = policy.prepare_images(batch)
        state = policy.prepare_state(batch)
        prefix_embs, prefix_pad_masks, prefix_att_masks = model.embed_prefix(
            images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state=state
        )
        (prefix_out, _), past_key_values = model.vlm_with_expert.forward(
            attention_mask=make_att_2d_masks(prefix_pad_masks, prefix_att_masks),
            position_ids=torch.cumsum(prefix_pad_masks, dim=1) - 1,
            past_key_values=None,
            inputs_embeds=[prefix_embs, None],
            use_cache=True,
            fill_kv_cache=True,
        )
        decode_state = {"past_key_values": past_key_values, "prefix_pad_masks": prefix_pad_masks}
        return Context(features=self._pool(prefix_out, prefix_pad_masks), decode_state=decode_state,
                       storable=self.storable_decode_state)

    # ------------------------------------------------------------------------------------------------
    # decode
    def denoise(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """Euler-integrate the expert from ``noise`` at ``t = 1`` to ``t = 0``; returns ``[B, chunk, max_action_dim]``.

        Differentiable in ``noise``; call it under ``torch.no_grad()`` when no gradient is needed.
        """
        prefix_pad_masks = context.decode_state["prefix_pad_masks"]
        past_key_values = context.decode_state["past_key_values"]
        batch_size = prefix_pad_masks.shape[0]
        self._check_noise(noise, batch_size)
        denoise_step = self.policy.model.denoise_step

        def velocity(x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
            return denoise_step(prefix_pad_masks=prefix_pad_masks, past_key_values=past_key_values, x_t=x_t,
                                timestep=time)

        x_t = noise.to(device=prefix_pad_masks.device, dtype=torch.float32)  # LeRobot's noise is float32
        return euler_integrate(velocity, x_t, self.num_steps)

    def decode_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """The normalised chunk ``predict_action_chunk`` returns for this noise: ``[B, chunk_size, action_dim]``."""
        actions = self.denoise(context, noise)[:, :, : self.action_dim]
        if self.policy.config.adapt_to_pi_aloha:  # LeRobot's transform writes in place: give it a copy
            actions = self.policy._pi_aloha_encode_actions(actions.clone())
        return actions
