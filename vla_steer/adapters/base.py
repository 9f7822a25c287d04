"""The adapter protocol: how a frozen generative policy exposes its noise input and its embeddings.

An adapter answers a few questions about one family of frozen policies and nothing else.

Capabilities, declared on the class (or the constructed adapter) and checkable before any rollout:

* ``storable_decode_state``: whether ``Context.decode_state`` is a small ``[B, C]`` tensor the replay buffer
  keeps (the built-in policies, LeRobot's DiffusionPolicy, a flow head over a vector), so algorithms can decode
  from stored transitions; KV-cache contexts (SmolVLA, pi0 / pi0.5, X-VLA) are not storable and must be
  re-encoded. Every ``Context`` an adapter builds carries the same flag as ``Context.storable``.
* ``n_obs_steps``: how many observation steps ``encode`` reads (1 unless the policy keeps a history, as
  DiffusionPolicy does; then each entry may be ``[B, n_obs_steps, ...]``).
* ``required_observation_keys`` / ``missing_observation_keys(observation)``: what a batch must hold; the second
  returns readable descriptions of what is missing (empty: ``encode`` will accept the keys).

Shapes and the two halves of sampling:

* ``noise_shape``: the shape of the initial noise one action chunk is denoised from, ``(chunk, action_dim)``
  including any padded action dimensions (pi0 pads to 32).
* ``encode(obs) -> Context``: one pass through the expensive part (a VLM prefix, an observation encoder).
  ``Context.features`` is what the steering head sees; ``Context.decode_state`` is what decoding needs
  (a KV cache, a conditioning vector).
* ``decode(context, noise) -> [B, n_action_steps, action_dim]``: the rows the policy executes, the same way for
  every adapter (for DiffusionPolicy the rows from ``n_obs_steps - 1`` on, as LeRobot slices them).
  ``decode_chunk(context, noise) -> [B, chunk, action_dim]`` is the whole denoised chunk. Both are deterministic
  given the noise (DDIM with eta = 0, Euler ODE) and differentiable in it.
* ``repeat_context(context, k)``: ``k`` noise draws per observation share one encode.

Processors live outside the adapter. A LeRobot adapter takes the policy's *preprocessed* batch (normalised state,
images in [0, 1], language tokens) and returns *normalised* actions: exactly what the policy's own
``predict_action_chunk`` takes and returns. Run LeRobot's preprocessor before ``encode`` and its postprocessor
after ``decode``.

The steering head never sees the full noise tensor directly; it outputs a *latent* that a
:class:`LatentLayout` expands to ``noise_shape`` (the full chunk, or one row tiled over the chunk as in
DSRL's pi0 code).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

import torch


def map_tensors(fn, tree: Any) -> Any:
    """Apply ``fn`` to every tensor in a nest of dicts / lists / tuples (other leaves are kept)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {key: map_tensors(fn, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(fn, value) for value in tree)
    return tree


@dataclass
class Context:
    """What one ``encode`` produced for a batch of ``B`` observations.

    ``features``: ``[B, F]`` float tensor for the steering head; always small enough to store in a buffer.
    ``decode_state``: anything decoding needs. ``storable`` is the adapter's ``storable_decode_state``: when true,
    ``decode_state`` is a ``[B, C]`` tensor that the replay buffer keeps, so algorithms can decode from stored
    transitions without re-encoding.
    """

    features: torch.Tensor
    decode_state: Any
    storable: bool
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]


