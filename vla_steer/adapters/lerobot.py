"""Which adapter steers a given LeRobot policy: the policy type (``config.type``) decides.

Adapter modules import their LeRobot policy module (seconds; pi0 / pi0.5 also need the openpi-patched
transformers), so each is imported only when a policy of its type is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from vla_steer.adapters.base import SteerableAdapter

# LeRobot policy type -> (module, adapter class)
LEROBOT_ADAPTERS: dict[str, tuple[str, str]] = {
    "diffusion": ("vla_steer.adapters.lerobot_diffusion", "DiffusionPolicyAdapter"),
    "smolvla": ("vla_steer.adapters.smolvla", "SmolVLAAdapter"),
    "pi0": ("vla_steer.adapters.pi0", "PI0Adapter"),
    "pi05": ("vla_steer.adapters.pi0", "PI05Adapter"),
    "xvla": ("vla_steer.adapters.xvla", "XVLAAdapter"),
}


def lerobot_adapter_class(policy_type: str) -> type[SteerableAdapter]:
    """The adapter class for a LeRobot policy type such as ``"smolvla"``."""
    if policy_type not in LEROBOT_ADAPTERS:
        raise ValueError(
            f"no adapter steers LeRobot policies of type {policy_type!r}; supported: {', '.join(sorted(LEROBOT_ADAPTERS))}"
        )
    module, name = LEROBOT_ADAPTERS[policy_type]
    return getattr(importlib.import_module(module), name)


def adapter_for_lerobot_policy(policy, **adapter_kwargs: Any) -> SteerableAdapter:
    """Wrap a LeRobot ``PreTrainedPolicy`` instance in its adapter (which freezes it in place).

    ``adapter_kwargs`` go to the adapter's constructor (``pooling``, ``num_steps``, ``num_inference_steps`` ...).
    """
    return lerobot_adapter_class(policy.config.type)(policy, **adapter_kwargs)
