"""Rollouts recorded as a LeRobotDataset v3, through LeRobot's own writer, one finished episode at a time.

:class:`RolloutRecorder` takes the frames the trainer's collector executes (several envs in a vector env, an action
chunk per vector step), buffers them per env, and writes an env's episode when it ends. Besides the observations and
the executed ``action`` (environment space) it writes the steering state and the RL signals::

    steering.latent     float32 [latent_dim]  the latent (initial-noise choice) of the chunk the row belongs to
    steering.chunk_row  int64   [1]           the row's position in its executed chunk, 0 .. k-1
    next.reward         float32 [1]           the step's reward
    next.success        bool    [1]           the env's success flag after the step
    next.done           bool    [1]           true termination only (a time limit is not done)

and, for robot envs (``interventions=True``)::

    steering.intervention  bool [1]           a person's action was executed on this step (``action`` is theirs)

so the dataset trains the action critic offline (:func:`vla_steer.data.offline.offline_chunk_transitions`), and
LeRobot's tools (``lerobot-train``, the dataset viewer) read it as any other dataset. Images are stored as PNG
inside the parquet files (``dtype: image``), losslessly: frames reload exactly.

Crash safety: every episode is flushed. LeRobot 0.4.4 keeps a ``pyarrow.parquet.ParquetWriter`` open across
episodes (``LeRobotDataset._save_episode_data`` for ``data/``, ``LeRobotDatasetMetadata._flush_metadata_buffer`` for
``meta/episodes/``) and a parquet file is unreadable until its writer closes and writes the footer, which only
``finalize()`` does. Calling ``finalize()`` after an episode and going on with the same object is not enough by
itself: the next episode reopens a writer on the *same* file (the file index moves on only when the size limit
``data_files_size_in_mb`` is reached) and overwrites the earlier episodes. Reopening with ``LeRobotDataset(root)``
does append to new files (the "resuming recording" branches of those two methods), but it reloads the whole dataset
through ``datasets.Dataset.from_parquet`` each time. The recorder therefore keeps one writer object, sets the
dataset's file size limit (``meta.update_chunk_settings(data_files_size_in_mb=...)``) so low that LeRobot starts new
``data/`` and ``meta/episodes/`` files for every episode, and calls ``finalize()`` after each ``save_episode()``.
After a ``kill -9`` the dataset on disk holds every episode whose ``end_episode`` returned and loads with
``LeRobotDataset``; only episodes still in progress (held in memory) are lost, plus the episode being written if the
kill lands inside ``end_episode`` itself: each episode write is bracketed by a write-ahead snapshot of the metadata
LeRobot rewrites (``.vla_steer_episode_journal``), and reopening with ``append=True`` rolls an interrupted write back
to it. The price is two small parquet files per episode and three small copies per write. ``close()`` puts LeRobot's default file size back in ``meta/info.json``.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: written next to ``meta/``: marks a dataset this recorder wrote and holds the features it was created with
RECORDER_MARKER = "vla_steer_recording.json"
_FORMAT = 1
#: data_files_size_in_mb while recording: any written file exceeds it, so LeRobot opens new files per episode
_ONE_FILE_PER_EPISODE_MB = 1e-6
_FRAME_KEYS = ("action", "latent", "reward", "success", "done", "chunk_row")


def _image_shape(key: str, shape) -> tuple[int, int, int]:
    """An RGB image feature's stored shape ``(H, W, 3)`` from ``(H, W, 3)`` or ``(3, H, W)``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[-1] == 3:
        return shape
    if len(shape) == 3 and shape[0] == 3:
        return (shape[1], shape[2], 3)
    raise ValueError(f"{key}: image features are RGB, shape (H, W, 3) or (3, H, W); got {shape}")


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.array(value)  # a copy: the caller may reuse its arrays


