from vla_steer.training.buffer import ReplayBuffer
from vla_steer.training.trainer import NonFiniteError, SteeringTrainer

__all__ = ["NonFiniteError", "ReplayBuffer", "SteeringTrainer"]
