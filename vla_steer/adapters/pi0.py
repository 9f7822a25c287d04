"""Adapters for LeRobot's ``PI0Policy`` and ``PI05Policy`` (``lerobot.policies.pi0`` / ``pi05``, lerobot 0.4.4).

Both are flow-matching VLAs: a PaliGemma prefix (SigLIP image tokens + language tokens) is run once into a KV
cache, then a Gemma action expert integrates a velocity field with Euler steps from the noise (t = 1) to the
actions (t = 0), attending to that cache. ``PI0Pytorch.sample_actions`` does both halves in one call; the
adapter splits it at the cache, with LeRobot's own building blocks and no monkeypatching:

* **Encode.** ``policy._preprocess_images`` (resize with padding, [0, 1] -> [-1, 1], empty cameras), the language
  tokens and mask from the batch, ``embed_prefix``, the prefix-LM masks, then
  ``paligemma_with_expert.forward(inputs_embeds=[prefix, None], use_cache=True)`` once. ``sample_actions`` throws
  the prefix hidden states away; the adapter pools them (masked over ``prefix_pad_masks``) into
  ``Context.features``. pi0 feeds the robot state through the expert (the suffix), so its features also carry the
  padded state; pi0.5 writes the discretised state into the prompt, so the prefix already holds it.
  ``Context.decode_state`` keeps the KV cache, ``prefix_pad_masks`` and (pi0) the padded state: too big for a
  replay buffer, so ``storable=False``.
* **Decode.** LeRobot's Euler loop over ``denoise_step`` (:func:`~vla_steer.policies.flow.euler_integrate`:
  ``dt = -1 / num_steps``, t from 1 down to 1/num_steps) from exactly the given noise
  ``[B, chunk_size, max_action_dim]``, padded dims included (the expert was trained with noise in all of them),
  then the slice to the real action dimension, as ``predict_action_chunk`` does (``decode_chunk``); ``decode``
  keeps the first ``n_action_steps`` rows. With ``use_cache=False`` the patched Gemma attention concatenates the
  cache without writing to it, so one context serves any number of decodes. Differentiable in the noise (the
  policy is frozen, the cache holds no graph).
* **K draws.** ``repeat_context`` repeats the cache rows (a fresh ``DynamicCache``; the original is untouched).

Identity: ``decode_chunk(encode(batch), w)`` equals ``policy.predict_action_chunk(batch, noise=w)``.

Normalisation and tokenisation happen in LeRobot's processor pipelines (``make_pi0_pre_post_processors`` or a
checkpoint's ``policy_preprocessor.json`` / ``policy_postprocessor.json``), outside the policy and outside the
adapter: ``encode`` takes what ``predict_action_chunk`` takes, a batch with the normalised state (pi0), images in
[0, 1], and ``observation.language.tokens`` / ``observation.language.attention_mask``; decoding returns normalised
actions.

Needs the openpi-patched transformers (``scripts/make_pi_env.sh``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from lerobot.policies.pi0 import modeling_pi0
from lerobot.policies.pi0.modeling_pi0 import PI0Policy
from lerobot.policies.pi05 import modeling_pi05
from lerobot.policies.pi05.modeling_pi05 import PI05Policy
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE
from transformers.cache_utils import DynamicCache

from vla_steer.adapters.base import Context, map_tensors
from vla_steer.adapters.lerobot import LeRobotPolicyAdapter
from vla_steer.adapters.pooling import Pooling, check_pooling, pool_tokens, pooled_width
from vla_steer.policies.flow import euler_integrate


@dataclass
class PiDecodeState:
    """What the denoiser needs from one encode: the prefix KV cache, which prefix tokens are real, and (pi0) the
    padded state, which enters through the expert's suffix."""

    past_key_values: Any  # transformers DynamicCache (4.53) holding [B, kv_heads, L_prefix, head_dim] per layer
    prefix_pad_masks: torch.Tensor  # [B, L_prefix] bool
    state: torch.Tensor | None  # [B, max_state_dim] for pi0, None for pi0.5


