"""LeRobot plugin for vla_steer's ``steered`` policy type (the implementation lives in ``vla_steer.lerobot_policy``).

Importing this package registers ``SteeredConfig`` under the type ``"steered"`` and this project's fast Meta-World
env under the env type ``"vla_steer_meta_world"``; LeRobot's ``register_third_party_plugins()`` does that for every
installed distribution named ``lerobot_policy_*``.
"""

import vla_steer.envs.lerobot_metaworld  # noqa: F401  (registers the env type for lerobot-eval --env.type=...)

from lerobot_policy_steered.configuration_steered import SteeredConfig
from lerobot_policy_steered.modeling_steered import SteeredPolicy
from lerobot_policy_steered.processor_steered import make_steered_pre_post_processors

__all__ = ["SteeredConfig", "SteeredPolicy", "make_steered_pre_post_processors"]
