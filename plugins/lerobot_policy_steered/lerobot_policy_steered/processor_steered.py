from vla_steer.lerobot_policy.processor_steered import make_steered_pre_post_processors

__all__ = ["make_steered_pre_post_processors"]