def _image_frame(key: str, value: Any, shape_hwc: tuple[int, int, int]) -> np.ndarray:
    """float ``[C, H, W]`` in [0, 1] or uint8 ``[H, W, C]`` (either layout, either dtype) -> uint8 ``[H, W, C]``."""
    array = _as_numpy(value)
    height, width, channels = shape_hwc
    if array.shape != shape_hwc:
        if array.shape != (channels, height, width):
            raise ValueError(f"{key}: expected an image of shape {(channels, height, width)} or {shape_hwc}, "
                             f"got {array.shape}")
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (array.min() < -1e-6 or array.max() > 1 + 1e-6):
            raise ValueError(f"{key}: float images must be in [0, 1] (got [{array.min():.3g}, {array.max():.3g}]); "
                             "pass uint8 for [0, 255]")
        return np.ascontiguousarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8))
    raise ValueError(f"{key}: images must be uint8 or float, got {array.dtype}")


def _vector(key: str, value: Any, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    array = _as_numpy(value)
    if array.shape != shape:
        if array.size == int(np.prod(shape)) and (array.ndim == 0 or shape == (1,)):
            array = array.reshape(shape)  # scalars for [1] features
        else:
            raise ValueError(f"{key}: expected shape {shape}, got {array.shape}")
    return array.astype(dtype, copy=False)


# A write-ahead snapshot taken before every episode write and removed once the episode is on disk: a crash inside
# the write leaves it, and reopening rolls the recording back to it (the episode being written is dropped).
JOURNAL = ".vla_steer_episode_journal"
_META_FILES = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet")
_EPISODE_FOLDERS = ("data", "meta/episodes")


def _parquet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for folder in _EPISODE_FOLDERS for p in (root / folder).rglob("*.parquet"))


def _begin_episode_write(root: Path) -> None:
    """Snapshot the metadata LeRobot rewrites and the list of episode files, then commit it with one rename."""
    tmp = root / f"{JOURNAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    present = [name for name in _META_FILES if (root / name).is_file()]
    for name in present:
        shutil.copyfile(root / name, tmp / name.replace("/", "__"))
    (tmp / "state.json").write_text(json.dumps({"meta": present, "files": _parquet_files(root)}))
    shutil.rmtree(root / JOURNAL, ignore_errors=True)
    tmp.rename(root / JOURNAL)


def _discard_journal(root: Path) -> None:
    """Retire the journal with one rename (its removal file by file is not atomic: a crash halfway would leave a
    journal that looks committed but lacks its snapshots), then delete it."""
    discarded = root / f"{JOURNAL}.discard"
    shutil.rmtree(discarded, ignore_errors=True)
    if (root / JOURNAL).exists():
        (root / JOURNAL).rename(discarded)
    shutil.rmtree(discarded, ignore_errors=True)


def _end_episode_write(root: Path) -> None:
    _discard_journal(root)


def _roll_back_interrupted_write(root: Path) -> bool:
    """Undo an episode write a crash cut short: remove the files it added, restore the metadata it rewrote.
    Returns whether there was one to undo."""
    shutil.rmtree(root / f"{JOURNAL}.tmp", ignore_errors=True)  # a snapshot never committed: nothing was written
    shutil.rmtree(root / f"{JOURNAL}.discard", ignore_errors=True)  # a retired one: its episode was complete
    journal = root / JOURNAL
    if not journal.exists():
        return False
    state = json.loads((journal / "state.json").read_text())  # committed whole, by one rename
    for name in set(_parquet_files(root)) - set(state["files"]):
        (root / name).unlink()
    for name in _META_FILES:
        if name in state["meta"]:
            shutil.copyfile(journal / name.replace("/", "__"), root / f"{name}.restoring")
            (root / f"{name}.restoring").replace(root / name)
        else:
            (root / name).unlink(missing_ok=True)
    _discard_journal(root)
    return True


