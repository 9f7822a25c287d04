from vla_steer.adapters.base import Context, LatentLayout, SteerableAdapter, map_tensors
from vla_steer.adapters.native import NativePolicyAdapter

__all__ = ["Context", "LatentLayout", "NativePolicyAdapter", "SteerableAdapter", "map_tensors"]
