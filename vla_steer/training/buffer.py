"""A bounded replay buffer of chunk transitions, stored as preallocated tensors (FIFO when full)."""

from __future__ import annotations

import torch


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
