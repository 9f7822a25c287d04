"""``make_steered_pre_post_processors``: a steered policy uses its base's processors, unchanged.

LeRobot calls this factory (found by module name from ``SteeredConfig``) only when no checkpoint directory
is given; a saved steered directory carries copies of the base's processor files, which LeRobot loads itself
(after ``SteeredPolicy.from_pretrained`` has checked them).
"""

from __future__ import annotations

from typing import Any

from vla_steer.lerobot_policy.configuration_steered import SteeredConfig


def make_steered_pre_post_processors(config: SteeredConfig, dataset_stats: dict[str, Any] | None = None):
    """The base's processor files if its checkpoint ships them, else the base type's own processor factory."""
    from pathlib import Path

    from lerobot.policies.factory import make_pre_post_processors

    from vla_steer.hub.format import PROCESSOR_CONFIG_NAMES, check_processor_config
    from vla_steer.lerobot_policy.modeling_steered import load_base_config

    steered_dir = config.pretrained_path
    source, base_config = load_base_config(config, steered_dir)  # a local directory (a Hub base: its snapshot)
    for name in PROCESSOR_CONFIG_NAMES:  # checked before LeRobot reads them: no step may name a class to import
        if (Path(source) / name).is_file():
            check_processor_config(Path(source) / name)
    from vla_steer.lerobot_policy.action_limits import with_action_limits

    try:
        pre, post = make_pre_post_processors(base_config, pretrained_path=source)
    except Exception:  # no processor files in the base checkpoint (LeRobot raises several types)
        pre, post = make_pre_post_processors(base_config, dataset_stats=dataset_stats)
    return pre, with_action_limits(post, config.action_limits)
