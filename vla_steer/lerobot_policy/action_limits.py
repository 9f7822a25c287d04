"""The actor's action limits inside a deployed ``steered`` policy: a LeRobot processor step at the end of its
postprocessor (after LeRobot unnormalises, so the limits are in the robot's action space, as in the recipe).

Every route that runs a LeRobot policy applies its postprocessor to each action: ``lerobot-eval``,
``lerobot-record --policy.path`` (``predict_action``) and the async policy server. The step is registered by name
(``vla_steer_action_limits``), so loading a steered directory imports nothing from it; it runs the actor's own
:class:`vla_steer.robot.safety.SafetyGuard`: a non-finite action holds the last command (none: an error), each
dimension is clipped to ``[action_low, action_high]``, its change per call to ``max_action_step``. ``reset()``
(LeRobot resets processors with the policy at each episode) forgets the last command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.processor import PolicyActionProcessorStep, ProcessorStepRegistry

from vla_steer.robot.safety import SafetyGuard

REGISTRY_NAME = "vla_steer_action_limits"
LIMIT_FIELDS = ("action_low", "action_high", "max_action_step")


@ProcessorStepRegistry.register(REGISTRY_NAME)
@dataclass
class ActionLimitsStep(PolicyActionProcessorStep):
    action_low: Any = None
    action_high: Any = None
    max_action_step: Any = None
    _guard: SafetyGuard | None = field(default=None, init=False, repr=False)

    def _guard_for(self, action_dim: int) -> SafetyGuard:
        if self._guard is None or self._guard.action_dim != action_dim:
            self._guard = SafetyGuard(action_dim, latent_bound=float("inf"), action_low=self.action_low,
                                      action_high=self.action_high, max_action_step=self.max_action_step)
        return self._guard

    def action(self, action: torch.Tensor) -> torch.Tensor:
        rows = action.reshape(-1, 1, action.shape[-1])  # one env per row, one step each
        limited = self._guard_for(action.shape[-1]).actions(rows.detach().cpu().numpy())
        return torch.as_tensor(limited, dtype=action.dtype, device=action.device).reshape(action.shape)

    def reset(self) -> None:
        if self._guard is not None:
            self._guard._last.clear()

    def get_config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}

    def transform_features(self, features):
        return features


def with_action_limits(postprocessor, limits: dict[str, Any]):
    """``postprocessor`` with :class:`ActionLimitsStep` as its last step (replacing one already there); unchanged
    when ``limits`` sets none."""
    if not any(limits.get(name) is not None for name in LIMIT_FIELDS):
        return postprocessor
    steps = [step for step in postprocessor.steps if not isinstance(step, ActionLimitsStep)]
    postprocessor.steps = [*steps, ActionLimitsStep(**{name: limits.get(name) for name in LIMIT_FIELDS})]
    return postprocessor
