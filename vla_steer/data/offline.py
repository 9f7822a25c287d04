"""Offline data for the action critic: a LeRobotDataset with rewards -> replay transitions over action chunks.

:func:`offline_chunk_transitions` turns the frames of a local LeRobotDataset v3 (demonstrations written by
:mod:`vla_steer.data.demos`, rollouts written by :class:`vla_steer.data.recording.RolloutRecorder`, or any dataset
with ``action``, ``next.reward`` and ``next.done`` columns) into the transitions the trainer's replay buffer holds,
with exactly the same keys and shapes as the online ones, so offline and online batches concatenate
(:func:`vla_steer.training.buffer.sample_mixed`).

What offline data can and cannot train. A dataset holds the *executed* actions but not the latent (the initial
noise) that produced them, so ``latent`` is all zeros here: only critics of executed actions, the action critic
Q^A(s, a) of DSRL-NA / LP-DS, learn from these transitions. Anything that reads ``latent`` (DSRL-SAC's noise
critic Q(s, z), a latent behaviour-cloning loss) must not be trained on them.

Conventions (the same as the online collector's):

* one transition per frame ``t`` whose chunk of ``n_action_steps`` rows ``t .. t+k-1`` stays inside its episode.
  ``reward`` is the sum of ``next.reward`` over the executed rows. A ``next.done`` inside the chunk ends it there:
  ``terminated = 1``, the chunk is shorter, its actions are padded by repeating the last executed action, and the
  next observation is the done frame itself (masked by ``terminated`` in the TD target anyway). Chunks that would
  run past the end of an episode that has no ``next.done`` (time-limit truncation) are dropped: a LeRobotDataset
  does not store the observation after an episode's last frame, so they have no next state to bootstrap from.
* ``discount``: ``gamma`` per chunk (``discount_mode="chunk"``) or ``gamma ** steps_executed``
  (``discount_mode="env_step"``).
* observation history (``n_obs_steps > 1``) follows LeRobot's queues (``lerobot.policies.utils.populate_queues``,
  filled at every env step): frames ``t-n_obs_steps+1 .. t``, clamped at the episode start by repeating its first
  frame, stacked as ``[B, n_obs_steps, ...]``, oldest first. ``to_policy_batch`` (LeRobot's preprocessor, for
  instance) runs on *single frames* before the stacking, as in LeRobot where the queues hold processed frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from tqdm.auto import tqdm

#: columns a dataset needs besides its observations
REQUIRED_COLUMNS = ("action", "next.reward", "next.done")
#: the replay keys this module produces (``decode_state`` / ``next_decode_state`` only for storable contexts)
TRANSITION_KEYS = ("features", "latent", "action", "reward", "discount", "terminated", "next_features")


def _chunk_layout(episode_index: torch.Tensor, done: torch.Tensor, k: int):
    """Per frame: whether its chunk makes a transition, how many rows it executes, and its next-observation frame.

    ``episode_index`` ``[N]`` (episodes contiguous, as LeRobot stores them), ``done`` ``[N]`` bool.
    Returns ``(valid [N] bool, length [N] long, terminal [N] bool, next_index [N] long, episode_start [N] long)``.
    """
    n = episode_index.shape[0]
    frame = torch.arange(n)
    new_episode = torch.ones(n, dtype=torch.bool)
    new_episode[1:] = episode_index[1:] != episode_index[:-1]
    starts = torch.nonzero(new_episode).squeeze(-1)
    ends = torch.cat([starts[1:] - 1, torch.tensor([n - 1])])
    episode_of_frame = torch.cumsum(new_episode.long(), 0) - 1
    episode_start, episode_end = starts[episode_of_frame], ends[episode_of_frame]

    rows = frame[:, None] + torch.arange(k)[None]  # [N, k]
    in_episode = rows <= episode_end[:, None]
    done_in_chunk = done[rows.clamp(max=n - 1)] & in_episode
    terminal = done_in_chunk.any(1)
    first_done = done_in_chunk.long().argmax(1)  # first True (argmax returns the first maximum)
    length = torch.where(terminal, first_done + 1, torch.full_like(first_done, k))
    valid = terminal | (frame + k <= episode_end)  # a full chunk needs its next frame inside the episode
    next_index = torch.where(terminal, frame + length - 1, frame + k)
    return valid, length, terminal, next_index, episode_start


def _after_episode_end(done: torch.Tensor, episode_start: torch.Tensor) -> torch.Tensor:
    """Frames that come after an earlier ``done`` frame of their episode (the env would have ended there)."""
    dones_before = torch.cumsum(done.long(), 0) - done.long()  # over the whole dataset, strictly before each frame
    return dones_before - dones_before[episode_start] > 0  # ... counted from the frame's episode start


def _dataset_columns(dataset, keys: list[str]) -> dict[str, torch.Tensor]:
    """Whole numeric columns as tensors (``[N, ...]``), read once through the dataset's HF table."""
    table = dataset.hf_dataset.with_format("torch", columns=keys)[:]
    return {key: torch.as_tensor(table[key]) for key in keys}


