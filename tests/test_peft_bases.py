"""A base fine-tuned with LoRA (LeRobot's ``wrap_with_peft`` or plain PEFT) is steerable unchanged, merged or not.

Real LeRobot classes at a tiny size, random weights, offline: SmolVLA (tiny_vla.py) and DiffusionPolicy
(test_lerobot_adapters.py). PEFT initialises ``lora_B`` to zero, i.e. LoRA starts as the identity, so every test
randomises it: otherwise "LoRA is applied" and "LoRA is ignored" would give the same actions.
"""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from peft import LoraConfig, LoraModel, PeftConfig, PeftModel, get_peft_model
from torch import nn

from test_lerobot_adapters import DDIM_STEPS, lerobot_chunk, observation, tiny_diffusion_policy
from tiny_vla import tiny_smolvla_batch, tiny_smolvla_policy, write_tiny_smolvlm
from vla_steer.adapters.lerobot_diffusion import DiffusionPolicyAdapter
from vla_steer.adapters.peft_support import unwrap_peft
from vla_steer.adapters.smolvla import SmolVLAAdapter

torch.set_num_threads(1)

# Attention projections of the VLM (vision tower: q/k/v/out_proj, text model: q/k/v/o_proj) and of the expert.
SMOLVLA_ATTENTION = r"model\.vlm_with_expert\.(vlm|lm_expert)\..*\.(q|k|v|o|out)_proj"


def randomise_lora_b(model: nn.Module, seed: int, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(scale * torch.randn(param.shape, generator=g))


def lora_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param for name, param in model.named_parameters() if "lora_" in name}


def noise(adapter, batch_size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch_size, *adapter.noise_shape, generator=torch.Generator().manual_seed(seed))


def assert_frozen_through_backward(adapter, peft_model: nn.Module, obs: dict, batch_size: int) -> None:
    """Everything, LoRA included, is frozen and in eval mode, and a backward wrt the noise changes no weight."""
    assert not any(p.requires_grad for p in peft_model.parameters())
    assert not any(module.training for module in adapter.policy.modules())  # LoRA dropout included
    before = {name: tensor.clone() for name, tensor in peft_model.state_dict().items()}
    w = noise(adapter, batch_size, seed=9).requires_grad_(True)
    adapter.decode(adapter.encode(obs), w).square().sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert all(p.grad is None for p in peft_model.parameters())
    after = peft_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


# ---------------------------------------------------------------------------------------------------------
# SmolVLA through LeRobot's own route: PreTrainedPolicy.wrap_with_peft


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return write_tiny_smolvlm(tmp_path_factory.mktemp("tiny_smolvlm"))


@pytest.fixture(scope="module")
def smolvla_base_dir(vlm_dir, tmp_path_factory):
    """The tiny SmolVLA saved as a checkpoint: wrap_with_peft refuses a policy without config.pretrained_path."""
    directory = tmp_path_factory.mktemp("smolvla_base")
    tiny_smolvla_policy(vlm_dir, seed=0).save_pretrained(directory)
    return directory


@pytest.fixture(params=["lerobot-default-targets", "vlm+expert-attention"])
def smolvla_lora(request, vlm_dir, smolvla_base_dir):
    """``(peft_model, base)``: the tiny SmolVLA with random LoRA, and an untouched copy of it without LoRA.

    ``lerobot-default-targets``: ``wrap_with_peft()`` with SmolVLA's ``_get_default_peft_targets`` (expert q/v
    projections, state / action / time projections). ``vlm+expert-attention``: an explicit ``LoraConfig`` on the
    attention projections of the VLM and of the expert, with LoRA dropout, so a missing ``eval()`` would show.
    """
    policy = tiny_smolvla_policy(vlm_dir, seed=0)
    policy.config.pretrained_path = smolvla_base_dir
    base = copy.deepcopy(policy)
    if request.param == "lerobot-default-targets":
        peft_model = policy.wrap_with_peft()
    else:
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=SMOLVLA_ATTENTION)
        peft_model = policy.wrap_with_peft(peft_config=config)
        targeted = {name.split(".lora_")[0] for name in lora_parameters(peft_model)}
        assert any("vision_model" in n for n in targeted) and any("text_model" in n for n in targeted)
        assert any("lm_expert" in n for n in targeted)
    assert isinstance(peft_model, PeftModel) and peft_model.config.use_peft
    randomise_lora_b(peft_model, seed=1)
    return peft_model, base