def _check_consistent(root: Path) -> None:
    """Refuse a recording whose last episode write was interrupted (unreadable parquet, counts off)."""
    import pyarrow.parquet as pq

    info = json.loads((root / "meta" / "info.json").read_text())
    counts = {}
    for folder in ("data", "meta/episodes"):
        rows = 0
        for path in sorted((root / folder).glob("*/*.parquet")):
            try:
                rows += pq.read_metadata(path).num_rows
            except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a missing footer
                raise RuntimeError(
                    f"{root}: {path.relative_to(root)} is unreadable ({error}); the recording was interrupted while "
                    "an episode was being written. The episodes before it are intact in the other files; move the "
                    "directory aside and record to a new root."
                ) from error
        counts[folder] = rows
    if counts["data"] != info["total_frames"] or counts["meta/episodes"] != info["total_episodes"]:
        raise RuntimeError(
            f"{root}: meta/info.json lists {info['total_episodes']} episodes / {info['total_frames']} frames but the "
            f"files hold {counts['meta/episodes']} / {counts['data']}; the recording was interrupted while an episode "
            "was being written. Move the directory aside and record to a new root."
        )


class RolloutRecorder:
    """Writes rollouts of several envs to one LeRobotDataset v3 at ``root``, one finished episode at a time.

    Args:
        root: the dataset directory. It must not exist, be empty, or (with ``append=True``) hold a recording this
            recorder wrote with the same features. Anything else is refused.
        fps: frames per second stored in the dataset (the env's control rate).
        observation_features: ``{key: {"dtype": "float32" | any numpy dtype | "image", "shape": ...}}``, keyed as the
            frames are (``observation.state``, ``observation.image`` ...). Image shapes are ``(H, W, 3)`` or
            ``(3, H, W)``; images are stored uint8 ``(H, W, 3)``.
        action_dim: width of the executed (environment-space) actions.
        latent_dim: width of the steering latent.
        task: the task string of every frame (a frame may carry its own ``"task"``).
        repo_id: the dataset's repo id (default ``vla_steer/<root name>``).
        append: add episodes to an existing recording at ``root``.

    Frames (one dict per executed env step) hold the observation entries (numpy or torch; images float
    ``[C, H, W]`` in [0, 1] or uint8 ``[H, W, C]``), ``action`` ``[A]``, ``latent`` ``[L]`` (the chunk's latent, the
    same for every row of the chunk), ``reward``, ``success``, ``done`` (true termination), ``chunk_row`` (0 .. k-1)
    and optionally ``task``. Episodes of different envs interleave freely: each env's frames are buffered until
    :meth:`end_episode`, which writes them as one LeRobot episode (episode indices follow the order episodes end).
    Episodes still in progress at :meth:`close` (or at interpreter exit, which closes the recorder) are dropped.
    """

    def __init__(self, root: str | Path, *, fps: int, observation_features: dict[str, dict], action_dim: int,
                 latent_dim: int, task: str, repo_id: str | None = None, append: bool = False,
                 interventions: bool = False):
        import datasets
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        datasets.disable_progress_bars()  # LeRobot's per-episode stats would print a bar for every episode
        self.root = Path(root)
        self.task = task
        self.repo_id = repo_id or f"vla_steer/{self.root.name}"
        self.action_dim, self.latent_dim = int(action_dim), int(latent_dim)
        self.interventions = interventions
        self.frame_keys = set(_FRAME_KEYS) | ({"intervention"} if interventions else set())
        self.features = self._features(observation_features)
        self.observation_keys = list(observation_features)
        self.image_keys = [key for key in self.observation_keys if self.features[key]["dtype"] == "image"]
        spec = {"format": _FORMAT, "fps": int(fps), "action_dim": self.action_dim, "latent_dim": self.latent_dim,
                "features": {key: {"dtype": f["dtype"], "shape": list(f["shape"])} for key, f in self.features.items()}}

        marker = self.root / RECORDER_MARKER
        if self.root.exists() and any(self.root.iterdir()):
            if not marker.is_file() or not (self.root / "meta" / "info.json").is_file():
                raise FileExistsError(
                    f"{self.root} is not empty and is not a recording written by RolloutRecorder (no {RECORDER_MARKER}"
                    " next to meta/info.json); record to a new or empty directory")
            if not append:
                raise FileExistsError(
                    f"{self.root} already holds a recording; pass append=True to add episodes to it, or record to a "
                    "new directory")
            written = json.loads(marker.read_text())
            if written != spec:
                raise ValueError(f"{self.root} was recorded with {written}, which differs from this recorder's {spec}")
            if _roll_back_interrupted_write(self.root):
                logger.warning("%s: an episode write was interrupted (a crash); it was rolled back", self.root)
            _check_consistent(self.root)
            shutil.rmtree(self.root / "images", ignore_errors=True)  # temporary PNGs of an episode cut short
        if marker.is_file() and json.loads((self.root / "meta" / "info.json").read_text())["total_episodes"] > 0:
            self.dataset = LeRobotDataset(repo_id=self.repo_id, root=self.root)
        else:  # new, empty, or a recording that never got its first episode (LeRobot cannot reopen that one)
            if self.root.exists():
                shutil.rmtree(self.root) if marker.is_file() else self.root.rmdir()  # LeRobot creates it itself
            self.dataset = LeRobotDataset.create(repo_id=self.repo_id, fps=int(fps), features=self.features,
                                                 root=self.root, use_videos=False)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(spec, indent=2))
            tmp.replace(marker)
        self.dataset.meta.update_chunk_settings(data_files_size_in_mb=_ONE_FILE_PER_EPISODE_MB)
        self._pending: dict[int, list[dict]] = {}
        self._ended: set[int] = set()  # envs whose pending episode already saw a done frame
        self.closed = False
        atexit.register(self.close)

    # ------------------------------------------------------------------------------------------------
    def _features(self, observation_features: dict[str, dict]) -> dict[str, dict]:
        reserved = {"action", "steering.latent", "steering.chunk_row", "steering.intervention", "next.reward",
                    "next.success", "next.done",
                    "timestamp", "frame_index", "episode_index", "index", "task_index", "task"}
        features = {}
        for key, spec in observation_features.items():
            if key in reserved or "/" in key:
                raise ValueError(f"observation feature name {key!r} is reserved or contains '/'")
            dtype = spec["dtype"]
            if dtype == "image":
                features[key] = {"dtype": "image", "shape": _image_shape(key, spec["shape"]),
                                 "names": ["height", "width", "channels"]}
            elif dtype == "video":
                raise ValueError(f"{key}: video features are not recorded (lossy, slow per episode); use 'image'")
            else:
                np.dtype(dtype)  # raises on an unknown dtype
                features[key] = {"dtype": dtype, "shape": tuple(int(s) for s in spec["shape"]), "names": None}
        features.update({
            "action": {"dtype": "float32", "shape": (self.action_dim,), "names": None},
            "steering.latent": {"dtype": "float32", "shape": (self.latent_dim,), "names": None},
            "steering.chunk_row": {"dtype": "int64", "shape": (1,), "names": None},
            "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
            "next.success": {"dtype": "bool", "shape": (1,), "names": None},
            "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        })
        if self.interventions:
            features["steering.intervention"] = {"dtype": "bool", "shape": (1,), "names": None}
        return features

    def _convert(self, frame: dict) -> dict:
        expected = set(self.observation_keys) | self.frame_keys
        missing, unknown = expected - set(frame), set(frame) - expected - {"task"}
        if missing or unknown:
            raise KeyError(f"frame keys: missing {sorted(missing)}, unknown {sorted(unknown)}; a frame holds "
                           f"{sorted(expected)} and optionally 'task'")
        out = {}
        for key in self.observation_keys:
            feature = self.features[key]
            out[key] = (_image_frame(key, frame[key], feature["shape"]) if feature["dtype"] == "image"
                        else _vector(key, frame[key], feature["dtype"], feature["shape"]))
        out["action"] = _vector("action", frame["action"], "float32", (self.action_dim,))
        out["steering.latent"] = _vector("latent", frame["latent"], "float32", (self.latent_dim,))
        out["steering.chunk_row"] = _vector("chunk_row", frame["chunk_row"], "int64", (1,))
        out["next.reward"] = _vector("reward", frame["reward"], "float32", (1,))
        out["next.success"] = _vector("success", frame["success"], "bool", (1,))
        out["next.done"] = _vector("done", frame["done"], "bool", (1,))
        if self.interventions:
            out["steering.intervention"] = _vector("intervention", frame["intervention"], "bool", (1,))
        out["task"] = str(frame.get("task", self.task))
        return out

    # ------------------------------------------------------------------------------------------------
    def add_frames(self, env_index: int, frames: list[dict]) -> None:
        """Buffer executed steps of env ``env_index``'s current episode (validated and copied now)."""
        if self.closed:
            raise RuntimeError("the recorder is closed")
        env_index = int(env_index)
        converted = [self._convert(frame) for frame in frames]  # all validated before any is kept
        done = [bool(frame["next.done"][0]) for frame in converted]
        if converted and (env_index in self._ended or any(done[:-1])):
            raise ValueError(f"env {env_index}: a frame follows a done frame; call end_episode({env_index}) when the "
                             "episode terminates")
        self._pending.setdefault(env_index, []).extend(converted)
        if any(done):
            self._ended.add(env_index)

    def end_episode(self, env_index: int) -> int | None:
        """Write env ``env_index``'s buffered frames as one episode and flush it to disk; returns its episode index
        (``None`` when the env had no frames)."""
        if self.closed:
            raise RuntimeError("the recorder is closed")
        frames = self._pending.pop(int(env_index), [])
        self._ended.discard(int(env_index))
        if not frames:
            return None
        episode_index = self.dataset.meta.total_episodes
        _begin_episode_write(self.root)
        try:
            for frame in frames:
                self.dataset.add_frame(dict(frame))  # add_frame pops "task" from the dict it gets
            self.dataset.save_episode()
        except BaseException:
            # the files may be half written: stop here without finalizing; reopening (append=True) rolls them back
            self.closed = True
            atexit.unregister(self.close)
            raise
        self.dataset.finalize()  # footers written: everything up to this episode loads after a crash
        _end_episode_write(self.root)
        return episode_index

    def discard_episode(self, env_index: int) -> int:
        """Drop env ``env_index``'s buffered frames (e.g. after a reset that did not end the episode); returns how
        many were dropped."""
        self._ended.discard(int(env_index))
        return len(self._pending.pop(int(env_index), []))

    @property
    def pending_frames(self) -> dict[int, int]:
        """Frames buffered per env (episodes in progress)."""
        return {env: len(frames) for env, frames in self._pending.items() if frames}

    @property
    def num_episodes(self) -> int:
        return self.dataset.meta.total_episodes

    @property
    def num_frames(self) -> int:
        return self.dataset.meta.total_frames

    def close(self) -> None:
        """Finalize the dataset; episodes still in progress are dropped (logged). Idempotent."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        dropped = self.pending_frames
        if dropped:
            logger.warning("RolloutRecorder: dropping %d unfinished episode(s) (%d frames) at close",
                           len(dropped), sum(dropped.values()))
        self._pending.clear()
        self._ended.clear()
        self.dataset.finalize()
        from lerobot.datasets.utils import DEFAULT_DATA_FILE_SIZE_IN_MB

        self.dataset.meta.update_chunk_settings(data_files_size_in_mb=DEFAULT_DATA_FILE_SIZE_IN_MB)

    def __enter__(self) -> "RolloutRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
