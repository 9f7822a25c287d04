"""Pooling a VLM's token hidden states into the steering head's feature vector (SmolVLA, pi0/pi0.5, X-VLA)."""

from __future__ import annotations

from typing import Literal

import torch

Pooling = Literal["mean", "last", "mean+last"]
POOLINGS: tuple[str, ...] = ("mean", "last", "mean+last")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    return pooling


def pooled_width(hidden_size: int, pooling: Pooling) -> int:
    """Width of the concatenated :func:`pool_tokens` pieces: one ``hidden_size`` per summary."""
    return hidden_size * (2 if pooling == "mean+last" else 1)


def pool_tokens(hidden: torch.Tensor, valid: torch.Tensor, pooling: Pooling) -> list[torch.Tensor]:
    """``hidden [B, L, H]`` over the valid positions of ``valid [B, L]``: the masked mean, the last valid token
    (the state token in SmolVLA's prefix, the last real language token in pi0's), or both. Computed in
    ``hidden``'s dtype; returns the pieces to concatenate, ``[B, H]`` each."""
    valid = valid.to(hidden.device).bool()
    mask = valid.to(hidden.dtype).unsqueeze(-1)
    pieces = []
    if pooling in ("mean", "mean+last"):
        pieces.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0))
    if pooling in ("last", "mean+last"):
        # padding may follow the last valid token, so take the highest valid position, not position -1
        positions = torch.arange(valid.shape[1], device=valid.device)
        last_index = torch.where(valid, positions, -1).amax(dim=1)
        pieces.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index])
    return pieces
