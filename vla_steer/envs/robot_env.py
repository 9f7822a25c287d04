"""LeRobot's human-in-the-loop robot env (``env.type: gym_manipulator``) as one gym env the collector can step.

Everything robot-specific is LeRobot's: ``make_robot_env`` connects the robot and the teleoperator,
``make_processors`` builds the observation and action pipelines HIL-SERL uses (cropping, joint velocities, the
reward classifier, time limits, interventions, end-effector IK and bounds), and every step goes through
``step_env_and_process_transition``. This module only adapts that loop to gymnasium's ``reset`` / ``step`` so a
frozen base + steering head can act in it, and reports what a learner needs in ``info``:

``is_success``       the success label (the person's ``success`` key, the reward classifier, or the sim's own flag)
``is_intervention``  the person held the intervention button on this step
``executed_action``  the action the robot executed (the person's while intervening), in the env's action space

``name: gym_hil`` selects LeRobot's MuJoCo stand-in (the ``gym-hil`` package). LeRobot builds it with images, a
1 s sleep at every reset and no teleoperator (the person comes in through gym-hil's own keyboard wrapper, which
needs a display). Here ``env.kwargs`` reach ``gym.make`` (e.g. ``image_obs: false`` for state observations at
~5 ms per step instead of ~500 ms with two rendered cameras), and a teleoperator named in the options is read
exactly as on a real robot: LeRobot's ``AddTeleopActionAsComplimentaryDataStep`` and ``AddTeleopEventsAsInfoStep``
in front of LeRobot's gym_hil action pipeline.

Every action pipeline ends with :class:`EmergencyStopStep`: after the person's events are read and before the
action reaches ``env.step``, an e-stop (the teleoperator's ``estop`` event, or a teleoperator that disconnected,
which is what ``Esc`` does on LeRobot's keyboard) raises :class:`EmergencyStop`, so no further action is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

ENV_TYPE = "gym_manipulator"


class EmergencyStop(RuntimeError):
    """The person pressed the e-stop (or their teleoperator disconnected): no action is sent after it."""


def _emergency_stop_step_class():
    from lerobot.processor import ProcessorStep, ProcessorStepRegistry
    from lerobot.processor.core import TransitionKey

    from vla_steer.robot.events import ESTOP

    @ProcessorStepRegistry.register("vla_steer_emergency_stop")
    @dataclass
    class EmergencyStopStep(ProcessorStep):
        """The last step of the action pipeline: refuses to pass an action on once the e-stop is pressed."""

        teleop: Any = None

        def __call__(self, transition):
            info = transition.get(TransitionKey.INFO) or {}
            if info.get(ESTOP):
                raise EmergencyStop("e-stop pressed: no action was sent")
            if self.teleop is not None and not self.teleop.is_connected:
                raise EmergencyStop(f"the teleoperator {type(self.teleop).__name__} disconnected (Esc on the keyboard "
                                    "is LeRobot's stop): no action was sent")
            return transition

        def transform_features(self, features):
            return features

    return EmergencyStopStep


_STEP_CLASS = None


def emergency_stop_step(teleop):
    global _STEP_CLASS
    if _STEP_CLASS is None:  # registered once, on first use (LeRobot's registry refuses a second registration)
        _STEP_CLASS = _emergency_stop_step_class()
    return _STEP_CLASS(teleop)


def robot_env_config(options: dict):
    """LeRobot's ``HILSerlRobotEnvConfig`` from the recipe's env options, nested sections (``robot``, ``teleop``,
    ``processor``) decoded by draccus as ``lerobot`` decodes its own config files."""
    import draccus
    from lerobot.envs.configs import HILSerlRobotEnvConfig

    import lerobot.rl.gym_manipulator  # noqa: F401  registers the robots and teleoperators LeRobot's HIL env knows
    import vla_steer.robot.events  # noqa: F401  registers the vla_steer_scripted teleoperator
    import vla_steer.robot.keyboard  # noqa: F401  registers vla_steer_keyboard_ee (LeRobot's keyboard_ee, fixed)

    try:
        config = draccus.decode(HILSerlRobotEnvConfig, dict(options))
    except Exception as exc:  # draccus raises its own parsing errors, which name the field
        raise ValueError(f"env.type {ENV_TYPE!r}: the options do not form a LeRobot HILSerlRobotEnvConfig: {exc}") from None
    classifier = config.processor.reward_classifier if config.processor is not None else None
    if classifier is not None and classifier.pretrained_path is not None:
        # LeRobot 0.4.4's RewardClassifierProcessorStep calls Classifier.predict_reward, which calls
        # self.normalize_inputs: removed from policies in 0.4 (normalisation moved to processors), so the first step
        # raises AttributeError (tests/test_robot.py reproduces it). Refuse up front rather than mid-episode.
        raise ValueError("env.processor.reward_classifier: LeRobot 0.4.4's reward classifier cannot run (its "
                         "Classifier.predict_reward calls normalize_inputs, which LeRobot 0.4 removed). Label success "
                         "with the teleoperator's success key instead, or use the simulator's own success")
    return config


def make_gym_hil_env(config, kwargs: dict | None = None) -> gym.Env:
    """The gym_hil env LeRobot's ``make_robot_env`` builds, with ``kwargs`` passed on to ``gym.make``."""
    try:
        import gym_hil  # noqa: F401  registers gym_hil/* ids
    except ImportError:
        raise ImportError("env.name 'gym_hil' needs the gym-hil package: pip install 'vla-steer[robot]' "
                          "(or pip install --no-deps gym-hil==0.1.14)") from None
    gripper = config.processor.gripper
    options = {"image_obs": True, "use_gripper": gripper.use_gripper if gripper is not None else True,
               "gripper_penalty": gripper.gripper_penalty if gripper is not None else 0.0, "reset_delay_seconds": 0.0,
               **(kwargs or {})}
    return gym.make(f"gym_hil/{config.task}", **options)