def repeat_kv_cache(cache: Any, k: int) -> Any:
    """A copy of ``cache`` with every batch row repeated ``k`` times in a row (``[B, ...] -> [B * k, ...]``).

    Built anew rather than with ``DynamicCache.batch_repeat_interleave``, which works in place and would change
    the context the caller still holds.
    """
    repeat = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
    if isinstance(cache, DynamicCache):
        return DynamicCache.from_legacy_cache(tuple((repeat(key), repeat(value)) for key, value in cache))
    if isinstance(cache, (tuple, list, dict)):  # legacy ((key, value), ...) format
        return map_tensors(repeat, cache)
    raise TypeError(f"cannot repeat a KV cache of type {type(cache).__name__}")


class _PiFamilyAdapter(LeRobotPolicyAdapter):
    """Shared code of :class:`PI0Adapter` and :class:`PI05Adapter`; they differ in whether the state goes to the
    expert (pi0) or into the prompt (pi0.5)."""

    _state_in_suffix: bool  # pi0: the state is a token of the expert's suffix; pi0.5: it is text in the prompt
    _make_att_2d_masks: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the family's copy of LeRobot's
    storable_decode_state = False  # the prefix KV cache

    def __init__(
        self,
        policy: PI0Policy | PI05Policy,
        num_inference_steps: int | None = None,
        pooling: Pooling = "mean",
        include_state: bool = True,
    ):
        check_pooling(pooling)
        super().__init__(policy)
        config = self.policy.config
        if num_inference_steps is None:
            num_inference_steps = config.num_inference_steps
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.num_inference_steps = int(num_inference_steps)
        # Keep the policy consistent with the adapter: its own predict_action_chunk integrates the same way.
        config.num_inference_steps = self.num_inference_steps
        self.pooling = pooling
        self.include_state = include_state and self._state_in_suffix

    # ------------------------------------------------------------------------------------------------
    # shapes and capabilities
    @property
    def required_observation_keys(self) -> tuple[str, ...]:
        state = (OBS_STATE,) if self._state_in_suffix else ()  # pi0.5's preprocessor already put it in the prompt
        return (*state, OBS_LANGUAGE_TOKENS, OBS_LANGUAGE_ATTENTION_MASK)

    @property
    def hidden_dim(self) -> int:
        """Width of the VLM's prefix hidden states (2048 for PaliGemma 2B)."""
        return self.policy.model.paligemma_with_expert.paligemma.config.text_config.hidden_size

    @property
    def feature_dim(self) -> int:
        width = pooled_width(self.hidden_dim, self.pooling)
        return width + (self.policy.config.max_state_dim if self.include_state else 0)

    # ------------------------------------------------------------------------------------------------
    # encode
    def _pool(self, hidden: torch.Tensor, pad_masks: torch.Tensor) -> torch.Tensor:
        """Masked mean and/or last real token of the prefix hidden states ``[B, L, H]`` -> ``[B, H or 2H]``, in float32."""
        return torch.cat(pool_tokens(hidden.float(), pad_masks, self.pooling), dim=-1)

    @torch.no_grad()
    def encode(self, observation: dict[str, Any]) -> Context:
        self._check_batch(observation)
        policy, model = self.policy, self.policy.model
        images, img_masks = policy._preprocess_images(observation)  # noqa: SLF001
        tokens = observation[OBS_LANGUAGE_TOKENS].to(self.device)
        token_masks = observation[OBS_LANGUAGE_ATTENTION_MASK].to(self.device).bool()
        state = policy.prepare_state(observation).to(self.device) if self._state_in_suffix else None

        # The prefix half of PI0Pytorch.sample_actions, step for step.
        prefix_embs, prefix_pad_masks, prefix_att_masks = model.embed_prefix(images, img_masks, tokens, token_masks)
        prefix_att_2d_masks = self._make_att_2d_masks(prefix_pad_masks, prefix_att_masks)
        prefix_position_ids = torch.cumsum(prefix_pad_masks, dim=1) - 1
        prefix_att_2d_masks_4d = model._prepare_attention_masks_4d(prefix_att_2d_masks)  # noqa: SLF001
        backbone = model.paligemma_with_expert
        backbone.paligemma.language_model.config._attn_implementation = "eager"  # noqa: SLF001
        (prefix_out, _), past_key_values = backbone.forward(
            attention_mask=prefix_att_2d_masks_4d,
            position_ids=prefix_position_ids,
            past_key_values=None,
            inputs_embeds=[prefix_embs, None],
            use_cache=True,
        )

        features = self._pool(prefix_out, prefix_pad_masks)
        if self.include_state:
            features = torch.cat([features, state.float()], dim=-1)
        return Context(
            features=features,
            decode_state=PiDecodeState(past_key_values, prefix_pad_masks, state),
            storable=self.storable_decode_state,
        )

    def repeat_context(self, context: Context, k: int) -> Context:
        state: PiDecodeState = context.decode_state
        repeat = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
        return Context(
            features=repeat(context.features),
            decode_state=PiDecodeState(
                past_key_values=repeat_kv_cache(state.past_key_values, k),
                prefix_pad_masks=repeat(state.prefix_pad_masks),
                state=None if state.state is None else repeat(state.state),
            ),
            storable=context.storable,
            extras=context.extras,
        )

    # ------------------------------------------------------------------------------------------------
    # decode
    @abc.abstractmethod
    def _velocity(self, state: PiDecodeState, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """One ``denoise_step`` of the expert: the velocity at ``x_t``, time ``timestep`` ``[B]``."""

    def denoise(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """Euler from ``noise`` (t = 1) to the padded chunk ``[B, chunk_size, max_action_dim]`` (t = 0).

        The loop of ``sample_actions`` (same time grid, same float32 arithmetic); differentiable in ``noise``.
        """
        self._check_noise(noise, context.batch_size)
        x_t = noise.to(device=self.device, dtype=torch.float32)  # LeRobot's noise is float32
        return euler_integrate(partial(self._velocity, context.decode_state), x_t, self.num_inference_steps)

    def decode_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """The normalised chunk ``predict_action_chunk`` returns for ``noise``: ``[B, chunk_size, action_dim]``."""
        return self.denoise(context, noise)[:, :, : self.action_dim]


class PI0Adapter(_PiFamilyAdapter):
    """Steer a frozen LeRobot ``PI0Policy`` through its initial flow-matching noise.

    Args:
        policy: the policy; it is frozen in place (``eval()``, ``requires_grad_(False)``).
        num_inference_steps: Euler steps per decode; ``None`` keeps ``config.num_inference_steps`` (10). A value is
            written back to the config, so the policy's own ``predict_action_chunk`` integrates the same way.
        pooling: how the prefix hidden states become features: masked ``"mean"`` over the real tokens,
            the ``"last"`` real token, or both concatenated (``"mean+last"``).
        include_state: append the padded (normalised) state ``[max_state_dim]`` to the features. pi0 does not see
            the state in its prefix, so without it the head is blind to proprioception.
    """

    family = "pi0"
    _state_in_suffix = True
    _make_att_2d_masks = staticmethod(modeling_pi0.make_att_2d_masks)

    def _velocity(self, state: PiDecodeState, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.policy.model.denoise_step(
            state=state.state, prefix_pad_masks=state.prefix_pad_masks, past_key_values=state.past_key_values,
            x_t=x_t, timestep=timestep,
        )


class PI05Adapter(_PiFamilyAdapter):
    """Steer a frozen LeRobot ``PI05Policy`` (pi0.5). The state is in the prompt, so features are the pooled prefix.

    Arguments as :class:`PI0Adapter`, without ``include_state``.
    """

    family = "pi05"
    _state_in_suffix = False
    _make_att_2d_masks = staticmethod(modeling_pi05.make_att_2d_masks)

    def __init__(self, policy: PI05Policy, num_inference_steps: int | None = None, pooling: Pooling = "mean"):
        super().__init__(policy, num_inference_steps, pooling, include_state=False)

    def _velocity(self, state: PiDecodeState, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.policy.model.denoise_step(
            prefix_pad_masks=state.prefix_pad_masks, past_key_values=state.past_key_values,
            x_t=x_t, timestep=timestep,
        )