class SteerableAdapter(abc.ABC):
    """Base class of all adapters. Subclasses hold a frozen policy and never update it."""

    #: short name used in configs and in the hub format
    family: str = "abstract"

    #: True when ``Context.decode_state`` is a small ``[B, C]`` tensor the replay buffer can keep; False for
    #: contexts holding a KV cache or token states, which must be re-encoded instead
    storable_decode_state: bool = False

    @property
    def n_obs_steps(self) -> int:
        """Observation steps ``encode`` reads; above 1 each entry may be a history ``[B, n_obs_steps, ...]``."""
        return 1

    @property
    def required_observation_keys(self) -> tuple[str, ...]:
        """Keys every (preprocessed) observation batch must hold; empty when ``encode`` takes a plain tensor."""
        return ()

    def missing_observation_keys(self, observation: dict[str, Any]) -> list[str]:
        """Readable descriptions of what ``observation`` lacks for ``encode``; empty when nothing is missing."""
        return [key for key in self.required_observation_keys if key not in observation]

    @property
    @abc.abstractmethod
    def noise_shape(self) -> tuple[int, int]:
        """``(chunk_length, action_dim)`` of the initial noise, padded dims included."""

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """Width of ``Context.features``."""

    @property
    @abc.abstractmethod
    def action_dim(self) -> int:
        """Width of the actions the environment receives (padded dims removed)."""

    @property
    @abc.abstractmethod
    def n_action_steps(self) -> int:
        """How many rows of a decoded chunk are executed before the policy is queried again."""

    @abc.abstractmethod
    def encode(self, observation: dict[str, torch.Tensor] | torch.Tensor) -> Context:
        """One pass through the expensive part of the policy for a batch of observations."""

    @abc.abstractmethod
    def decode_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """Denoise ``noise`` ``[B, *noise_shape]`` into the whole chunk ``[B, chunk, action_dim]``; deterministic."""

    def decode(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """The executed rows of :meth:`decode_chunk`: ``[B, n_action_steps, action_dim]``.

        A chunk's first ``n_obs_steps - 1`` rows belong to the observation history (Diffusion Policy's
        convention; none for single-step policies), so execution starts at row ``n_obs_steps - 1``.
        """
        start = self.n_obs_steps - 1
        return self.decode_chunk(context, noise)[:, start:start + self.n_action_steps]

    def predict_action_chunk(self, context: Context, noise: torch.Tensor) -> torch.Tensor:
        """The rows the policy's own ``predict_action_chunk(noise=...)`` returns: the whole chunk for a flow VLA,
        only the executed rows for a policy that keeps an observation history (LeRobot's DiffusionPolicy slices
        there). What a ``steered`` policy's ``predict_action_chunk`` returns, so it is a drop-in for the base's."""
        return self.decode_chunk(context, noise) if self.n_obs_steps == 1 else self.decode(context, noise)

    def context_from_storage(self, features: torch.Tensor, decode_state: torch.Tensor) -> Context:
        """Rebuild a context from tensors the replay buffer stored (only for storable contexts)."""
        if not self.storable_decode_state:
            raise NotImplementedError(
                f"{type(self).__name__} contexts are not stored in the replay buffer (storable_decode_state is "
                "False); re-encode the observation"
            )
        return Context(features=features, decode_state=decode_state, storable=True)

    def repeat_context(self, context: Context, k: int) -> Context:
        """Repeat every observation ``k`` times (``[B, ...] -> [B * k, ...]``, each row ``k`` times in a row).

        The default handles tensors nested in dicts / lists / tuples; adapters whose decode state holds a
        cache object override this.
        """
        repeat = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
        return Context(
            features=repeat(context.features),
            decode_state=map_tensors(repeat, context.decode_state),
            storable=context.storable,
            extras=context.extras,
        )

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def sample_prior_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise the base policy would draw by itself: ``N(0, I)`` of ``[B, *noise_shape]``."""
        return torch.randn((batch_size, *self.noise_shape), generator=generator, device=self.device)


LatentLayoutName = Literal["full", "tiled"]


class LatentLayout:
    """Maps the head's latent to the policy's noise.

    ``full``: the latent is the whole noise chunk, ``[chunk, dim]``.
    ``tiled``: the latent is one row ``[1, dim]`` repeated over the chunk (DSRL's pi0 code). Tiling changes the
    base policy's own behaviour (a tiled Gaussian is not i.i.d. noise) so check the base under it before RL.
    """

    def __init__(self, name: LatentLayoutName, noise_shape: tuple[int, int]):
        if name not in ("full", "tiled"):
            raise ValueError(f"unknown latent layout {name!r}; use 'full' or 'tiled'")
        self.name = name
        self.noise_shape = tuple(noise_shape)
        self.latent_shape = self.noise_shape if name == "full" else (1, self.noise_shape[1])

    @property
    def latent_dim(self) -> int:
        return self.latent_shape[0] * self.latent_shape[1]

    def to_noise(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, latent_dim]`` (flat) -> ``[B, chunk, dim]`` noise."""
        latent = latent.reshape(latent.shape[0], *self.latent_shape)
        if self.name == "tiled":
            latent = latent.expand(-1, self.noise_shape[0], -1)
        return latent.contiguous()

    def __repr__(self) -> str:
        return f"LatentLayout({self.name!r}, noise={self.noise_shape}, latent={self.latent_shape})"
