from vla_steer.adapters.base import Context, LatentLayout, SteerableAdapter, map_tensors
from vla_steer.adapters.flow_head import FlowHeadAdapter
from vla_steer.adapters.native import NativePolicyAdapter

__all__ = [
    "Context",
    "DiffusionPolicyAdapter",
    "FlowHeadAdapter",
    "LatentLayout",
    "LeRobotPolicyAdapter",
    "NativePolicyAdapter",
    "PI05Adapter",
    "PI0Adapter",
    "SmolVLAAdapter",
    "SteerableAdapter",
    "XVLAAdapter",
    "adapter_for_lerobot_policy",
    "lerobot_adapter_class",
    "map_tensors",
]


# Importing LeRobot's policy modules (diffusers, transformers) takes seconds, and pi0 / pi0.5 need the
# openpi-patched transformers: each LeRobot adapter is imported only when asked for.
_LAZY = {
    "DiffusionPolicyAdapter": "vla_steer.adapters.lerobot_diffusion",
    "SmolVLAAdapter": "vla_steer.adapters.smolvla",
    "PI0Adapter": "vla_steer.adapters.pi0",
    "PI05Adapter": "vla_steer.adapters.pi0",
    "XVLAAdapter": "vla_steer.adapters.xvla",
    "LeRobotPolicyAdapter": "vla_steer.adapters.lerobot",
    "adapter_for_lerobot_policy": "vla_steer.adapters.lerobot",
    "lerobot_adapter_class": "vla_steer.adapters.lerobot",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
