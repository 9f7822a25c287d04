"""Adapter for a generic flow-matching action head: a velocity field plus a conditioning encoder.

This is the shape of OpenVLA-OFT-style continuous heads and of most home-made flow policies:

* ``encoder(observation) -> cond``: the expensive part (a VLM, a vision backbone), run once per ``encode``.
  ``cond`` is usually a ``[B, C]`` tensor but may be anything ``velocity`` understands (token states, a dict).
* ``velocity(x_t, t, cond) -> v``: the denoiser, ``x_t`` and ``v`` of shape ``[B, chunk, dim]``.

Time convention (LeRobot pi0's, :func:`~vla_steer.policies.flow.euler_integrate`): the noise sits at ``t = 1``
and the actions at ``t = 0``. With ``N = num_steps`` and ``dt = -1 / N``, Euler integration runs
``x <- x + dt * velocity(x, t, cond)`` for ``t = 1, 1 - 1/N, ..., 1/N`` (``t = 1 + i * dt`` for step ``i``), and
``t`` reaches the velocity field as a float32 tensor of shape ``[B]``. A head trained with the opposite convention
(noise at ``t = 0``, as in GR00T) needs a wrapper that maps ``t -> 1 - t`` and flips the sign of ``v``.

``decode_chunk`` returns the whole chunk, ``decode`` its first ``n_action_steps`` rows.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from vla_steer.adapters.base import Context, SteerableAdapter
from vla_steer.policies.flow import euler_integrate


def _freeze(module: Any) -> Any:
    if isinstance(module, nn.Module):
        module.eval().requires_grad_(False)
    return module


class FlowHeadAdapter(SteerableAdapter):
    """Steer a frozen flow head through the noise its Euler integration starts from.

    Args:
        velocity: ``velocity(x_t [B, chunk, dim], t [B], cond) -> v [B, chunk, dim]``.
        encoder: ``encoder(observation) -> cond``.
        noise_shape: ``(chunk, dim)`` of the noise, padded action dimensions included.
        feature_dim: width of ``Context.features``.
        num_steps: Euler steps per decode.
        n_action_steps: rows of a chunk executed per query (default: the whole chunk).
        action_dim: real action width; decoding drops the padded trailing dimensions (default: ``dim``).
        feature_fn: ``feature_fn(observation, cond) -> [B, feature_dim]`` when the head should see something
            other than ``cond`` (e.g. a pooled token sequence); it gets ``cond`` so the encoder still runs once.
        storable_decode_state: whether ``cond`` is a ``[B, C]`` tensor the replay buffer keeps (algorithms then
            decode from stored transitions); pass ``False`` for any other ``cond`` (token states, a dict).

    ``Context.features`` is ``cond`` itself unless ``feature_fn`` is given. Modules passed in are frozen
    (``eval()``, ``requires_grad_(False)``). The encoder's observation is whatever it takes, so the adapter
    requires no observation keys.
    """

    family = "flow_head"
    storable_decode_state = True

    def __init__(
        self,
        velocity: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        encoder: Callable[[Any], Any],
        *,
        noise_shape: tuple[int, int],
        feature_dim: int,
        num_steps: int = 10,
        n_action_steps: int | None = None,
        action_dim: int | None = None,
        feature_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        storable_decode_state: bool = True,
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        chunk, dim = (int(n) for n in noise_shape)
        n_action_steps = chunk if n_action_steps is None else int(n_action_steps)
        action_dim = dim if action_dim is None else int(action_dim)
        if not 1 <= n_action_steps <= chunk:
            raise ValueError(f"n_action_steps must be in [1, {chunk}], got {n_action_steps}")
        if not 1 <= action_dim <= dim:
            raise ValueError(f"action_dim must be in [1, {dim}], got {action_dim}")
        self.velocity = _freeze(velocity)
        self.encoder = _freeze(encoder)
        self.feature_fn = _freeze(feature_fn)
        self.num_steps = int(num_steps)
        self._noise_shape = (chunk, dim)
        self._feature_dim = int(feature_dim)
        self._n_action_steps = n_action_steps
        self._action_dim = action_dim
        self.storable_decode_state = storable_decode_state

    @property
    def noise_shape(self) -> tuple[int, int]:
        return self._noise_shape

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def n_action_steps(self) -> int:
        return self._n_action_steps

    @property
    def device(self) -> torch.device:
        for module in (self.velocity, self.encoder):
            if isinstance(module, nn.Module):
                parameter = next(module.parameters(), None)
                if parameter is not None:
                    return parameter.device
        return torch.device("cpu")

    @torch.no_grad()
    def encode(self, observation: Any) -> Context:
        cond = self.encoder(observation)
        features = cond if self.feature_fn is None else self.feature_fn(observation, cond)
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[1] != self._feature_dim:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"features must be a [B, {self._feature_dim}] tensor, got {shape}; pass feature_fn when the "
                "encoder's output is not itself a [B, feature_dim] tensor"
            )
        if self.storable_decode_state and not (isinstance(cond, torch.Tensor) and cond.ndim == 2):
            raise ValueError("the encoder's output is not a [B, C] tensor the replay buffer can keep; pass "
                             "storable_decode_state=False")
        return Context(features=features, decode_state=cond, storable=self.storable_decode_state)

    def decode_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """Euler-integrate from ``noise`` (t = 1) to t = 0; returns ``[B, chunk, action_dim]``.

        Differentiable in ``noise``; call it under ``torch.no_grad()`` when no gradient is needed.
        """
        if tuple(noise.shape[1:]) != self._noise_shape or noise.shape[0] != context.batch_size:
            raise ValueError(
                f"noise must be [{context.batch_size}, {self._noise_shape[0]}, {self._noise_shape[1]}] "
                f"for this context, got {tuple(noise.shape)}"
            )
        chunk = euler_integrate(lambda x, t: self.velocity(x, t, context.decode_state), noise, self.num_steps)
        return chunk[..., : self._action_dim]
