"""The registered LeRobot policy type ``"steered"``: a frozen base policy steered by a trained head; the acting head;
loading and exporting shared heads.

Importing this package registers ``SteeredConfig`` with LeRobot. ``lerobot-eval`` / ``lerobot-train`` import it
through the ``lerobot_policy_steered`` plugin distribution (``plugins/lerobot_policy_steered``) or
``--policy.discover_packages_path=vla_steer.lerobot_policy``.

This package sits above the head format (``vla_steer.hub``): it imports the hub, the hub never imports it.
"""

from vla_steer.lerobot_policy.configuration_steered import SteeredConfig
from vla_steer.lerobot_policy.head import ActingHead, BaseMismatchError, HeadFormatError
from vla_steer.lerobot_policy.modeling_steered import SteeredPolicy
from vla_steer.lerobot_policy.processor_steered import make_steered_pre_post_processors
from vla_steer.lerobot_policy.sharing import SteeredChunkPolicy, export_run, load_steered

__all__ = ["ActingHead", "BaseMismatchError", "HeadFormatError", "SteeredChunkPolicy", "SteeredConfig", "SteeredPolicy",
           "export_run", "load_steered", "make_steered_pre_post_processors"]
