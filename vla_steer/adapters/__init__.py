from vla_steer.adapters.base import Context, LatentLayout, SteerableAdapter, map_tensors
from vla_steer.adapters.flow_head import FlowHeadAdapter
from vla_steer.adapters.native import NativePolicyAdapter

__all__ = [
    "Context",
    "DiffusionPolicyAdapter",
    "FlowHeadAdapter",
    "LatentLayout",
    "NativePolicyAdapter",
    "SteerableAdapter",
    "map_tensors",
]


def __getattr__(name: str):
    # Importing LeRobot's diffusion policy (and diffusers) takes seconds: load it only when asked for.
    if name == "DiffusionPolicyAdapter":
        from vla_steer.adapters.lerobot_diffusion import DiffusionPolicyAdapter

        return DiffusionPolicyAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
