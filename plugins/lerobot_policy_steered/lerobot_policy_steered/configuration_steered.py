"""Registers ``SteeredConfig`` as LeRobot policy type ``"steered"`` (``PreTrainedConfig.register_subclass``).

The class is defined in ``vla_steer.lerobot_policy.configuration_steered``, so LeRobot's name-based lookups
(``configuration_`` -> ``modeling_`` / ``processor_``) resolve inside ``vla_steer.lerobot_policy``.
"""

from vla_steer.lerobot_policy.configuration_steered import SteeredConfig

__all__ = ["SteeredConfig"]
