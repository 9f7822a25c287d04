"""Steering on a robot: a person's inputs (:mod:`.events`), hard limits (:mod:`.safety`), and the actor / learner
processes (:mod:`.actor_learner`)."""


def __getattr__(name: str):
    # LeRobot finds a teleoperator class in its config's parent package (make_device_from_device_class): lazily, so
    # importing the safety module does not import LeRobot's teleoperators
    if name in ("ScriptedTeleop", "ScriptedTeleopConfig"):
        from vla_steer.robot import events

        return getattr(events, name)
    raise AttributeError(name)
