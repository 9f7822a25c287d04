"""Observations in the replay buffer, for an action critic on a base whose context cannot be stored.

DSRL-NA and LP-DS with ``critic: action`` decode actions at replayed states. A VLA's context (a KV cache) is too
large for the buffer, so the collector stores the processed observation batch the adapter encodes (these fields) and
each update encodes it again (``SteeringAlgorithm.decode_stored``).
"""

from __future__ import annotations

import torch

#: transition fields of a stored observation (bases whose context cannot be stored, for the action critic's re-encode):
#: ``obs/<key>`` at s, ``next_obs/<key>`` at s'; ``obs_u8/<key>`` holds an image stored as bytes (see
#: :func:`observation_fields`)
OBSERVATION_FIELD, IMAGE_BYTES_FIELD = "obs/", "obs_u8/"


def observation_fields(observation: dict, prefix: str, as_bytes: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of a processed observation batch (what ``adapter.encode`` reads) as transition fields.

    Images in ``as_bytes`` are stored as uint8, 4x smaller than float32 and exact: LeRobot's processed frames are
    uint8 pixels / 255 (:func:`images_stored_as_bytes` picks them). Non-tensor entries (the task text) are dropped: the
    language tokens carry it."""
    fields = {}
    for key, value in observation.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key in as_bytes:
            pixels = _pixel_bytes(value)
            if pixels is None:
                raise ValueError(f"{key} is no longer whole 1/255 steps, as in the first batch; the replay buffer "
                                 "stores it as uint8. Does the env's image processing change between steps?")
            fields[f"{prefix}{IMAGE_BYTES_FIELD}{key}"] = pixels
        else:
            fields[f"{prefix}{OBSERVATION_FIELD}{key}"] = value
    return fields


def _pixel_bytes(value: torch.Tensor) -> torch.Tensor | None:
    """``value`` as uint8 pixels when it holds values in [0, 1] that are whole multiples of 1/255, up to float rounding
    (a GPU divides by multiplying by 1/255, which is off by an ulp; the uint8 copy restores them to within that ulp);
    ``None`` otherwise."""
    pixels = value * 255
    rounded = pixels.round()
    if (pixels - rounded).abs().max() > 1e-3 or value.min() < 0 or value.max() > 1:
        return None
    return rounded.to(torch.uint8)


def images_stored_as_bytes(observation: dict) -> set[str]:
    """The float image entries (``[B, C, H, W]``) of a processed batch whose values are whole multiples of 1/255."""
    return {key for key, value in observation.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim == 4
            and _pixel_bytes(value) is not None}


def image_keys_stored_as_bytes(fields) -> set[str]:
    """The observation keys a buffer's fields keep as uint8 (what a resumed collector must store alike)."""
    return {field.removeprefix(IMAGE_BYTES_FIELD) for field in fields if field.startswith(IMAGE_BYTES_FIELD)}


def stored_observations(batch: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The processed observation batch stored under ``prefix`` (``""``: s, ``"next_"``: s'), images back in [0, 1]."""
    observation = {}
    for field, value in batch.items():
        if field.startswith(prefix + OBSERVATION_FIELD):
            observation[field.removeprefix(prefix + OBSERVATION_FIELD)] = value
        elif field.startswith(prefix + IMAGE_BYTES_FIELD):
            observation[field.removeprefix(prefix + IMAGE_BYTES_FIELD)] = value.float() / 255
    if not observation:
        raise KeyError(f"the batch holds no stored observations under {prefix!r}: the collector stores them only when "
                       "the algorithm re-encodes (an action critic on a base whose context cannot be stored)")
    return observation
