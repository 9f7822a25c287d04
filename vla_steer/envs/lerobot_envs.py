"""LeRobot's env configs (``pusht``, ``aloha``, ``libero``, ``metaworld``, ``vla_steer_meta_world`` ...) as recipe envs.

A recipe names one with ``env.type`` and gives the config's own fields beside it; :func:`lerobot_env_config`
checks them against the registered LeRobot config class before any work. Each env is built by LeRobot's own
``make_env`` (one env per call, so every env of the trainer's vector env is exactly what ``lerobot-eval`` steps)
and keeps LeRobot's raw observation keys (``pixels``, ``agent_pos``, ``environment_state`` ...); the trainer's
observation pipeline then applies LeRobot's ``preprocess_observation``, the task text, the env processors and the
policy's processors, in ``lerobot-eval``'s order.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import gymnasium as gym


def lerobot_env_config_class(env_type: str):
    from lerobot.envs.configs import EnvConfig

    import vla_steer.envs.lerobot_metaworld  # noqa: F401  registers the vla_steer_meta_world type

    choices = EnvConfig.get_known_choices()
    if env_type not in choices:
        close = difflib.get_close_matches(env_type, list(choices), n=2)
        raise ValueError(f"unknown LeRobot env type {env_type!r}" + (f"; did you mean {close}?" if close else "")
                         + f" Registered types: {', '.join(sorted(choices))}")
    return choices[env_type]


def lerobot_env_config(env_type: str, options: dict[str, Any]):
    """The LeRobot ``EnvConfig`` of ``env_type`` with ``options`` as its fields; a ``ValueError`` names any unknown
    field (with the closest allowed one) or value the config refuses."""
    from vla_steer.envs.robot_env import ENV_TYPE as ROBOT_ENV_TYPE, robot_env_config

    cls = lerobot_env_config_class(env_type)
    allowed = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("features", "features_map")]
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ValueError(f"unknown field 'env.{key}' for LeRobot env type {env_type!r}."
                             + (f" Did you mean {close[0]!r}?" if close else "") + f" Its fields: {', '.join(allowed)}")
    if env_type == ROBOT_ENV_TYPE:  # nested robot / teleop / processor sections: decoded as LeRobot decodes them
        return robot_env_config(options)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"env.type {env_type!r} refuses these fields: {exc}") from None


def make_lerobot_env(env_config, kwargs: dict | None = None, with_teleop: bool = True, safety=None) -> gym.Env:
    """One env, built by LeRobot's ``make_env`` exactly as ``lerobot-eval`` builds each env of its vector env (for
    multi-task suites such as LIBERO: the first task of the first suite). A robot env (``gym_manipulator``, which
    ``make_env`` cannot build) comes from LeRobot's ``make_robot_env`` / ``make_processors`` instead
    (:class:`vla_steer.envs.robot_env.LeRobotRobotEnv`; ``kwargs``, ``with_teleop`` and ``safety`` apply to it only)."""
    from lerobot.envs.configs import HILSerlRobotEnvConfig
    from lerobot.envs.factory import make_env

    if isinstance(env_config, HILSerlRobotEnvConfig):
        from vla_steer.envs.robot_env import LeRobotRobotEnv

        return LeRobotRobotEnv(env_config, kwargs, with_teleop, safety)

    suites = make_env(env_config, n_envs=1)
    vector_env = next(iter(next(iter(suites.values())).values()))
    return vector_env.envs[0]


def task_texts(vector_env: gym.vector.VectorEnv) -> list[str]:
    """Per-env task text as LeRobot's ``add_envs_task`` finds it (``task_description``, else ``task``, else ""),
    read through any wrappers."""
    for attribute in ("task_description", "task"):
        try:
            texts = list(vector_env.get_attr(attribute))
        except AttributeError:
            continue
        if all(isinstance(text, str) for text in texts):
            return texts
    return [""] * vector_env.num_envs