class _FrameReader:
    """Fetches observation frames by dataset row: numeric columns from memory, cameras on demand."""

    def __init__(self, dataset, observation_keys: list[str]):
        self.dataset = dataset
        features = dataset.features
        self.video_keys = [key for key in observation_keys if features[key]["dtype"] == "video"]
        self.image_keys = [key for key in observation_keys if features[key]["dtype"] == "image"]
        numeric = [key for key in observation_keys
                   if key not in self.video_keys and key not in self.image_keys and features[key]["dtype"] != "string"]
        self.columns = _dataset_columns(dataset, numeric + ["task_index"])
        self.task_index = self.columns.pop("task_index")
        tasks = dataset.meta.tasks
        self.task_names = {} if tasks is None else {int(row.task_index): str(name) for name, row in tasks.iterrows()}
        self.image_table = dataset.hf_dataset.select_columns(self.image_keys) if self.image_keys else None

    def frames(self, rows: torch.Tensor) -> dict[str, Any]:
        """Observation entries of the frames at ``rows`` (``[M]``): tensors ``[M, ...]`` keyed like the dataset
        (images as float ``[M, C, H, W]`` in [0, 1], as LeRobot loads them) and ``task``, a list of ``M`` strings."""
        out: dict[str, Any] = {key: column[rows] for key, column in self.columns.items()}
        index_list = rows.tolist()
        if self.image_table is not None:
            fetched = self.image_table[index_list]  # LeRobot's transform: PIL -> float CHW in [0, 1]
            for key in self.image_keys:
                out[key] = torch.stack(fetched[key])
        if self.video_keys:  # decoded through LeRobot's item access (slower: one decode per frame and camera)
            items = [self.dataset[i] for i in index_list]
            for key in self.video_keys:
                out[key] = torch.stack([item[key] for item in items])
        out["task"] = [self.task_names.get(int(i), "") for i in self.task_index[rows]]
        return out


