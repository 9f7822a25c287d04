"""``SteeredConfig``: the LeRobot policy config of a frozen base policy plus a trained steering head.

Registered as the LeRobot policy type ``"steered"``. LeRobot finds the policy class and the processor
factory of a registered type by module name (``configuration_`` -> ``modeling_`` / ``processor_``), so the
three modules of this package follow that naming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from lerobot.optim.optimizers import AdamConfig

from vla_steer.fields import bounded, range_problems


@PreTrainedConfig.register_subclass("steered")
@dataclass
class SteeredConfig(PreTrainedConfig):
    """A steered policy: which base to load, how to adapt it, how to act.

    ``base_path``: a local directory (absolute, or relative to the steered policy's directory) or a Hub repo id
    holding the base policy as LeRobot saves it. ``base_revision``: the Hub revision (a commit hash pins it).
    ``base_type``: the base's LeRobot policy type (``"smolvla"``, ``"diffusion"``, ``"pi0"``, ...).
    ``adapter_kwargs``: arguments of the base's adapter (``pooling``, ``num_steps`` ...), as used in training.
    ``deterministic``: act with ``eps = 0`` (LP-DS) / ``tanh(mean)`` (DSRL) instead of sampling as trained.
    ``best_of_k``: > 1 draws that many head proposals per observation and acts on the one the head's shipped
    latent critic Q^W(s, z) ranks highest (one encode, one decode; ``--policy.best_of_k=8`` in lerobot-eval).
    ``input_features`` / ``output_features`` / ``n_obs_steps`` are copied from the base when saving.
    """

    base_path: str = ""
    base_revision: str | None = None
    base_type: str = ""
    adapter_kwargs: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = False
    best_of_k: int = bounded(1, ge=1, le=1024)  # the same range as the trainer's train.eval_best_of_k
    # the actor's limits, applied by the last postprocessor step (vla_steer/lerobot_policy/action_limits.py):
    # action_low / action_high / max_action_step, in the robot's action space, from the recipe's safety section
    action_limits: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.best_of_k, int) or isinstance(self.best_of_k, bool):
            raise ValueError(f"best_of_k must be an integer (1 = act on one proposal), got {self.best_of_k!r}")
        unknown = sorted(set(self.action_limits) - {"action_low", "action_high", "max_action_step"})
        if unknown:
            raise ValueError(f"action_limits: unknown field(s) {unknown}; allowed: action_low, action_high, max_action_step")
        problems = range_problems(self, "steered")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> None:
        return None

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamConfig:
        # The head is trained by vla-steer's RL trainer, not by lerobot-train; this only satisfies the interface.
        return AdamConfig(lr=3e-4)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        pass
