"""The scripted expert for gym_hil's PandaPickCube: demonstrations (``vla_steer.data.demos``) and the scripted
person's interventions (``ScriptedTeleop.intervention_expert``) both act with it. Here, beside the robot inputs,
because it depends on nothing but numpy."""

from __future__ import annotations

import numpy as np


def gym_hil_pick_expert():
    """A geometric controller for gym_hil's PandaPickCube (end-effector deltas in [-1, 1] x 0.025 m, gripper command
    0 open / 1 stay / 2 close) on LeRobot's processed observation: ``observation.state`` = joint positions (7),
    velocities (7), gripper command (0..255), pinch point (3); ``observation.environment_state`` = the cube (3).
    Stateless and smooth (easy to clone): it descends onto the cube as it lines up above it, closes once there, then
    lifts. Succeeds 30/30 with action noise 0.3, 28/30 with 0.6, 11/30 with 1.0."""

    def act(obs, env=None):
        state, cube = np.asarray(obs["observation.state"]), np.asarray(obs["observation.environment_state"])
        pinch, gripper_command = state[-3:], state[14]
        to_cube = cube - pinch
        action = np.zeros(4, np.float32)
        if gripper_command > 128 and np.linalg.norm(to_cube) < 0.02:  # closed on it: lift
            action[:] = [0.0, 0.0, 1.0, 2.0]
            return action
        off_axis = np.linalg.norm(to_cube[:2])
        height = 0.06 * np.clip((off_axis - 0.005) / 0.02, 0.0, 1.0)  # 6 cm above it until lined up, then down
        action[:3] = np.clip((cube + np.array([0.0, 0.0, height - 0.005]) - pinch) / 0.025, -1.0, 1.0)
        action[3] = 2.0 if off_axis < 0.008 and to_cube[2] > -0.012 else 0.0  # at the cube: close
        return action

    return act
