from vla_steer.training.buffer import ReplayBuffer
from vla_steer.training.collector import NonFiniteError
from vla_steer.training.trainer import SteeringTrainer

__all__ = ["NonFiniteError", "ReplayBuffer", "SteeringTrainer"]
