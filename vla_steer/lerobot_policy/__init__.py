"""The registered LeRobot policy type ``"steered"``: a frozen base policy steered by a trained head.

Importing this package registers ``SteeredConfig`` with LeRobot. ``lerobot-eval`` / ``lerobot-train`` import it
through the ``lerobot_policy_steered`` plugin distribution (``plugins/lerobot_policy_steered``) or
``--policy.discover_packages_path=vla_steer.lerobot_policy``.
"""

from vla_steer.lerobot_policy.configuration_steered import SteeredConfig
from vla_steer.lerobot_policy.head import ActingHead, HeadFormatError
from vla_steer.lerobot_policy.modeling_steered import SteeredPolicy
from vla_steer.lerobot_policy.processor_steered import make_steered_pre_post_processors

__all__ = ["ActingHead", "HeadFormatError", "SteeredConfig", "SteeredPolicy", "make_steered_pre_post_processors"]
