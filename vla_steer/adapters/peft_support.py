"""Steering a policy fine-tuned with PEFT (LoRA and the other weight-injecting methods).

LeRobot 0.4.4 fine-tunes with PEFT through ``PreTrainedPolicy.wrap_with_peft`` (``peft.get_peft_model`` on the
policy, after freezing its own weights) and loads such checkpoints in ``make_policy(use_peft=True)`` with
``PeftModel.from_pretrained``. Either way the policy arrives as a ``peft.PeftModel`` whose ``base_model`` is a
``LoraModel`` whose ``model`` is the LeRobot policy, with the LoRA layers injected *in place* into the policy's
own modules.

The adapters need that LeRobot policy itself. PEFT forwards unknown attributes to the wrapped module, but names
collide: ``PeftModel.model`` resolves to ``LoraModel.model``, i.e. the whole ``SmolVLAPolicy`` rather than
``SmolVLAPolicy.model`` (its ``VLAFlowMatching``). Unwrapping loses nothing: the injected LoRA layers stay in the
policy and stay active (unmerged), ``set_adapter`` / ``disable_adapter()`` on the wrapper still act on them, and
``merge_and_unload()`` returns a plain policy that needs no unwrapping.
"""

from __future__ import annotations

import sys

from torch import nn


def unwrap_peft(policy: nn.Module) -> nn.Module:
    """The module inside any PEFT wrappers around ``policy`` (its injected adapter layers included); else ``policy``.

    Raises ``ValueError`` for prompt-learning methods (prefix / prompt tuning): they act in ``PeftModel.forward``,
    which the adapters never call, so unwrapping would silently drop them.
    """
    peft = sys.modules.get("peft")
    if peft is None:  # peft was never imported, so nothing can be wrapped in it (and importing it costs seconds)
        return policy
    from peft.tuners.tuners_utils import BaseTuner

    while True:
        if isinstance(policy, peft.PeftModel):
            if policy.active_peft_config.is_prompt_learning:
                raise ValueError(
                    f"{policy.active_peft_config.peft_type} adds prompts in PeftModel.forward, which steering "
                    "adapters bypass; only methods that inject layers into the policy (LoRA, ...) are supported"
                )
            policy = policy.get_base_model()
        elif isinstance(policy, peft.PeftMixedModel):
            policy = policy.get_base_model()
        elif isinstance(policy, BaseTuner):  # a bare LoraModel(...) built without get_peft_model
            policy = policy.model
        else:
            return policy