def test_smolvla_unmerged_lora_steers_like_the_peft_policy(smolvla_lora):
    peft_model, base = smolvla_lora
    adapter = SmolVLAAdapter(peft_model)
    assert adapter.policy is peft_model.get_base_model() and isinstance(adapter.policy, SmolVLAPolicy)
    batch = tiny_smolvla_batch(adapter.policy, 3, seed=2)
    w = noise(adapter, 3, seed=3)
    ctx = adapter.encode(batch)
    ours = adapter.decode_chunk(ctx, w)
    reference = peft_model.predict_action_chunk(dict(batch), noise=w.clone())  # PEFT forwards to the policy
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)

    base_adapter = SmolVLAAdapter(base)
    base_ctx = base_adapter.encode(batch)
    base_actions = base_adapter.decode_chunk(base_ctx, w)
    assert not torch.allclose(ours, base_actions, atol=1e-3), "LoRA must change the actions"
    assert not torch.allclose(ctx.features, base_ctx.features, atol=1e-4), "LoRA reaches the prefix too"
    # The wrapper's switches still act on the layers the adapter runs.
    with peft_model.disable_adapter():
        torch.testing.assert_close(adapter.decode_chunk(adapter.encode(batch), w), base_actions, rtol=0, atol=1e-5)


def test_smolvla_merged_lora_steers_like_unmerged(smolvla_lora):
    peft_model, _ = smolvla_lora
    adapter = SmolVLAAdapter(peft_model)
    batch = tiny_smolvla_batch(adapter.policy, 3, seed=4)
    w = noise(adapter, 3, seed=5)
    ctx = adapter.encode(batch)
    unmerged, features = adapter.decode_chunk(ctx, w), ctx.features

    merged = peft_model.merge_and_unload()
    assert isinstance(merged, SmolVLAPolicy) and not lora_parameters(merged)
    merged_adapter = SmolVLAAdapter(merged)
    merged_ctx = merged_adapter.encode(batch)
    torch.testing.assert_close(merged_ctx.features, features, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged_adapter.decode_chunk(merged_ctx, w), unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged.predict_action_chunk(dict(batch), noise=w.clone()), unmerged, rtol=0, atol=1e-5)


def test_smolvla_adapter_freezes_lora(smolvla_lora):
    peft_model, _ = smolvla_lora
    # wrap_with_peft freezes the base and leaves the LoRA weights trainable; the adapter must freeze those too.
    lora = lora_parameters(peft_model)
    assert lora and all(p.requires_grad for p in lora.values())
    assert not any(p.requires_grad for name, p in peft_model.named_parameters() if name not in lora)
    adapter = SmolVLAAdapter(peft_model)
    assert_frozen_through_backward(adapter, peft_model, tiny_smolvla_batch(adapter.policy, 2, seed=6), 2)


def test_smolvla_lora_checkpoint_loads_like_lerobot_make_policy(smolvla_lora, smolvla_base_dir, tmp_path):
    """Saved adapter -> ``PeftConfig`` -> base from ``base_model_name_or_path`` -> ``PeftModel.from_pretrained``,
    the steps of ``make_policy(use_peft=True)``: the loaded policy steers exactly like the in-memory one."""
    peft_model, _ = smolvla_lora
    peft_model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert config.base_model_name_or_path == str(smolvla_base_dir)  # set by wrap_with_peft from pretrained_path
    loaded = PeftModel.from_pretrained(SmolVLAPolicy.from_pretrained(config.base_model_name_or_path), tmp_path,
                                       config=config)
    adapter, loaded_adapter = SmolVLAAdapter(peft_model), SmolVLAAdapter(loaded)
    batch = tiny_smolvla_batch(adapter.policy, 2, seed=7)
    w = noise(adapter, 2, seed=8)
    torch.testing.assert_close(loaded_adapter.decode(loaded_adapter.encode(batch), w),
                               adapter.decode(adapter.encode(batch), w), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# DiffusionPolicy through plain PEFT: get_peft_model with LoRA on the U-Net's Linear and Conv1d layers


def unet_lora_targets(policy: DiffusionPolicy) -> list[str]:
    """Every Linear / Conv1d of the U-Net. Its one ConvTranspose1d (the upsampler) has no LoRA layer in PEFT."""
    return [f"diffusion.unet.{name}" for name, module in policy.diffusion.unet.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv1d))]