class LeRobotRobotEnv(gym.Env):
    """One LeRobot robot env (or gym_hil) with LeRobot's processors; observations are the processed
    ``observation.*`` arrays, without the batch dimension.

    Args:
        config: LeRobot's ``HILSerlRobotEnvConfig`` (:func:`robot_env_config`).
        kwargs: gym_hil only: passed to ``gym.make``.
        with_teleop: ``False`` builds gym_hil without its teleoperator (evaluation: the head alone).
        safety: the recipe's ``safety`` section (:class:`vla_steer.config.SafetyConfig`): pacing to ``config.fps``
            and the watchdog on the period between two actions sent (inference at chunk boundaries included).
    """

    metadata = {"render_modes": []}

    def __init__(self, config, kwargs: dict | None = None, with_teleop: bool = True, safety=None):
        from lerobot.processor import DataProcessorPipeline
        from lerobot.processor.converters import identity_transition
        from lerobot.processor.hil_processor import (AddTeleopActionAsComplimentaryDataStep, AddTeleopEventsAsInfoStep,
                                                     InterventionActionProcessorStep)
        from lerobot.rl.gym_manipulator import make_processors, make_robot_env

        from vla_steer.robot.safety import Watchdog

        self.config = config
        self.task = config.task or ""
        pace = safety.pace_to_fps if safety is not None and safety.pace_to_fps is not None else config.name != "gym_hil"
        self.period_s = 1.0 / config.fps if pace else None
        self.watchdog = (Watchdog(safety.control_period_s, safety.watchdog_misses)
                         if safety is not None and safety.control_period_s else None)
        self._next_send: float | None = None
        if config.name == "gym_hil":
            self.env, self.teleop = make_gym_hil_env(config, kwargs), None
            if config.teleop is not None and with_teleop:
                from lerobot.teleoperators.utils import make_teleoperator_from_config

                self.teleop = make_teleoperator_from_config(config.teleop)
                self.teleop.connect()
        else:
            if kwargs:
                raise ValueError(f"env.kwargs {sorted(kwargs)} only apply to env.name 'gym_hil'; a robot is configured "
                                 "by env.robot and env.processor")
            self.env, self.teleop = make_robot_env(config)
        self.env_processor, action_processor = make_processors(self.env, self.teleop, config)
        steps = list(action_processor.steps)
        if config.name == "gym_hil" and self.teleop is not None:
            use_gripper = config.processor.gripper.use_gripper if config.processor.gripper is not None else True
            for step in steps:
                if isinstance(step, InterventionActionProcessorStep):
                    step.use_gripper = use_gripper  # LeRobot's gym_hil pipeline leaves it False: the gripper would drop
            steps = [AddTeleopActionAsComplimentaryDataStep(self.teleop), AddTeleopEventsAsInfoStep(self.teleop), *steps]
        self.action_processor = DataProcessorPipeline(steps=[*steps, emergency_stop_step(self.teleop)],
                                                      to_transition=identity_transition, to_output=identity_transition)
        self.action_space = self.env.action_space
        self.transition = None
        first, _ = self._reset(seed=0, new_episode=False)  # a probe for the spaces: not an episode of the person's
        self.observation_space = gym.spaces.Dict({key: gym.spaces.Box(-np.inf, np.inf, value.shape, np.float32)
                                                  for key, value in first.items()})

    def _observation(self) -> dict[str, np.ndarray]:
        from lerobot.processor.core import TransitionKey

        observation = self.transition[TransitionKey.OBSERVATION]
        return {key: value.squeeze(0).detach().cpu().numpy().astype(np.float32) for key, value in observation.items()
                if isinstance(value, torch.Tensor)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self._reset(seed, new_episode=True)

    def _reset(self, seed: int | None, new_episode: bool):
        from lerobot.processor.converters import create_transition

        super().reset(seed=seed)
        if seed is not None and self.config.name == "gym_hil":
            np.random.seed(seed)  # gym_hil draws the cube's position (random_block_position) from numpy's global RNG
        obs, info = self.env.reset(seed=seed)
        complementary = {"raw_joint_positions": info.pop("raw_joint_positions")} if "raw_joint_positions" in info else {}
        self.env_processor.reset()
        self.action_processor.reset()
        if self.watchdog is not None:
            self.watchdog.pause()  # a reset is a deliberate wait
        self._next_send = None
        if new_episode and hasattr(self.teleop, "start_episode"):
            self.teleop.start_episode()
        self.transition = self.env_processor(data=create_transition(observation=obs, info=info,
                                                                    complementary_data=complementary))
        return self._show_person(self._observation()), {}

    def _show_person(self, observation: dict) -> dict:
        """A scripted person watches the robot (``ScriptedTeleop.observe``); a keyboard's person has eyes."""
        if hasattr(self.teleop, "observe"):
            self.teleop.observe(observation)
        return observation

    def step(self, action):
        from lerobot.processor.core import TransitionKey
        from lerobot.rl.gym_manipulator import step_env_and_process_transition
        from lerobot.teleoperators.utils import TeleopEvents

        action = torch.as_tensor(np.asarray(action, dtype=np.float32))
        self._keep_time()
        self.transition = step_env_and_process_transition(self.env, self.transition, action, self.env_processor,
                                                          self.action_processor)
        t = self.transition
        info = t[TransitionKey.INFO]
        executed = t[TransitionKey.COMPLEMENTARY_DATA].get("teleop_action", t[TransitionKey.ACTION])
        executed = np.asarray(executed.detach().cpu() if isinstance(executed, torch.Tensor) else executed, np.float32)
        success = bool(info.get(TeleopEvents.SUCCESS, False)) or bool(info.get("succeed", False))
        step_info = {"is_success": success, "is_intervention": bool(info.get(TeleopEvents.IS_INTERVENTION, False)),
                     "executed_action": executed.reshape(-1)}
        return (self._show_person(self._observation()), float(t[TransitionKey.REWARD]), bool(t[TransitionKey.DONE]),
                bool(t[TransitionKey.TRUNCATED]), step_info)

    def _keep_time(self) -> None:
        """Wait for this action's slot at ``config.fps`` (when pacing), then let the watchdog time the period."""
        import time

        if self.period_s is not None:
            now = time.monotonic()
            if self._next_send is not None and now < self._next_send:
                time.sleep(self._next_send - now)
            self._next_send = max(now, self._next_send or now) + self.period_s
        if self.watchdog is not None:
            self.watchdog.tick()

    def close(self):
        try:
            self.env.close()
        finally:
            if self.teleop is not None and self.teleop.is_connected:
                self.teleop.disconnect()
