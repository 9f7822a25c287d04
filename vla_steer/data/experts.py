"""Scripted experts for demonstration generation.

An expert is ``expert(obs, env) -> action`` on the *flat* observation our envs emit; ``env`` is the
single (unchunked) environment, for experts that need simulator internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from vla_steer.envs.registry import METAWORLD_PREFIX
from vla_steer.robot.pick_expert import gym_hil_pick_expert  # noqa: F401  (with the robot: its scripted person uses it)

Expert = Callable[[np.ndarray, object], np.ndarray]


def _metaworld_expert(task: str) -> Expert:
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task]()
    return lambda obs, env: np.asarray(policy.get_action(obs), dtype=np.float32)


def _lunar_lander_expert() -> Expert:
    from gymnasium.envs.box2d.lunar_lander import heuristic

    return lambda obs, env: np.asarray(heuristic(env.unwrapped, obs), dtype=np.float32)


def _fetch_expert(task: str) -> Expert:
    """State machines on Fetch's privileged observation (flattened as achieved_goal, desired_goal, observation).

    ``observation``: grip_pos 0:3, object_pos 3:6, object_rel_pos 6:9, gripper_state 9:11, ...
    """

    def split(obs):
        return obs[3:6], obs[6:]  # desired_goal, observation (achieved_goal is obs[0:3])

    def reach(obs, env):
        goal, o = split(obs)
        return np.clip(np.r_[10.0 * (goal - o[0:3]), 0.0], -1, 1).astype(np.float32)

    def pick_and_place(obs, env):
        goal, o = split(obs)
        grip, obj = o[0:3], o[3:6]
        gripper_width = o[9] + o[10]
        above = obj + np.array([0.0, 0.0, 0.05])
        xy_err = np.linalg.norm(grip[:2] - obj[:2])
        holding = np.linalg.norm(grip - obj) < 0.02 and gripper_width < 0.06
        if holding:
            return np.clip(np.r_[10.0 * (goal - grip), -1.0], -1, 1).astype(np.float32)
        if xy_err > 0.01 or grip[2] > obj[2] + 0.06:
            target, grasp = (above if xy_err > 0.01 else obj), 1.0
        else:
            target, grasp = obj, (-1.0 if np.linalg.norm(grip - obj) < 0.01 else 1.0)
        return np.clip(np.r_[10.0 * (target - grip), grasp], -1, 1).astype(np.float32)

    experts = {"FetchReach": reach, "FetchPickAndPlace": pick_and_place}
    for prefix, expert in experts.items():
        if task.startswith(prefix):
            return expert
    raise KeyError(task)


def _robosuite_lift_expert() -> Expert:
    """A geometric controller for robosuite Lift (OSC_POSE delta actions: position error x 10, clipped): above the
    cube, down to it, close, lift. Stateless: the phase is read from where the gripper, its fingers and the cube are."""

    def act(obs, env):
        o = env.unwrapped.observations
        eef, cube = o["robot0_eef_pos"], o["cube_pos"]
        to_cube = cube - eef
        fingers_closed = float(np.sum(np.abs(o["robot0_gripper_qpos"]))) < 0.065  # open ~0.078, on the cube ~0.059
        action = np.zeros(7, np.float32)
        if fingers_closed and np.linalg.norm(to_cube) < 0.03:  # holding it: lift
            action[:3], action[6] = [0.0, 0.0, 1.0], 1.0
        elif np.linalg.norm(to_cube[:2]) > 0.01:  # line up above the cube, fingers open
            action[:3], action[6] = 10.0 * (to_cube + np.array([0.0, 0.0, 0.05])), -1.0
        elif to_cube[2] < -0.01:  # straight down onto it
            action[:3], action[6] = 10.0 * to_cube, -1.0
        else:  # at the cube: close the fingers
            action[6] = 1.0
        return np.clip(action, -1.0, 1.0)

    return act


LOCOMOTION = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5")  # PPO experts trained here (vla_steer.data.ppo_expert)


def make_expert(env_id: str, cache_dir: str | Path = "~/.cache/vla_steer/experts", show_progress: bool = True) -> Expert:
    """The expert for ``env_id``: scripted, or for locomotion a PPO expert trained here on first use and cached in
    ``cache_dir``; raises ``ValueError`` listing the supported families."""
    if env_id in LOCOMOTION:
        from vla_steer.data.ppo_expert import ppo_expert

        actor = ppo_expert(env_id, cache_dir, show_progress=show_progress)
        return lambda obs, env: actor(obs)
    if env_id.startswith(METAWORLD_PREFIX):
        return _metaworld_expert(env_id[len(METAWORLD_PREFIX):])
    if env_id == "robosuite/Lift-v0":
        return _robosuite_lift_expert()
    if env_id.startswith("LunarLanderContinuous"):
        return _lunar_lander_expert()
    try:
        return _fetch_expert(env_id)
    except KeyError:
        pass
    raise ValueError(
        f"no expert for {env_id!r}. Experts exist for 'metaworld/<task>-v3' (all 50 tasks), "
        f"'LunarLanderContinuous-v3', 'FetchReach-v4', 'FetchPickAndPlace-v4', 'robosuite/Lift-v0' and (PPO, trained "
        f"here) {list(LOCOMOTION)}; "
        "otherwise point "
        "`demos.dataset` at an existing LeRobotDataset."
    )
