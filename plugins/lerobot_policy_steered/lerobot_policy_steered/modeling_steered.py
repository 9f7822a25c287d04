from vla_steer.lerobot_policy.modeling_steered import SteeredPolicy

__all__ = ["SteeredPolicy"]
