"""A person's inputs without a person: a LeRobot teleoperator that plays a script of interventions and labels.

LeRobot's human-in-the-loop pipeline (``lerobot.rl.gym_manipulator.make_processors``) reads a person through two
processor steps: ``AddTeleopActionAsComplimentaryDataStep`` calls the teleoperator's ``get_action()`` and
``AddTeleopEventsAsInfoStep`` its ``get_teleop_events()`` (``is_intervention``, ``success``, ``terminate_episode``,
``rerecord_episode``), once per control step; ``InterventionActionProcessorStep`` then executes the person's action
while they intervene and turns a success label into the reward and the episode's end. The keyboard
(``keyboard_ee``) and the gamepad (``gamepad``) are two such teleoperators; :class:`ScriptedTeleop` is a third,
so headless tests, CI and simulated "human" labels go through exactly the code a keyboard goes through.

A recipe names it like any LeRobot teleoperator (``env.teleop: {type: vla_steer_scripted, ...}``). Steps and
episodes count from 0; an episode starts at every env reset.

Besides LeRobot's events it reports :data:`ESTOP` (``"estop"``): the emergency stop, which the robot env refuses to
act past (:class:`vla_steer.envs.robot_env.EmergencyStopStep`). LeRobot's keyboard has no such key; for it, the
robot env treats a teleoperator that disconnects mid-run (``Esc`` on ``keyboard_ee``) as the e-stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lerobot.teleoperators.config import TeleoperatorConfig
from lerobot.teleoperators.teleoperator import Teleoperator
from lerobot.teleoperators.utils import TeleopEvents

from vla_steer.robot.pick_expert import gym_hil_pick_expert

#: the e-stop event's key in the events dict (LeRobot's TeleopEvents has none)
ESTOP = "estop"
#: scripted experts a scripted person can intervene with (``intervention_expert``), by name
INTERVENTION_EXPERTS = {"gym_hil_pick": gym_hil_pick_expert}
#: LeRobot's end-effector teleop action, in the order of a policy's action vector
TELEOP_ACTION_KEYS = ("delta_x", "delta_y", "delta_z", "gripper")


@TeleoperatorConfig.register_subclass("vla_steer_scripted")
@dataclass
class ScriptedTeleopConfig(TeleoperatorConfig):
    # [episode, first_step, last_step] (inclusive): the "person" holds the intervention button on these steps
    interventions: list = field(default_factory=list)
    # what the person commands while intervening: LeRobot's end-effector teleop action (deltas and gripper 0/1/2)
    intervention_action: dict = field(default_factory=lambda: {"delta_x": 0.0, "delta_y": 0.0, "delta_z": 0.0,
                                                                 "gripper": 1.0})
    # a person who helps: while intervening, act with this scripted expert on what the robot env last observed
    # (a key of INTERVENTION_EXPERTS) instead of the fixed intervention_action
    intervention_expert: str | None = None
    successes: list = field(default_factory=list)  # [episode, step]: the success key is pressed at that step
    failures: list = field(default_factory=list)  # [episode, step]: the episode is ended as a failure
    estop_at: int | None = None  # control step (counted over the whole run) at which the e-stop is pressed


class ScriptedTeleop(Teleoperator):
    """Plays :class:`ScriptedTeleopConfig`; ``get_teleop_events()`` is the clock (LeRobot calls it once per step)."""

    config_class = ScriptedTeleopConfig
    name = "vla_steer_scripted"

    def __init__(self, config: ScriptedTeleopConfig):
        super().__init__(config)
        self.config = config
        self.episode, self.step, self.total_steps = -1, 0, 0
        self._connected = False
        self._expert, self._last_observation = None, None
        if config.intervention_expert is not None:
            if config.intervention_expert not in INTERVENTION_EXPERTS:
                raise ValueError(f"teleop.intervention_expert {config.intervention_expert!r}: choose one of "
                                 f"{sorted(INTERVENTION_EXPERTS)}")
            self._expert = INTERVENTION_EXPERTS[config.intervention_expert]()
        for name in ("interventions", "successes", "failures"):
            width = 3 if name == "interventions" else 2
            for entry in getattr(config, name):
                if not (isinstance(entry, (list, tuple)) and len(entry) == width
                        and all(isinstance(x, int) and x >= 0 for x in entry)):
                    raise ValueError(f"teleop.{name}: each entry is {width} non-negative integers "
                                     f"({'[episode, first_step, last_step]' if width == 3 else '[episode, step]'}), "
                                     f"got {entry!r}")

    # -- the episode clock: the robot env calls this at every reset -----------------------------------------------
    def start_episode(self) -> None:
        self.episode, self.step = self.episode + 1, 0

    def _intervening(self) -> bool:
        return any(e == self.episode and first <= self.step <= last for e, first, last in self.config.interventions)

    def observe(self, observation: dict) -> None:
        """What the person sees: the robot env hands over every processed observation (reset and step)."""
        self._last_observation = observation

    def get_action(self) -> dict[str, float]:
        if self._expert is not None and self._last_observation is not None:
            return dict(zip(TELEOP_ACTION_KEYS, map(float, self._expert(self._last_observation))))
        return {key: float(value) for key, value in self.config.intervention_action.items()}

    def get_teleop_events(self) -> dict[Any, bool]:
        now = [self.episode, self.step]
        success, failure = now in [list(s) for s in self.config.successes], now in [list(f) for f in self.config.failures]
        events = {TeleopEvents.IS_INTERVENTION: self._intervening(), TeleopEvents.SUCCESS: success,
                  TeleopEvents.TERMINATE_EPISODE: success or failure, TeleopEvents.RERECORD_EPISODE: False,
                  ESTOP: self.config.estop_at is not None and self.total_steps >= self.config.estop_at}
        self.step, self.total_steps = self.step + 1, self.total_steps + 1
        return events

    # -- the Teleoperator contract: nothing to connect or calibrate ------------------------------------------
    @property
    def action_features(self) -> dict:
        return {key: float for key in (TELEOP_ACTION_KEYS if self._expert is not None
                                       else self.config.intervention_action)}

    @property
    def feedback_features(self) -> dict:
        return {}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        pass

    def disconnect(self) -> None:
        self._connected = False
