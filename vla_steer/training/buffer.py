"""A bounded replay buffer of chunk transitions, stored as preallocated tensors (FIFO when full)."""

from __future__ import annotations

import math
import os

import torch

from vla_steer.config import RecipeError


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (CUDA: ``mem_get_info``; CPU: Linux's MemAvailable), or None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class BufferTooLargeError(RecipeError):
    """The replay buffer the recipe asks for would not fit in memory (raised before anything is allocated; the CLI
    prints it as it prints every recipe error)."""


def check_fits_in_memory(capacity: int, batch: dict[str, torch.Tensor], device: torch.device) -> None:
    """Refuse, before allocating, a buffer of ``capacity`` rows like ``batch``'s that would not fit in memory: with
    stored observations (a VLA base's action critic) one row can be tens of kilobytes."""
    row_bytes = sum(math.prod(v.shape[1:]) * v.element_size() for v in batch.values())
    free = available_memory(device)
    # a third of what is free, shared by the processes of this machine: a checkpoint copies the filled buffer once
    # more (and safetensors once again while writing), and updates need room of their own
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    budget = None if free is None else free / 3 / processes
    if budget is not None and capacity * row_bytes > budget:
        raise BufferTooLargeError(
            f"train.buffer_size={capacity:,} rows x {row_bytes:,} bytes per transition = {capacity * row_bytes / 1e9:.1f} "
            f"GB, more than this process's budget of {budget / 1e9:.1f} GB (a third of the {free / 1e9:.1f} GB free on "
            f"{device}, over {processes} process(es): checkpoints copy the buffer); lower train.buffer_size (e.g. "
            f"{int(budget // row_bytes):,})")


class ReplayBuffer:
    """Fields are declared by the first ``add``: every later batch must carry the same keys and shapes."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError("buffer capacity must be >= 1")
        self.capacity, self.device = capacity, torch.device(device)
        self.storage: dict[str, torch.Tensor] = {}
        self.ptr = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        n = next(iter(batch.values())).shape[0]
        if not self.storage:
            check_fits_in_memory(self.capacity, batch, self.device)
            self.storage = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)
                            for k, v in batch.items()}
        if set(batch) != set(self.storage):
            raise KeyError(f"buffer fields are {sorted(self.storage)}, got {sorted(batch)}")
        rows = (self.ptr + torch.arange(n)) % self.capacity
        for key, value in batch.items():
            self.storage[key][rows.to(self.device)] = value.detach().to(self.device, self.storage[key].dtype)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), generator=generator).to(self.device)
        return {k: v[idx].to(device or self.device) for k, v in self.storage.items()}

    # -- persistence: plain tensors + ints (saved with safetensors / JSON by the checkpoint code) -------------
    def state_dict(self) -> dict:
        return {"tensors": {k: v[: self.size].clone() for k, v in self.storage.items()},
                "ptr": self.ptr, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint buffer capacity {state['capacity']} != configured {self.capacity}")
        self.storage = {}
        for key, value in state["tensors"].items():
            self.storage[key] = torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=self.device)
            self.storage[key][: value.shape[0]] = value.to(self.device)
        self.ptr, self.size = int(state["ptr"]), int(state["size"])


# -- offline + online mixing ------------------------------------------------------------------------------------
def buffer_from_transitions(transitions: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> ReplayBuffer:
    """A :class:`ReplayBuffer` holding exactly ``transitions`` (e.g. from
    :func:`vla_steer.data.offline.offline_chunk_transitions`), its capacity their number of rows."""
    n = next(iter(transitions.values())).shape[0] if transitions else 0
    if n == 0:
        raise ValueError("no transitions to put in a buffer")
    buffer = ReplayBuffer(n, device=device)
    buffer.add(transitions)
    return buffer


def mixed_batch_sizes(batch_size: int, offline_fraction: float, online_size: int) -> tuple[int, int]:
    """``(offline rows, online rows)`` of a mixed batch: ``round(batch_size * offline_fraction)`` offline rows (half
    rounds up), the rest online; all offline while the online buffer is empty."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= offline_fraction <= 1.0:
        raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
    if online_size == 0:
        return batch_size, 0
    n_offline = min(batch_size, int(batch_size * offline_fraction + 0.5))
    return n_offline, batch_size - n_offline


def sample_mixed(online: ReplayBuffer, offline: ReplayBuffer, batch_size: int, offline_fraction: float,
                 generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
    """A batch of ``batch_size`` rows, a fixed share from each buffer (see :func:`mixed_batch_sizes`).

    Rows are concatenated **offline first, then online**: rows ``[:n_offline]`` come from ``offline``. Each part is
    drawn uniformly with replacement by the buffer's own :meth:`ReplayBuffer.sample`, offline before online, both
    from ``generator``: the batch is deterministic given the generator's state. Both buffers must hold the same
    fields (offline transitions are built with the online keys for this). An empty offline buffer is an error
    unless ``offline_fraction`` is 0 (then only the online buffer is used).
    """
    n_offline, n_online = mixed_batch_sizes(batch_size, offline_fraction, len(online))
    if n_offline and len(offline) == 0:
        raise RuntimeError(f"cannot draw {n_offline} offline rows: the offline buffer is empty")
    if n_offline and n_online and set(offline.storage) != set(online.storage):
        raise KeyError(f"offline fields {sorted(offline.storage)} differ from online fields {sorted(online.storage)}")
    parts = []
    if n_offline:
        parts.append(offline.sample(n_offline, generator=generator, device=device))
    if n_online:
        parts.append(online.sample(n_online, generator=generator, device=device))
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key in parts[0]:
        first, second = parts[0][key], parts[1][key]
        if first.shape[1:] != second.shape[1:]:
            raise ValueError(f"field {key!r}: offline rows are {tuple(first.shape[1:])}, online rows "
                             f"{tuple(second.shape[1:])}")
        out[key] = torch.cat([first, second.to(first.device)])
    return out


class MixedReplay:
    """Samples like a :class:`ReplayBuffer` (``sample(batch_size, generator, device)``) from an online buffer mixed
    with a fixed offline one, through :func:`sample_mixed`. ``len`` is the online buffer's. Only ``online`` changes
    during training; its checkpoint (``online.state_dict()``) is unchanged by the mixing."""

    def __init__(self, online: ReplayBuffer, offline: ReplayBuffer, offline_fraction: float):
        mixed_batch_sizes(1, offline_fraction, 0)  # validates the fraction
        self.online, self.offline, self.offline_fraction = online, offline, float(offline_fraction)

    def __len__(self) -> int:
        return len(self.online)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
        return sample_mixed(self.online, self.offline, batch_size, self.offline_fraction, generator, device)
