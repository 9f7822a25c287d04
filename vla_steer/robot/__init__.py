"""Steering on a robot, the parts below the envs: a person's inputs (:mod:`.events`) and hard limits (:mod:`.safety`).
The actor / learner processes are :mod:`vla_steer.training.actor_learner`."""


def __getattr__(name: str):
    # LeRobot finds a teleoperator class in its config's parent package (make_device_from_device_class): lazily, so
    # importing the safety module does not import LeRobot's teleoperators
    if name in ("ScriptedTeleop", "ScriptedTeleopConfig"):
        from vla_steer.robot import events

        return getattr(events, name)
    if name in ("KeyboardInterventionTeleop", "KeyboardInterventionTeleopConfig"):
        from vla_steer.robot import keyboard

        return getattr(keyboard, name)
    raise AttributeError(name)
