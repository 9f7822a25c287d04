"""The keyboard as the person's device, with real X key events: an Xvfb display, pynput's XTest controller pressing
keys, pynput's listener inside LeRobot's keyboard teleoperator reading them, gym_hil through LeRobot's robot env.

LeRobot's keyboard module decides at import whether a display exists, so each check runs in a child process started
with ``DISPLAY`` set. CI installs Xvfb (``.ci/run``); without it the two tests that press keys are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gym_hil", reason="the robot tests need gym-hil (pip install 'vla-steer[robot]')")


@pytest.fixture(scope="module")
def display():
    if shutil.which("Xvfb") is None:
        pytest.skip("needs Xvfb (apt-get install xvfb)")
    read, write = os.pipe()  # Xvfb picks a free display itself and writes its number here (-displayfd)
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as numbers:
        number = numbers.readline().strip()
    if not number:
        server.kill()
        pytest.fail("Xvfb did not start")
    yield f":{number}"
    server.terminate()
    server.wait(timeout=10)


def run_child(code: str, display: str) -> dict:
    env = {**os.environ, "DISPLAY": display, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PRELUDE = """
import json, time
import numpy as np
from pynput.keyboard import Controller, Key
from vla_steer.envs.lerobot_envs import lerobot_env_config, make_lerobot_env
keys = Controller()
def settle(until):
    # the listener thread receives the X event: wait for what it does (a loaded machine may take a while)
    deadline = time.monotonic() + 10
    while not until():
        assert time.monotonic() < deadline, "the key event never arrived"
        time.sleep(0.02)
"""

IN_THE_LOOP = PRELUDE + """
from vla_steer.envs.robot_env import EmergencyStop
options = {"name": "gym_hil", "task": "PandaPickCube-v0", "fps": 10, "teleop": {"type": "vla_steer_keyboard_ee"}}
env = make_lerobot_env(lerobot_env_config("gym_manipulator", options), kwargs={"image_obs": False})
out = {}
env.reset(seed=1)
out["alone"] = env.step(np.zeros(4, np.float32))[4]["is_intervention"]
held = env.teleop._held_now
keys.press(Key.left); settle(lambda: Key.left in held())
_, _, _, _, info = env.step(np.zeros(4, np.float32))
out["held_left"] = [info["is_intervention"], info["executed_action"].tolist()]
keys.release(Key.left); settle(lambda: Key.left not in held())
out["released"] = env.step(np.zeros(4, np.float32))[4]["is_intervention"]
keys.press("s"); keys.release("s"); settle(lambda: "s" in env.teleop._labels_since_last_step)  # a tap between steps
_, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
out["tapped_s"] = [reward, terminated, info["is_success"]]
keys.press("s"); keys.release("s"); settle(lambda: "s" in env.teleop._labels_since_last_step)  # after the end
env.reset(seed=2)
out["label_after_the_end"] = env.step(np.zeros(4, np.float32))[4]["is_success"]
env.reset(seed=3)
keys.press(Key.esc); keys.release(Key.esc); settle(lambda: not env.teleop.is_connected)
try:
    env.step(np.zeros(4, np.float32))
    out["esc"] = "an action was sent"
except EmergencyStop as stop:
    out["esc"] = str(stop)
out["sim_time_after_esc"] = float(env.env.unwrapped.data.time)
print(json.dumps(out))
"""

LEROBOTS_OWN = PRELUDE + """
from lerobot.teleoperators.keyboard import KeyboardEndEffectorTeleop, KeyboardEndEffectorTeleopConfig
teleop = KeyboardEndEffectorTeleop(KeyboardEndEffectorTeleopConfig(use_gripper=True))
from lerobot.teleoperators.utils import TeleopEvents
teleop.connect(); teleop.listener.wait()
keys.press("s"); settle(lambda: not teleop.event_queue.empty())  # held across a control step: LeRobot sees it
teleop.get_action()  # LeRobot's pipeline order: the action, then the events
held_success = teleop.get_teleop_events()[TeleopEvents.SUCCESS]
keys.release("s"); settle(lambda: not teleop.event_queue.empty())
teleop.get_action(); teleop.get_teleop_events()
keys.press(Key.left); time.sleep(0.5)  # nothing to wait for: LeRobot's listener drops the key
action = teleop.get_action()
events = teleop.get_teleop_events()
keys.release(Key.left)
keys.press("s"); keys.release("s"); settle(lambda: teleop.event_queue.qsize() >= 2)
teleop.get_action()
tapped = teleop.get_teleop_events()
print(json.dumps({"held_success": bool(held_success), "delta_x": action["delta_x"],
                  "intervention": bool(events[TeleopEvents.IS_INTERVENTION]),
                  "tapped_success": bool(tapped[TeleopEvents.SUCCESS])}))
"""


def test_keyboard_interventions_labels_and_esc_reach_the_loop(display):
    out = run_child(IN_THE_LOOP, display)
    assert out["alone"] is False
    intervening, executed = out["held_left"]
    assert intervening and executed[:3] == [1.0, 0.0, 0.0]  # left arrow: +x, the person's action was executed
    assert out["released"] is False
    assert out["tapped_s"] == [1.0, True, True]  # the success key ends the episode with reward 1
    assert out["label_after_the_end"] is False  # typed after the episode ended: not the next episode's label
    assert "disconnected" in out["esc"] and out["sim_time_after_esc"] == 0.0  # Esc: the e-stop, nothing sent


def test_lerobot_s_own_keyboard_ee_drops_movement_keys_and_taps(display):
    """LeRobot 0.4.4's keyboard_ee: a held label key arrives (the X events reach it), but the arrow key never does (no
    intervention, no motion) and a tapped label is lost. Goes red when LeRobot fixes it; vla_steer_keyboard_ee can
    then give way to it."""
    out = run_child(LEROBOTS_OWN, display)
    assert out == {"held_success": True, "delta_x": 0.0, "intervention": False, "tapped_success": False}


def test_without_a_display_the_keyboard_is_refused_with_the_fix_named(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    code = ("from vla_steer.envs.lerobot_envs import lerobot_env_config, make_lerobot_env\n"
            "options = {'name': 'gym_hil', 'task': 'PandaPickCube-v0', 'teleop': {'type': 'vla_steer_keyboard_ee'}}\n"
            "make_lerobot_env(lerobot_env_config('gym_manipulator', options), kwargs={'image_obs': False})\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "needs a display" in done.stderr and "Xvfb" in done.stderr
