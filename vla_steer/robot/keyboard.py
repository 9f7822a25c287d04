"""The keyboard as the person's device: LeRobot's ``keyboard_ee`` keys, read so that interventions and labels arrive.

LeRobot 0.4.4's ``KeyboardEndEffectorTeleop`` loses most of what a person types in the human-in-the-loop loop (the
first and third shown with real X key events under Xvfb in ``tests/test_keyboard.py``, the second read in its code):

* its listener keeps only keys that have a character, so the arrow, shift and ctrl keys (every movement key, and so
  every intervention) never arrive;
* ``get_action`` clears the pressed keys, and LeRobot's pipeline calls it before ``get_teleop_events``, so the
  intervention flag would read an empty set even if they did;
* a label key (``s`` success, ``q`` failure, ``r`` re-record) counts only if it is still held when the next control
  step reads the keyboard: a tap between two steps is lost.

``type: vla_steer_keyboard_ee`` keeps LeRobot's keys and meanings and fixes those three: the keys held now drive the
action and the intervention flag (read by both calls of a step, cleared by neither), and a label key pressed at any
time since the previous step is reported once. ``Esc`` disconnects, which the robot env treats as the e-stop; after
it the action is neutral instead of raising, so the e-stop step, not a device error, ends the episode.

    env:
      teleop: {type: vla_steer_keyboard_ee}     # arrows: x / y, shift / right shift: down / up, ctrl: gripper
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from lerobot.teleoperators.config import TeleoperatorConfig
from lerobot.teleoperators.keyboard.configuration_keyboard import KeyboardEndEffectorTeleopConfig
from lerobot.teleoperators.keyboard.teleop_keyboard import KeyboardEndEffectorTeleop, keyboard
from lerobot.teleoperators.utils import TeleopEvents

LABEL_KEYS = {"s": "success", "q": "failure", "r": "rerecord"}  # LeRobot's keyboard_ee meanings


@TeleoperatorConfig.register_subclass("vla_steer_keyboard_ee")
@dataclass
class KeyboardInterventionTeleopConfig(KeyboardEndEffectorTeleopConfig):
    pass


class KeyboardInterventionTeleop(KeyboardEndEffectorTeleop):
    """LeRobot's end-effector keyboard with every key kept: held keys for motion and intervention, latched taps for
    labels. pynput's listener thread writes, the control loop reads, under one lock."""

    config_class = KeyboardInterventionTeleopConfig
    name = "vla_steer_keyboard_ee"

    def __init__(self, config: KeyboardInterventionTeleopConfig):
        super().__init__(config)
        self._held: set = set()  # keys down now: pynput Key members, or lower-case characters
        self._labels_since_last_step: set[str] = set()
        self._lock = threading.Lock()
        self._escaped = False

    def connect(self, calibrate: bool = True) -> None:
        if keyboard is None:  # LeRobot imports pynput only where a display is
            raise RuntimeError("the keyboard teleoperator needs a display: DISPLAY is not set or pynput could not "
                               "connect to it. Run on the machine's desktop, over ssh -X, or under Xvfb; or use "
                               "teleop type gamepad")
        with self._lock:  # a new session: nothing held, no label pending, the e-stop released
            self._held, self._labels_since_last_step, self._escaped = set(), set(), False
        super().connect()
        self.listener.wait()  # pynput's listener is receiving before the first control step reads it

    def start_episode(self) -> None:
        """The robot env calls this at every reset: a label typed after the last episode ended is not the new one's."""
        with self._lock:
            self._labels_since_last_step.clear()

    @staticmethod
    def _identity(key):
        char = getattr(key, "char", None)
        return char.lower() if char else key

    def _on_press(self, key):
        key = self._identity(key)
        with self._lock:
            self._held.add(key)
            if key in LABEL_KEYS:
                self._labels_since_last_step.add(key)

    def _on_release(self, key):
        with self._lock:
            self._held.discard(self._identity(key))
        if keyboard is not None and key == keyboard.Key.esc:
            # the robot env's e-stop step refuses to act past a disconnected teleoperator. The flag disconnects at
            # once; returning False lets pynput end its own thread (stopping it from inside its callback, as
            # LeRobot's keyboard does, can hang the thread, and the keyboard would then never read as disconnected)
            self._escaped = True
            return False
        return None

    @property
    def is_connected(self) -> bool:
        return not self._escaped and super().is_connected

    def _held_now(self) -> set:
        with self._lock:
            return set(self._held)

    def get_action(self) -> dict[str, float]:
        held, key = self._held_now(), keyboard.Key if keyboard is not None else None
        if key is None or not self.is_connected:
            action = {"delta_x": 0.0, "delta_y": 0.0, "delta_z": 0.0}
        else:  # LeRobot's keyboard_ee directions; gripper: right ctrl 2, left ctrl 0, neither 1 (on gym_hil 2 closes)
            action = {"delta_x": float((key.left in held) - (key.right in held)),
                      "delta_y": float((key.down in held) - (key.up in held)),
                      "delta_z": float((key.shift_r in held) - (key.shift in held))}
        if self.config.use_gripper:
            action["gripper"] = 1.0 if key is None else float(1 + (key.ctrl_r in held) - (key.ctrl_l in held))
        return action

    def get_teleop_events(self) -> dict[Any, bool]:
        with self._lock:
            labels, self._labels_since_last_step = self._labels_since_last_step, set()
        held = self._held_now()
        moving = keyboard is not None and self.is_connected and any(
            k in held for k in (keyboard.Key.up, keyboard.Key.down, keyboard.Key.left, keyboard.Key.right,
                                keyboard.Key.shift, keyboard.Key.shift_r, keyboard.Key.ctrl_r, keyboard.Key.ctrl_l))
        # as LeRobot's keyboard_ee: success alone does not terminate (LeRobot's terminate_on_success decides)
        return {TeleopEvents.IS_INTERVENTION: moving, TeleopEvents.SUCCESS: "s" in labels,
                TeleopEvents.TERMINATE_EPISODE: bool(labels & {"q", "r"}), TeleopEvents.RERECORD_EPISODE: "r" in labels}

    def disconnect(self) -> None:
        if self.listener is not None and self.listener.is_alive():
            self.listener.stop()