def _stack_history(processed: dict[str, Any], inverse: torch.Tensor, num_frames: int,
                   history_keys: set[str]) -> dict[str, Any]:
    """Processed single frames (``[M, ...]``) -> the policy batch: ``inverse`` ``[B, n_obs_steps]`` says which of
    the ``M`` frames each history slot holds (last column: the current frame). ``history_keys`` entries get
    ``[B, n_obs_steps, ...]`` (or ``[B, ...]`` when ``n_obs_steps == 1``); other per-frame entries (language tokens,
    task strings) are the current frame's; anything else passes through unchanged."""
    batch, n_obs_steps = inverse.shape
    current = inverse[:, -1]
    out: dict[str, Any] = {}
    for key, value in processed.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == num_frames:
            if key in history_keys and n_obs_steps > 1:
                idx = inverse.to(value.device)
                out[key] = value[idx.flatten()].reshape(batch, n_obs_steps, *value.shape[1:])
            else:
                out[key] = value[current.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == num_frames:
            out[key] = [value[i] for i in current.tolist()]
        else:
            out[key] = value
    return out


def offline_chunk_transitions(
    root: str | Path,
    *,
    n_action_steps: int,
    n_obs_steps: int,
    gamma: float,
    discount_mode: Literal["chunk", "env_step"],
    to_policy_batch: Callable[[dict[str, Any]], dict[str, Any]] | None,
    encode: Callable[[dict[str, Any]], Any],
    normalize_action: Callable[[torch.Tensor], torch.Tensor] | None,
    latent_dim: int,
    batch_size: int = 256,
    show_progress: bool = True,
    repo_id: str | None = None,
    history_keys: Iterable[str] | None = None,
    reward_shaping: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Chunk transitions for the replay buffer from a local LeRobotDataset with ``next.reward`` and ``next.done``.

    Args:
        root: the dataset's directory (read offline with ``LeRobotDataset(repo_id, root=root)``).
        n_action_steps: ``k``, rows executed per chunk (the adapter's ``n_action_steps``).
        n_obs_steps: observation history of the policy (1: no history dim).
        gamma, discount_mode: as the trainer's ``algorithm.gamma`` / ``algorithm.discount_mode``.
        to_policy_batch: maps a dict of ``M`` single frames (``observation.*`` tensors ``[M, ...]`` keyed like the
            dataset features, images float ``[M, C, H, W]`` in [0, 1], and ``task``: ``M`` strings) to the policy's
            processed inputs, e.g. LeRobot's policy preprocessor. ``None``: the frames as they are. It runs before
            the history is stacked, like LeRobot's queues, which hold processed frames.
        encode: ``adapter.encode``, returning a :class:`vla_steer.adapters.base.Context` (not imported here:
            adapters -> policies -> data already, so it would close an import cycle); receives the stacked batch
            (``[B, n_obs_steps, ...]`` per history key).
        normalize_action: maps dataset actions ``[B, k, A]`` to the action space the trainer stores, i.e. the space
            ``adapter.decode`` returns (the policy's normalised space for LeRobot adapters without a
            postprocessor). ``None``: unchanged.
        latent_dim: width of the (all-zero) ``latent`` field.
        batch_size: observations encoded per ``encode`` call.
        history_keys: processed entries that get an observation history when ``n_obs_steps > 1``. Default: every
            processed ``observation.*`` tensor except ``observation.language.*`` (tokens are per query, not queued).
        reward_shaping: for data holding the env's raw rewards (scripted demonstrations):
            ``{"mode", "scale", "terminate_on_success"}`` as the recipe's ``env.reward_mode`` / ``reward_scale`` /
            ``terminate_on_success``, applied as the training envs apply them (``next.success`` required); with
            ``terminate_on_success`` an episode ends at its first success and later frames make no transition.
            ``None``: the rewards as stored (rollouts recorded by the trainer already hold the recipe's).

    Returns:
        CPU tensors keyed like the trainer's replay buffer: ``features`` ``[N, F]``, ``latent`` ``[N, latent_dim]``
        (zeros), ``action`` ``[N, k * A]``, ``reward`` / ``discount`` / ``terminated`` ``[N]`` float32,
        ``next_features`` ``[N, F]``, plus ``decode_state`` / ``next_decode_state`` when the context is storable.
        Rows are in dataset order of their first frame ``t``.

    Raises:
        ValueError: the dataset lacks ``action`` / ``next.reward`` / ``next.done``, or yields no transition.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if n_action_steps < 1 or n_obs_steps < 1:
        raise ValueError(f"n_action_steps and n_obs_steps must be >= 1, got {n_action_steps}, {n_obs_steps}")
    if discount_mode not in ("chunk", "env_step"):
        raise ValueError(f"discount_mode must be 'chunk' or 'env_step', got {discount_mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root} is not a LeRobotDataset (no meta/info.json)")
    dataset = LeRobotDataset(repo_id=repo_id or f"local/{root.name}", root=root)
    missing = [key for key in REQUIRED_COLUMNS if key not in dataset.features]
    if missing:
        raise ValueError(
            f"dataset {root} lacks {', '.join(missing)}, which offline critic training needs; it has "
            f"{', '.join(sorted(dataset.features))}. Record rollouts with rewards (train.record_rollouts, written by "
            "vla_steer.data.recording.RolloutRecorder) or add 'next.reward' (float32 [1], the reward of the step) "
            "and 'next.done' (bool [1], true termination only) columns to the dataset."
        )
    observation_keys = [key for key in dataset.features if key.startswith("observation.")]

    columns = _dataset_columns(dataset, ["episode_index", *REQUIRED_COLUMNS])
    episode_index = columns["episode_index"].long().reshape(-1)
    actions = columns["action"].float()
    rewards = columns["next.reward"].float().reshape(len(episode_index), -1)[:, 0]
    done = columns["next.done"].bool().reshape(len(episode_index), -1)[:, 0]
    if len(episode_index) and (torch.diff(episode_index) < 0).any():
        raise ValueError(f"dataset {root}: frames are not grouped by episode in index order")
    if reward_shaping is not None:
        from vla_steer.envs.registry import shaped_reward

        if "next.success" not in dataset.features:
            raise ValueError(f"dataset {root} has no next.success column, which shaping its rewards needs")
        success = _dataset_columns(dataset, ["next.success"])["next.success"].bool().reshape(len(episode_index), -1)[:, 0]
        rewards = shaped_reward(rewards, success.float(), reward_shaping["mode"], reward_shaping["scale"])
        if reward_shaping["terminate_on_success"]:
            done = done | success

    k = n_action_steps
    valid, length, terminal, next_index, episode_start = _chunk_layout(episode_index, done, k)
    if reward_shaping is not None and reward_shaping["terminate_on_success"]:
        valid &= ~_after_episode_end(done, episode_start)
    starts = torch.nonzero(valid).squeeze(-1)
    if starts.numel() == 0:
        raise ValueError(
            f"dataset {root} yields no chunk transition: no episode is longer than n_action_steps={k} and none "
            "ends with next.done"
        )
    length, terminal, next_index = length[starts], terminal[starts], next_index[starts]

    # actions of the executed rows, the last executed one repeated past a terminal step
    offsets = torch.minimum(torch.arange(k)[None], (length - 1)[:, None])
    chunk_actions = actions[starts[:, None] + offsets]  # [T, k, A]
    if normalize_action is not None:
        chunk_actions = normalize_action(chunk_actions)
    executed = torch.arange(k)[None] < length[:, None]
    chunk_reward = (rewards[(starts[:, None] + torch.arange(k)[None]).clamp(max=len(rewards) - 1)] * executed).sum(1)
    discount = (torch.full_like(chunk_reward, gamma) if discount_mode == "chunk"
                else torch.full_like(chunk_reward, gamma) ** length.float())

    # encode every distinct observation once (a chunk's next observation is another chunk's current one)
    observation_rows = torch.unique(torch.cat([starts, next_index]))  # sorted
    reader = _FrameReader(dataset, observation_keys)
    history = None if history_keys is None else set(history_keys)
    features, decode_states, storable = [], [], None
    for first in tqdm(range(0, len(observation_rows), batch_size), desc="encode offline data",
                      disable=not show_progress):
        rows = observation_rows[first:first + batch_size]
        window = rows[:, None] - (n_obs_steps - 1) + torch.arange(n_obs_steps)[None]
        window = torch.maximum(window, episode_start[rows][:, None])  # clamp at the episode start
        frame_rows, inverse = torch.unique(window.flatten(), return_inverse=True)
        frames = reader.frames(frame_rows)
        processed = frames if to_policy_batch is None else to_policy_batch(frames)
        keys = history if history is not None else {
            key for key in processed if key.startswith("observation.") and not key.startswith("observation.language")}
        context = encode(_stack_history(processed, inverse.reshape(window.shape), len(frame_rows), keys))
        features.append(context.features.detach().cpu())
        storable = context.storable if storable is None else storable
        if storable:
            if not isinstance(context.decode_state, torch.Tensor):
                raise TypeError(f"a storable context must hold a tensor decode_state, got {type(context.decode_state)}")
            decode_states.append(context.decode_state.detach().cpu())
    features = torch.cat(features)
    position = torch.searchsorted(observation_rows, starts)
    next_position = torch.searchsorted(observation_rows, next_index)

    transitions = {
        "features": features[position],
        "latent": torch.zeros(len(starts), latent_dim, dtype=torch.float32),
        "action": chunk_actions.reshape(len(starts), -1).detach().float().cpu(),
        "reward": chunk_reward.float(),
        "discount": discount.float(),
        "terminated": terminal.float(),
        "next_features": features[next_position],
    }
    if storable:
        decode_state = torch.cat(decode_states)
        transitions["decode_state"] = decode_state[position]
        transitions["next_decode_state"] = decode_state[next_position]
    return transitions
