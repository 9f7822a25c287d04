"""Hard limits enforced where actions are sent, never trusted to the head.

:class:`SafetyGuard` sits between the head and the robot in the acting loop:

* every latent is checked: a row with NaN / inf (a diverged head, a corrupted weight file) is replaced by the
  base's own prior draw, and every latent is clipped to ``latent_bound``; replacements are counted and logged;
* every decoded action row is checked: non-finite rows are never sent (the previous command is held; with none,
  :class:`UnsafeActionError` stops the loop), then each joint is clipped to ``[action_low, action_high]`` and its
  change from the previous command to at most ``max_action_step`` (per control step, within an episode).

:class:`Watchdog` stops the loop when the control period overruns its deadline ``misses`` times in a row.

Limits are in the env's action space (what ``env.step`` receives). The robot's own ``max_relative_target`` (LeRobot
robot configs) remains the hardware-side backstop: it caps each step against the *measured* position, which only
the robot knows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)


def finite_latent(latent: torch.Tensor, bound: float, prior: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(latent with its non-finite rows replaced by those of prior, every entry clipped to the bound, rows replaced)``;
    ``prior``: the base's own draw for every row, ``[B, L]``."""
    bad = ~torch.isfinite(latent).all(dim=-1)
    n = int(bad.sum())
    if n:
        latent = latent.clone()
        latent[bad] = prior.reshape(latent.shape)[bad].to(latent)
        logger.warning("the head gave %d non-finite latent(s): the base's prior noise was used instead", n)
    return latent.clamp(-bound, bound), n


class UnsafeActionError(RuntimeError):
    """An action that must not be sent, with nothing safe to send instead."""


class WatchdogError(RuntimeError):
    """The control loop missed its deadline too often: the robot is stopped."""


def _per_joint(name: str, value, action_dim: int) -> np.ndarray | None:
    if value is None:
        return None
    array = np.broadcast_to(np.asarray(value, dtype=np.float64), (action_dim,)) if np.ndim(value) == 0 else \
        np.asarray(value, dtype=np.float64)
    if array.shape != (action_dim,):
        raise ValueError(f"safety.{name} has {array.size} values, the env's action has {action_dim}: give one per "
                         "action dimension, or a single number for all")
    if not np.isfinite(array).all():
        raise ValueError(f"safety.{name} must be finite, got {array.tolist()}")
    return array


@dataclass
class SafetyStats:
    latents_replaced: int = 0  # non-finite latent rows replaced by the base's prior draw
    actions_held: int = 0  # non-finite action rows replaced by the previous command
    actions_clipped: int = 0  # rows changed by the joint limits
    actions_rate_limited: int = 0  # rows changed by the per-step change limit

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class SafetyGuard:
    """Args: ``action_dim``; ``latent_bound``; per-joint ``action_low`` / ``action_high`` / ``max_action_step`` (a
    number or one value per action dimension; ``None``: no such limit)."""

    action_dim: int
    latent_bound: float
    action_low: object = None
    action_high: object = None
    max_action_step: object = None
    stats: SafetyStats = field(default_factory=SafetyStats)

    def __post_init__(self):
        self.low = _per_joint("action_low", self.action_low, self.action_dim)
        self.high = _per_joint("action_high", self.action_high, self.action_dim)
        self.max_step = _per_joint("max_action_step", self.max_action_step, self.action_dim)
        if self.low is not None and self.high is not None and (self.low > self.high).any():
            bad = np.nonzero(self.low > self.high)[0].tolist()
            raise ValueError(f"safety.action_low exceeds safety.action_high for action dimensions {bad}")
        if self.max_step is not None and (self.max_step <= 0).any():
            raise ValueError("safety.max_action_step must be positive for every action dimension")
        self._last: dict[int, np.ndarray] = {}  # env index -> the last command sent in its episode

    def latent(self, latent: torch.Tensor, prior: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``latent`` ``[B, L]`` with non-finite rows replaced by ``prior(n)`` and every entry in the bound."""
        latent, replaced = finite_latent(latent, self.latent_bound, prior(latent.shape[0]))
        self.stats.latents_replaced += replaced
        return latent

    def actions(self, chunks: np.ndarray) -> np.ndarray:
        """Env actions ``[B, k, A]`` -> the limited actions, row by row as they will be sent."""
        chunks = np.array(chunks, dtype=np.float64, copy=True)
        for env, chunk in enumerate(chunks):
            for row in range(chunk.shape[0]):
                chunk[row] = self._one(env, chunk[row])
        return chunks.astype(np.float32)

    def _one(self, env: int, action: np.ndarray) -> np.ndarray:
        last = self._last.get(env)
        if not np.isfinite(action).all():
            if last is None:
                raise UnsafeActionError("the base decoded a non-finite action (NaN / inf) from a finite latent and no "
                                        "earlier command can be held: the base policy itself is broken")
            self.stats.actions_held += 1
            return last
        limited = action
        if self.low is not None or self.high is not None:
            limited = np.clip(limited, self.low if self.low is not None else -np.inf,
                              self.high if self.high is not None else np.inf)
            self.stats.actions_clipped += int(not np.array_equal(limited, action))
        if self.max_step is not None and last is not None:
            stepped = np.clip(limited, last - self.max_step, last + self.max_step)
            self.stats.actions_rate_limited += int(not np.array_equal(stepped, limited))
            limited = stepped
        self._last[env] = limited
        return limited

    def new_episode(self, env: int) -> None:
        """Forget env ``env``'s last command (its next one follows a reset)."""
        self._last.pop(env, None)


class Watchdog:
    """``tick()`` once per control step: raises :class:`WatchdogError` after ``misses`` consecutive periods longer
    than ``period_s``."""

    def __init__(self, period_s: float, misses: int = 3, clock: Callable[[], float] = time.monotonic):
        if period_s <= 0 or misses < 1:
            raise ValueError("safety.control_period_s must be positive and safety.watchdog_misses at least 1")
        self.period_s, self.misses, self.clock = period_s, misses, clock
        self._last: float | None = None
        self.consecutive = 0
        self.periods: list[float] = []

    def tick(self) -> None:
        now = self.clock()
        if self._last is not None:
            period = now - self._last
            self.periods.append(period)
            self.consecutive = self.consecutive + 1 if period > self.period_s else 0
            if self.consecutive >= self.misses:
                raise WatchdogError(f"the control loop missed its {self.period_s * 1000:.0f} ms deadline {self.consecutive} "
                                    f"times in a row (last period {period * 1000:.0f} ms): stopping the robot")
        self._last = now

    def pause(self) -> None:
        """Resets and other deliberate waits do not count as missed deadlines."""
        self._last, self.consecutive = None, 0
