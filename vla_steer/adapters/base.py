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
:class:`LatentLayout` expands to ``noise_shape`` (the full chunk, one row tiled over the chunk as in DSRL's pi0
code, or K control rows interpolated over it; optionally only the real action dimensions of a padded VLA).
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


LatentLayoutName = Literal["full", "tiled", "interpolated"]
LATENT_LAYOUTS: tuple[str, ...] = ("full", "tiled", "interpolated")


def interpolation_matrix(chunk: int, rows: int) -> torch.Tensor:
    """``[chunk, rows]``: noise row ``t`` as a mix of the two control rows around it, control rows spread evenly
    over the chunk (the first at ``t = 0``, the last at ``t = chunk - 1``).

    Plain linear interpolation ``(1 - w) z_k + w z_{k+1}`` would shrink the variance between control rows (to 0.5 at
    the midpoint), so each row is divided by ``sqrt((1 - w)^2 + w^2)``: every noise entry stays N(0, 1) and only the
    correlation along time changes (``M M^T``, ones on its diagonal)."""
    if rows == 1:
        return torch.ones(chunk, 1)
    position = torch.arange(chunk, dtype=torch.float64) * (rows - 1) / max(chunk - 1, 1)
    left = position.floor().long().clamp(max=rows - 2)
    weight = position - left
    matrix = torch.zeros(chunk, rows, dtype=torch.float64)
    matrix[torch.arange(chunk), left] = 1 - weight
    matrix[torch.arange(chunk), left + 1] = weight
    return (matrix / matrix.norm(dim=1, keepdim=True)).float()


class LatentLayout:
    """Maps the head's latent, ``N(0, I)`` under the prior, to the policy's noise ``[chunk, dim]``.

    Along time (``name``):

    * ``full``: one latent row per noise row. The noise is i.i.d. N(0, 1), the base's own distribution.
    * ``tiled``: one latent row repeated over the chunk (DSRL's pi0 code). Every entry is still N(0, 1), but all
      rows are equal (correlation 1 along time), which many fine-tuned bases never saw: check the base under it
      (``vla-steer check-layout``) before RL.
    * ``interpolated``: ``rows`` control rows spread over the chunk, each noise row a variance-preserving linear
      mix of its two neighbours (:func:`interpolation_matrix`). Entries stay N(0, 1); neighbouring rows are
      correlated, rows more than one control interval apart are independent. ``rows = 1`` is ``tiled`` and
      ``rows = chunk`` is ``full``.

    Across action dimensions (``steered_dims``): ``None`` steers every noise dimension; ``d`` steers only the first
    ``d`` (the robot's real action dimensions of a padded VLA such as pi0, which pads to 32), and the padded ones
    keep a fresh prior draw at every call, as the base would draw them. So under the prior latent the noise is
    ``N(0, M M^T)`` along time in the steered dimensions and i.i.d. N(0, 1) elsewhere. With such a mask the noise,
    and so the action, is random even for a fixed latent (``deterministic`` acting fixes the steered part only).
    """

    def __init__(self, name: LatentLayoutName, noise_shape: tuple[int, int], rows: int | None = None,
                 steered_dims: int | None = None):
        if name not in LATENT_LAYOUTS:
            raise ValueError(f"unknown latent layout {name!r}; use one of {list(LATENT_LAYOUTS)}")
        chunk, width = (int(n) for n in noise_shape)
        if name == "interpolated":
            if rows is None or not 1 <= rows <= chunk:
                raise ValueError(f"latent layout 'interpolated' needs head.latent_rows between 1 and the chunk length "
                                 f"{chunk}, got {rows!r}")
        elif rows is not None:
            raise ValueError(f"head.latent_rows ({rows}) applies only to latent_layout 'interpolated', not {name!r}; "
                             "remove it or switch the layout")
        if steered_dims is not None and not 1 <= steered_dims <= width:
            raise ValueError(f"head.steered_dims must be between 1 and the noise width {width} (or null for all), "
                             f"got {steered_dims!r}")
        self.name, self.noise_shape = name, (chunk, width)
        self.rows = {"full": chunk, "tiled": 1, "interpolated": rows}[name]
        self.steered_dims = width if steered_dims is None else int(steered_dims)
        self.latent_shape = (self.rows, self.steered_dims)
        self.time_matrix = torch.eye(chunk) if name == "full" else interpolation_matrix(chunk, self.rows)
        self._time_matrices: dict = {}  # per (device, dtype): no host-to-device copy per call (CUDA graphs forbid it)

    @classmethod
    def from_head(cls, head, noise_shape: tuple[int, int]) -> "LatentLayout":
        """The layout a :class:`vla_steer.config.HeadConfig` names."""
        return cls(head.latent_layout, noise_shape, head.latent_rows, head.steered_dims)

    @property
    def latent_dim(self) -> int:
        return self.latent_shape[0] * self.latent_shape[1]

    @property
    def masked(self) -> bool:
        return self.steered_dims < self.noise_shape[1]

    def describe(self) -> str:
        """A short name for tables: ``tiled``, ``interpolated(4)``, ``full, 7 of 32 dims``."""
        name = f"interpolated({self.rows})" if self.name == "interpolated" else self.name
        return f"{name}, {self.steered_dims} of {self.noise_shape[1]} dims" if self.masked else name

    def noise_covariance_along_time(self) -> torch.Tensor:
        """``[chunk, chunk]`` covariance of one steered dimension's noise under the prior latent (``M M^T``)."""
        return self.time_matrix @ self.time_matrix.T

    def to_noise(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, latent_dim]`` (flat) -> ``[B, chunk, dim]`` noise."""
        latent = latent.reshape(latent.shape[0], *self.latent_shape)
        if self.name == "full":
            steered = latent
        elif self.name == "tiled":
            steered = latent.expand(-1, self.noise_shape[0], -1)
        else:
            steered = torch.einsum("tk,bkd->btd", self._time_matrix(latent), latent)
        if not self.masked:
            return steered.contiguous()
        padded = torch.randn(latent.shape[0], self.noise_shape[0], self.noise_shape[1] - self.steered_dims,
                             device=latent.device, dtype=latent.dtype)
        return torch.cat([steered, padded], dim=-1)

    def _time_matrix(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._time_matrices:
            self._time_matrices[key] = self.time_matrix.to(like.device, like.dtype)
        return self._time_matrices[key]

    def __repr__(self) -> str:
        return f"LatentLayout({self.describe()!r}, noise={self.noise_shape}, latent={self.latent_shape})"