@pytest.fixture(params=[0, 2], ids=["state", "2cams"])
def diffusion_lora(request):
    policy = tiny_diffusion_policy(cameras=request.param)
    base = copy.deepcopy(policy)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=unet_lora_targets(policy))
    peft_model = get_peft_model(policy, config)
    convs = [m for m in peft_model.modules() if type(m).__name__ == "Conv1d" and hasattr(m, "lora_A")]
    assert len(convs) > 10, "PEFT wraps the U-Net's Conv1d layers"
    randomise_lora_b(peft_model, seed=1)
    return peft_model, base


def test_diffusion_lora_steers_like_the_peft_policy_merged_or_not(diffusion_lora):
    peft_model, base = diffusion_lora
    adapter = DiffusionPolicyAdapter(peft_model, num_inference_steps=DDIM_STEPS)
    assert adapter.policy is peft_model.get_base_model() and isinstance(adapter.policy, DiffusionPolicy)
    obs = observation(adapter.policy, 3, seed=2)
    w = noise(adapter, 3, seed=3)
    unmerged = adapter.decode(adapter.encode(obs), w)
    # LeRobot's select_action through the PEFT wrapper, with the DDIM scheduler the adapter installed
    torch.testing.assert_close(unmerged, lerobot_chunk(peft_model, [obs], w), rtol=0, atol=1e-5)
    base_adapter = DiffusionPolicyAdapter(base, num_inference_steps=DDIM_STEPS)
    assert not torch.allclose(unmerged, base_adapter.decode(base_adapter.encode(obs), w), atol=1e-3)

    merged = peft_model.merge_and_unload()
    assert isinstance(merged, DiffusionPolicy) and not lora_parameters(merged)
    merged_adapter = DiffusionPolicyAdapter(merged, num_inference_steps=DDIM_STEPS)
    torch.testing.assert_close(merged_adapter.decode(merged_adapter.encode(obs), w), unmerged, rtol=0, atol=1e-5)


def test_diffusion_adapter_freezes_lora(diffusion_lora):
    peft_model, _ = diffusion_lora
    assert all(p.requires_grad for p in lora_parameters(peft_model).values())  # get_peft_model leaves LoRA trainable
    adapter = DiffusionPolicyAdapter(peft_model, num_inference_steps=DDIM_STEPS)
    assert_frozen_through_backward(adapter, peft_model, observation(adapter.policy, 2, seed=6), 2)


def test_peft_has_no_lora_for_the_unet_upsampler():
    """Documents the limit above: PEFT (checked on 0.21) refuses LoRA on ``nn.ConvTranspose1d``."""
    policy = tiny_diffusion_policy()
    upsamplers = [f"diffusion.unet.{name}" for name, module in policy.diffusion.unet.named_modules()
                  if isinstance(module, nn.ConvTranspose1d)]
    assert upsamplers
    with pytest.raises(ValueError, match="not supported"):
        get_peft_model(policy, LoraConfig(r=4, target_modules=upsamplers))


# ---------------------------------------------------------------------------------------------------------
# unwrap_peft


def test_unwrap_peft_reaches_the_module_with_its_lora_layers():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert unwrap_peft(model) is model
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["0", "2"]))
    inner = unwrap_peft(peft_model)
    assert inner is model and lora_parameters(inner)  # injected in place
    bare = LoraModel(nn.Sequential(nn.Linear(3, 4)), LoraConfig(r=2, target_modules=["0"]), "default")
    assert unwrap_peft(bare) is bare.model
