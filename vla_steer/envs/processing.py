"""From what a vector env returns to what an adapter encodes, and from what it decodes to what the env steps.

For a LeRobot base the order is ``lerobot-eval``'s: LeRobot's ``preprocess_observation`` (raw keys such as
``pixels`` / ``agent_pos`` -> ``observation.*`` tensors) -> the task text -> the env preprocessor -> the policy
preprocessor (rename, batch, tokenise, device, normalise). Actions go back through the policy postprocessor and the
env postprocessor. Adapters therefore see exactly the batch the policy's own ``select_action`` would see and return
normalised actions, which is also what the replay buffer keeps and the action critic reads.

Observation history (``n_obs_steps > 1``, e.g. LeRobot's DiffusionPolicy): the env wrapper returns the last
``n_obs_steps`` raw frames (``[B, T, ...]``). Each frame is processed on its own, as LeRobot's policies do (their
queues hold preprocessed frames), then the frames are stacked back to ``[B, T, ...]``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from vla_steer.envs.registry import STATE_KEY

Processor = Callable[[Any], Any]


class ObservationPipeline:
    """Raw vector-env observations -> the adapter's input batch.

    Args:
        device: where tensors of built-in (unprocessed) observations go.
        lerobot_env: the env emits LeRobot's raw keys (``pixels``, ``agent_pos``, ``environment_state``); else it is
            a built-in env (a flat state vector, or ``observation.image`` / ``observation.state``).
        preprocessor: the policy's preprocessor (``None`` for the built-in MLP policies, which read the flat state).
        env_preprocessor: LeRobot's env preprocessor (``make_env_pre_post_processors``), LeRobot envs only.
        n_obs_steps: frames per observation (the policy's history length).
    """

    def __init__(self, device: torch.device | str, *, lerobot_env: bool = False, preprocessor: Processor | None = None,
                 env_preprocessor: Processor | None = None, n_obs_steps: int = 1):
        self.device = torch.device(device)
        self.lerobot_env, self.preprocessor, self.env_preprocessor = lerobot_env, preprocessor, env_preprocessor
        self.n_obs_steps = n_obs_steps

    def frames(self, raw) -> dict[str, torch.Tensor] | torch.Tensor:
        """One frame per env (no history dim) as LeRobot's env processing gives it to a policy, before the policy's
        own processors: ``observation.*`` float tensors (images ``[B, 3, H, W]`` in [0, 1])."""
        if self.lerobot_env:
            from lerobot.envs.utils import preprocess_observation

            # a robot env's observations went through LeRobot's env processors already (``observation.*`` keys)
            processed = {key: torch.as_tensor(np.asarray(value)) for key, value in raw.items()
                         if key.startswith("observation.")}
            rest = {key: np.asarray(value) for key, value in raw.items() if not key.startswith("observation.")}
            return {**preprocess_observation(rest), **processed} if rest else processed
        if isinstance(raw, dict):
            return {key: torch.as_tensor(np.asarray(value)) for key, value in raw.items()}
        frames = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
        # a LeRobot policy on a built-in flat-state env reads the vector as its observation.state
        return {STATE_KEY: frames} if self.preprocessor is not None else frames

    def __call__(self, raw, tasks: list[str]):
        """``raw``: the vector env's observation (``[B, ...]``, or ``[B, T, ...]`` with history); ``tasks``: one text
        per env. Returns the adapter's batch (a flat tensor for the built-in policies, else a dict)."""
        history = self.n_obs_steps > 1
        if history:
            batch_size = _leading_dim(raw)
            raw = _map_arrays(lambda x: x.reshape(batch_size * self.n_obs_steps, *x.shape[2:]), raw)
            tasks = [task for task in tasks for _ in range(self.n_obs_steps)]
        frames = self.frames(raw)
        if self.preprocessor is None:
            return frames.to(self.device) if isinstance(frames, torch.Tensor) else {
                key: value.to(self.device) for key, value in frames.items()}
        batch = {**frames, "task": list(tasks)}
        if self.env_preprocessor is not None:
            batch = self.env_preprocessor(batch)
        batch = self.preprocessor(batch)
        if history:
            rows = batch_size * self.n_obs_steps
            batch = {key: value.reshape(batch_size, self.n_obs_steps, *value.shape[1:])
                     if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows else value
                     for key, value in batch.items()}
        return batch


class ActionPipeline:
    """Normalised adapter actions ``[B, rows, A]`` -> env actions: the policy postprocessor (unnormalise, to the
    CPU), then LeRobot's env postprocessor. Identity for the built-in policies."""

    def __init__(self, postprocessor: Processor | None = None, env_postprocessor: Processor | None = None):
        self.postprocessor, self.env_postprocessor = postprocessor, env_postprocessor

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        if self.postprocessor is not None:
            actions = self.postprocessor(actions)
        if self.env_postprocessor is not None:
            from lerobot.utils.constants import ACTION

            actions = self.env_postprocessor({ACTION: actions})[ACTION]
        return actions


def _leading_dim(raw) -> int:
    return next(iter(raw.values())).shape[0] if isinstance(raw, dict) else np.asarray(raw).shape[0]


def _map_arrays(fn, raw):
    if isinstance(raw, dict):
        return {key: _map_arrays(fn, value) for key, value in raw.items()}
    return fn(np.asarray(raw))
